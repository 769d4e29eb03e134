//! `/preview PORT`: a session machine's local dev server behind the relay, for the person on
//! the phone. Pure: parses the commands, names the channel, keeps the `previews` rows (open,
//! started, ended), and writes the chat's answers; the RouterDO sends the socket frames
//! (`previewStart` with the channel's token, derived here from `RELAY_TOKEN`; `previewStop`)
//! and marks ended channels in KV, where the relay's Worker side looks before serving a
//! preview channel (410 and a short page once ended).
//!
//! A preview is asked while its machine is connected (like `/peek`): a dev server seen an
//! hour later is no answer. The machine answers `previewResult`; no answer within
//! [`PREVIEW_START_TIMEOUT_MS`] ends the preview and tells the chat. An open preview ends on
//! `/preview stop`, when its session is unregistered, or at `expires_at` (`PREVIEW_TTL_SECS`,
//! default 2 h; the agent stops at the same moment on its own timer).

use ccr_protocol::wire::bot;
use ccr_protocol::{DEFAULT_PREVIEW_TTL_SECS, PREVIEW_CHANNEL_PREFIX, PREVIEW_START_TIMEOUT_MS};
use serde::Deserialize;

use crate::auth;
use crate::store::{Sql, SqlValue, StoreError};
use crate::telegram::{self, escape_html, BotCall};

/// Most open previews one machine may have at once.
pub const MAX_OPEN_PER_MACHINE: i64 = 8;
/// Ended rows are kept this long for `/previews`' bookkeeping, then pruned (ms).
pub const ENDED_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// How long the relay remembers an ended channel (answering 410) (s).
pub const ENDED_MARKER_TTL_SECS: u64 = 7 * 24 * 60 * 60;
/// Most previews `/previews` lists (each line is up to ~200 characters; Telegram takes 4096).
const LISTED: usize = 15;
/// Random characters after the prefix: 24 base32 characters, 120 bits.
const CHANNEL_RANDOM_CHARS: usize = 24;

/// What a `/preview` or `/previews` message asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Serve this loopback port.
    Start(u16),
    /// End the session's previews (in a reply), or all of the chat's.
    Stop,
    /// List the open previews.
    List,
    /// Refused before anything happens: the chat's answer (HTML).
    Refused(String),
}

/// The usage line of `/preview`.
pub fn usage() -> String {
    "Usage, in a reply to a session's notification: <code>/preview PORT</code> (1–65535) serves \
     that machine's <code>http://127.0.0.1:PORT</code> by a link; <code>/preview stop</code> \
     ends the session's previews; /previews lists them."
        .into()
}

/// `Some` when `text` is `/preview …` or `/previews`; `None` for any other text.
pub fn parse(text: &str) -> Option<Intent> {
    let (name, args) = telegram::bot_command(text)?;
    if name == bot::PREVIEWS {
        return Some(Intent::List);
    }
    if name != bot::PREVIEW {
        return None;
    }
    let arg = args.trim();
    if arg.eq_ignore_ascii_case("stop") {
        return Some(Intent::Stop);
    }
    Some(match arg.parse::<u32>() {
        Ok(port) if (1..=65_535).contains(&port) => {
            Intent::Start(u16::try_from(port).unwrap_or_default())
        }
        _ => Intent::Refused(usage()),
    })
}

/// The preview time-to-live from the `PREVIEW_TTL_SECS` setting (ms); empty or invalid means
/// the default of 2 h.
pub fn ttl_ms(setting: &str) -> i64 {
    setting
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_PREVIEW_TTL_SECS)
        .saturating_mul(1000)
}

/// A fresh channel name from random bytes: `pv-` and 24 base32 characters (120 bits: the link
/// is the only key a visitor needs, so it must not be guessable).
pub fn channel_name(random: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bits: u32 = 0;
    let mut have = 0;
    let mut out = String::from(PREVIEW_CHANNEL_PREFIX);
    for byte in random {
        bits = (bits << 8) | u32::from(*byte);
        have += 8;
        while have >= 5 && out.len() < PREVIEW_CHANNEL_PREFIX.len() + CHANNEL_RANDOM_CHARS {
            have -= 5;
            let index = usize::try_from((bits >> have) & 31).unwrap_or(0);
            out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'a')));
        }
        bits &= (1 << have) - 1;
    }
    out
}

/// Whether a relay channel is a preview's (only those are checked for an end).
pub fn is_preview_channel(name: &str) -> bool {
    name.starts_with(PREVIEW_CHANNEL_PREFIX)
}

/// The KV key that marks a preview channel ended.
pub fn ended_key(channel: &str) -> String {
    format!("preview-ended:{channel}")
}

/// The bridge token of a preview's channel: the same HMAC every named channel is served with.
pub fn token(relay_token: &str, channel: &str) -> String {
    auth::derive_key(relay_token, channel)
}

/// The link a visitor opens: `{scheme}://{channel}.{suffix}/` with a host suffix, else
/// `{origin}/relay/{channel}/`.
pub fn public_url(origin: &str, host_suffix: &str, channel: &str) -> String {
    let origin = origin.trim_end_matches('/');
    let suffix = host_suffix.trim().trim_matches('.');
    if suffix.is_empty() {
        return format!(
            "{origin}{}/",
            ccr_protocol::wire::route::relay_channel(channel)
        );
    }
    let (scheme, authority) = origin.split_once("://").unwrap_or(("https", origin));
    let scheme = if scheme == "http" { "http" } else { "https" };
    // A port the Worker is reached on (local development) is the channel host's port too.
    let port = authority
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map_or_else(String::new, |p| format!(":{p}"));
    format!("{scheme}://{channel}.{suffix}{port}/")
}

/// The page an ended preview's link answers with (410).
pub const GONE_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>Preview ended</title></head>\
<body style=\"font-family:sans-serif;margin:2em\"><h1>This preview has ended</h1>\
<p>It was stopped, its session ended, or its time ran out. Ask for a new one with \
<code>/preview PORT</code>.</p></body></html>";

/// The RouterDO's preview settings, read per update.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `RELAY_TOKEN` is set (a channel token can be derived).
    pub relay_configured: bool,
    /// `RELAY_PUBLIC_KEY` is set: visitors need it too.
    pub public_key_required: bool,
    /// How long a preview stays open (ms).
    pub ttl_ms: i64,
    /// The Worker's public origin (`https://host`), from the webhook's own request.
    pub origin: String,
    /// `RELAY_HOST_SUFFIX`, maybe empty.
    pub host_suffix: String,
    /// The channel name this update uses if it opens a preview (fresh random per update).
    pub fresh_channel: String,
}

/// A preview to start: the RouterDO sends `previewStart` to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The channel (and the preview's id).
    pub channel: String,
    /// The session.
    pub session_id: String,
    /// Its machine.
    pub machine_id: String,
    /// The loopback port.
    pub port: u16,
    /// When it ends (ms).
    pub expires_at: i64,
}

/// An ended preview: the RouterDO marks its channel ended and tells its machine to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The channel.
    pub channel: String,
    /// Its machine.
    pub machine_id: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Row {
    channel: String,
    session_id: String,
    machine_id: String,
    port: i64,
    chat_id: i64,
    reply_to: i64,
    url: String,
    expires_at: i64,
    started_at: Option<i64>,
}

const COLUMNS: &str =
    "channel, session_id, machine_id, port, chat_id, reply_to, url, expires_at, started_at";

fn open_rows(db: &impl Sql, filter: &str, params: Vec<SqlValue>) -> Result<Vec<Row>, StoreError> {
    db.query::<Row>(
        &format!(
            "SELECT {COLUMNS} FROM previews WHERE ended_at IS NULL AND {filter} \
             ORDER BY created_at"
        ),
        params,
    )
}

fn end(db: &impl Sql, channel: &str, why: &str, now: i64) -> Result<(), StoreError> {
    db.exec(
        "UPDATE previews SET ended_at = ?, end_reason = ? WHERE channel = ? AND ended_at IS NULL",
        vec![now.into(), why.into(), channel.into()],
    )
}

fn stop_of(r: &Row) -> Stop {
    Stop {
        channel: r.channel.clone(),
        machine_id: r.machine_id.clone(),
    }
}

/// "19:05 UTC" for a time in ms since the epoch.
pub fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02} UTC", secs / 3600, (secs % 3600) / 60)
}

/// "1 h 59 min" / "4 min" / "under a minute".
fn left(ms: i64) -> String {
    let min = ms.max(0) / 60_000;
    match (min / 60, min % 60) {
        (0, 0) => "under a minute".into(),
        (0, m) => format!("{m} min"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// Opens a preview of `port` for a session (whose machine must be connected): records it and
/// returns the start for the RouterDO, or `Err(the chat's answer)` when it cannot (no relay
/// token, the machine offline, too many open). A preview of the same session and port that is
/// still open is answered with its link again instead of a second channel.
#[allow(clippy::too_many_arguments)]
pub fn open(
    db: &impl Sql,
    settings: &Settings,
    session: &crate::store::SessionRow,
    port: u16,
    chat_id: i64,
    reply_to: i64,
    now: i64,
    online: bool,
) -> Result<Result<Start, String>, StoreError> {
    let machine = &session.machine_id;
    if !settings.relay_configured {
        return Ok(Err(
            "No preview: the relay is not configured (the Worker has no <code>RELAY_TOKEN</code>; \
             set it with <code>wrangler secret put RELAY_TOKEN</code>)."
                .into(),
        ));
    }
    if !online {
        return Ok(Err(format!(
            "No preview: {} is offline. A preview needs its machine connected; try again when \
             it is back.",
            escape_html(machine)
        )));
    }
    let same = open_rows(
        db,
        "session_id = ? AND port = ? AND started_at IS NOT NULL",
        vec![session.session_id.as_str().into(), i64::from(port).into()],
    )?;
    if let Some(r) = same.into_iter().next() {
        return Ok(Err(started_text(&r, settings.public_key_required, now)));
    }
    #[derive(Deserialize)]
    struct Count {
        n: i64,
    }
    let n = db
        .query_one::<Count>(
            "SELECT count(*) AS n FROM previews WHERE machine_id = ? AND ended_at IS NULL",
            vec![machine.as_str().into()],
        )?
        .map_or(0, |c| c.n);
    if n >= MAX_OPEN_PER_MACHINE {
        return Ok(Err(format!(
            "No preview: {} already has {MAX_OPEN_PER_MACHINE} open. End some with \
             <code>/preview stop</code> (/previews lists them).",
            escape_html(machine)
        )));
    }
    let channel = settings.fresh_channel.clone();
    if ccr_protocol::validate::channel(&channel).is_err() || !is_preview_channel(&channel) {
        return Err(StoreError("no usable preview channel name".into()));
    }
    let url = public_url(&settings.origin, &settings.host_suffix, &channel);
    let expires_at = now.saturating_add(settings.ttl_ms);
    db.exec(
        "INSERT INTO previews (channel, session_id, machine_id, port, chat_id, reply_to, url,
            created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            channel.as_str().into(),
            session.session_id.as_str().into(),
            machine.as_str().into(),
            i64::from(port).into(),
            chat_id.into(),
            reply_to.into(),
            url.into(),
            now.into(),
            expires_at.into(),
        ],
    )?;
    Ok(Ok(Start {
        channel,
        session_id: session.session_id.clone(),
        machine_id: machine.clone(),
        port,
        expires_at,
    }))
}

fn label_of(db: &impl Sql, r: &Row) -> Result<String, StoreError> {
    Ok(crate::store::get_session(db, &r.session_id)?
        .and_then(|s| s.label)
        .unwrap_or_else(|| r.session_id.chars().take(12).collect()))
}

fn started_text(r: &Row, public_key_required: bool, now: i64) -> String {
    let key = if public_key_required {
        " Visitors also need the relay's public key (the <code>X-Relay-Key</code> header, or \
         <code>?_relay_key=</code> in the link)."
    } else {
        ""
    };
    format!(
        "🔗 Preview of port {} on {}:\n{}\n\n⚠️ Anyone with this link can open it until {} \
         (in {}).{key} <code>/preview stop</code> in a reply to the session ends it.",
        r.port,
        escape_html(&r.machine_id),
        escape_html(&r.url),
        clock(r.expires_at),
        left(r.expires_at - now),
    )
}

/// The machine's `previewResult`: the chat's answer, and the stop to carry out when it
/// failed. `None` when no such preview is waiting (answered already, ended, or another
/// machine's).
pub fn answered(
    db: &impl Sql,
    channel: &str,
    machine: &str,
    error: Option<&str>,
    public_key_required: bool,
    now: i64,
) -> Result<Option<(BotCall, Option<Stop>)>, StoreError> {
    let rows = open_rows(
        db,
        "channel = ? AND started_at IS NULL",
        vec![channel.into()],
    )?;
    let Some(r) = rows.into_iter().find(|r| r.machine_id == machine) else {
        return Ok(None);
    };
    if let Some(error) = error {
        end(db, channel, "failed", now)?;
        let text = format!("⚠️ No preview: {}", telegram::machine_text(error));
        return Ok(Some((
            BotCall::send(r.chat_id, &text, Some(r.reply_to)),
            Some(stop_of(&r)),
        )));
    }
    db.exec(
        "UPDATE previews SET started_at = ? WHERE channel = ?",
        vec![now.into(), channel.into()],
    )?;
    let text = started_text(&r, public_key_required, now);
    Ok(Some((
        BotCall::send(r.chat_id, &text, Some(r.reply_to)),
        None,
    )))
}

/// The previews `machine` was serving that are still open: sent again as `previewStart` when
/// it connects, so that an agent restarted meanwhile (which keeps previews in memory only)
/// serves them again under the same link. An agent still serving one answers at once.
pub fn resumable(db: &impl Sql, machine: &str, now: i64) -> Result<Vec<Start>, StoreError> {
    let rows = open_rows(
        db,
        "machine_id = ? AND started_at IS NOT NULL AND expires_at > ?",
        vec![machine.into(), now.into()],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| Start {
            channel: r.channel,
            session_id: r.session_id,
            machine_id: r.machine_id,
            port: u16::try_from(r.port).unwrap_or(0),
            expires_at: r.expires_at,
        })
        .collect())
}

/// What a machine's `previewResult` leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Tell the chat; carry out the stop, if any (the preview failed).
    Tell(BotCall, Option<Stop>),
    /// A resumed preview serves again: nothing to say.
    Serving,
    /// No such open preview of this machine (ended meanwhile, another machine's): the
    /// machine must not serve it.
    Unknown,
}

/// A machine's `previewResult`, for a first start ([`answered`]) or a resumed one
/// ([`resumable`]). A resumed preview that cannot serve any more (nothing listens on its port
/// after the restart) ends, and the chat is told why.
pub fn on_result(
    db: &impl Sql,
    channel: &str,
    machine: &str,
    error: Option<&str>,
    public_key_required: bool,
    now: i64,
) -> Result<Outcome, StoreError> {
    let resumed = open_rows(
        db,
        "channel = ? AND machine_id = ? AND started_at IS NOT NULL",
        vec![channel.into(), machine.into()],
    )?;
    let Some(r) = resumed.into_iter().next() else {
        return Ok(
            match answered(db, channel, machine, error, public_key_required, now)? {
                Some((call, stop)) => Outcome::Tell(call, stop),
                None => Outcome::Unknown,
            },
        );
    };
    let Some(error) = error else {
        return Ok(Outcome::Serving);
    };
    end(db, channel, "failed", now)?;
    let text = format!(
        "⚠️ The preview of port {} on {} ended: its agent restarted and could not serve it \
         again: {}",
        r.port,
        escape_html(&r.machine_id),
        telegram::machine_text(error)
    );
    Ok(Outcome::Tell(
        BotCall::send(r.chat_id, &text, Some(r.reply_to)),
        Some(stop_of(&r)),
    ))
}

/// Ends a session's open previews (`/preview stop` in a reply, the session unregistered).
pub fn end_session(db: &impl Sql, session_id: &str, now: i64) -> Result<Vec<Stop>, StoreError> {
    let rows = open_rows(db, "session_id = ?", vec![session_id.into()])?;
    for r in &rows {
        end(db, &r.channel, "stopped", now)?;
    }
    Ok(rows.iter().map(stop_of).collect())
}

/// Ends every open preview asked from `chat_id` (`/preview stop` not in a reply).
pub fn end_chat(db: &impl Sql, chat_id: i64, now: i64) -> Result<Vec<Stop>, StoreError> {
    let rows = open_rows(db, "chat_id = ?", vec![chat_id.into()])?;
    for r in &rows {
        end(db, &r.channel, "stopped", now)?;
    }
    Ok(rows.iter().map(stop_of).collect())
}

/// The chat's answer to `/preview stop`.
pub fn stopped_text(stops: &[Stop]) -> String {
    match stops.len() {
        0 => "No open preview to stop.".into(),
        1 => "⏹ Preview ended: its link now answers that it has ended.".into(),
        n => format!("⏹ {n} previews ended: their links now answer that they have ended."),
    }
}

/// Previews whose time is up, and starts their machine never answered: ended, with what the
/// chat is told.
pub fn expire(db: &impl Sql, now: i64) -> Result<(Vec<Stop>, Vec<BotCall>), StoreError> {
    let mut stops = Vec::new();
    let mut calls = Vec::new();
    let unanswered = open_rows(
        db,
        "started_at IS NULL AND created_at <= ?",
        vec![(now - PREVIEW_START_TIMEOUT_MS).into()],
    )?;
    for r in unanswered {
        end(db, &r.channel, "no answer", now)?;
        calls.push(BotCall::send(
            r.chat_id,
            &format!(
                "⚠️ No preview: {} did not answer within {} s.",
                escape_html(&r.machine_id),
                PREVIEW_START_TIMEOUT_MS / 1000
            ),
            Some(r.reply_to),
        ));
        stops.push(stop_of(&r));
    }
    let due = open_rows(db, "expires_at <= ?", vec![now.into()])?;
    for r in due {
        end(db, &r.channel, "expired", now)?;
        if r.started_at.is_some() {
            calls.push(BotCall::send(
                r.chat_id,
                &format!(
                    "⏹ The preview of port {} on {} has expired: its link no longer opens it.",
                    r.port,
                    escape_html(&r.machine_id)
                ),
                Some(r.reply_to),
            ));
        }
        stops.push(stop_of(&r));
    }
    Ok((stops, calls))
}

/// The earliest moment a preview is due to end or to have answered, for the alarm.
pub fn next_deadline(db: &impl Sql) -> Result<Option<i64>, StoreError> {
    #[derive(Deserialize)]
    struct At {
        at: Option<i64>,
    }
    let rows = db.query::<At>(
        "SELECT min(CASE WHEN started_at IS NULL THEN min(created_at + ?, expires_at)
                ELSE expires_at END) AS at FROM previews WHERE ended_at IS NULL",
        vec![PREVIEW_START_TIMEOUT_MS.into()],
    )?;
    Ok(rows.into_iter().next().and_then(|r| r.at))
}

/// Forgets previews ended long ago.
pub fn prune(db: &impl Sql, now: i64) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM previews WHERE ended_at IS NOT NULL AND ended_at < ?",
        vec![(now - ENDED_RETENTION_MS).into()],
    )
}

/// The `/previews` answer: the open previews asked from `chat_id`.
pub fn list_text(db: &impl Sql, chat_id: i64, now: i64) -> Result<String, StoreError> {
    let rows = open_rows(
        db,
        "chat_id = ? AND started_at IS NOT NULL",
        vec![chat_id.into()],
    )?;
    if rows.is_empty() {
        return Ok(
            "No open previews. <code>/preview PORT</code> in a reply to a session's \
             notification opens one."
                .into(),
        );
    }
    let mut text = String::from("<b>Open previews</b> (anyone with a link can open it)\n");
    for r in rows.iter().take(LISTED) {
        text.push_str(&format!(
            "• {} on {} · port {} · {} left\n  {}\n",
            escape_html(&label_of(db, r)?),
            escape_html(&r.machine_id),
            r.port,
            left(r.expires_at - now),
            escape_html(&r.url),
        ));
    }
    if rows.len() > LISTED {
        text.push_str(&format!("… and {} more.", rows.len() - LISTED));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::MemDb;
    use crate::store::{get_session, upsert_session};

    #[test]
    fn commands_are_read() {
        assert_eq!(parse("/preview 3000"), Some(Intent::Start(3000)));
        assert_eq!(parse("/preview@ccr_bot  8080 "), Some(Intent::Start(8080)));
        assert_eq!(parse("/preview 65535"), Some(Intent::Start(65535)));
        assert_eq!(parse("/preview STOP"), Some(Intent::Stop));
        assert_eq!(parse("/previews"), Some(Intent::List));
        for bad in [
            "/preview",
            "/preview 0",
            "/preview 65536",
            "/preview -1",
            "/preview abc",
            "/preview 3000 4000",
        ] {
            assert!(matches!(parse(bad), Some(Intent::Refused(_))), "{bad}");
        }
        for other in ["/peek", "/previewer", "preview 3000", "hello"] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn channel_names_are_valid_unguessable_and_distinct() {
        let a = channel_name(&[0u8; 15]);
        let b = channel_name(&[255u8; 15]);
        let c = channel_name(&(0u8..15).collect::<Vec<_>>());
        for name in [&a, &b, &c] {
            assert!(ccr_protocol::validate::channel(name).is_ok(), "{name}");
            assert!(is_preview_channel(name));
            assert_eq!(name.len(), 3 + 24, "{name}");
        }
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, "pv-aaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(b, "pv-777777777777777777777777");
        assert!(!is_preview_channel("alpha"));
    }

    #[test]
    fn links_follow_the_host_suffix() {
        assert_eq!(
            public_url("https://ccr.example.dev", "", "pv-x"),
            "https://ccr.example.dev/relay/pv-x/"
        );
        assert_eq!(
            public_url("https://ccr.example.dev/", "relay.example.com", "pv-x"),
            "https://pv-x.relay.example.com/"
        );
        assert_eq!(
            public_url("http://127.0.0.1:8787", ".localhost", "pv-x"),
            "http://pv-x.localhost:8787/"
        );
        assert_eq!(
            public_url("http://[::1]:8787", "localhost", "pv-x"),
            "http://pv-x.localhost:8787/"
        );
        assert_eq!(
            public_url("http://[::1]", "localhost", "pv-x"),
            "http://pv-x.localhost/"
        );
    }

    #[test]
    fn ttl_and_clock() {
        assert_eq!(ttl_ms(""), 2 * 60 * 60 * 1000);
        assert_eq!(ttl_ms("nope"), 2 * 60 * 60 * 1000);
        assert_eq!(ttl_ms("-5"), 2 * 60 * 60 * 1000);
        assert_eq!(ttl_ms("90"), 90_000);
        assert_eq!(clock(0), "00:00 UTC");
        assert_eq!(clock((19 * 3600 + 5 * 60 + 59) * 1000), "19:05 UTC");
        assert_eq!(left(59_000), "under a minute");
        assert_eq!(left(61 * 60_000), "1 h 1 min");
        assert_eq!(
            token("secret", "pv-x"),
            crate::auth::derive_key("secret", "pv-x")
        );
    }

    fn settings(channel: &str) -> Settings {
        Settings {
            relay_configured: true,
            public_key_required: false,
            ttl_ms: 60_000,
            origin: "https://w.example".into(),
            host_suffix: String::new(),
            fresh_channel: channel.into(),
        }
    }

    #[test]
    fn a_preview_opens_starts_lists_and_stops() {
        let db = MemDb::migrated();
        upsert_session(&db, "s1", "devbox", Some("api"), 0).unwrap();
        let s1 = get_session(&db, "s1").unwrap().unwrap();
        // Refusals: no relay token, machine offline.
        let mut no_relay = settings("pv-a");
        no_relay.relay_configured = false;
        let why = open(&db, &no_relay, &s1, 3000, 42, 7, 1_000, true)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("RELAY_TOKEN"), "{why}");
        let why = open(&db, &settings("pv-a"), &s1, 3000, 42, 7, 1_000, false)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("devbox is offline"), "{why}");

        let start = open(&db, &settings("pv-a"), &s1, 3000, 42, 7, 1_000, true)
            .unwrap()
            .unwrap();
        assert_eq!(start.port, 3000);
        assert_eq!(start.expires_at, 61_000);
        assert_eq!(
            next_deadline(&db).unwrap(),
            Some(1_000 + PREVIEW_START_TIMEOUT_MS)
        );
        // Not listed before the machine says it serves; another machine cannot answer.
        assert!(list_text(&db, 42, 2_000)
            .unwrap()
            .contains("No open previews"));
        assert!(answered(&db, "pv-a", "other", None, false, 2_000)
            .unwrap()
            .is_none());
        let (call, stop) = answered(&db, "pv-a", "devbox", None, false, 2_000)
            .unwrap()
            .unwrap();
        assert!(stop.is_none());
        let text = call.params["text"].as_str().unwrap();
        assert!(text.contains("https://w.example/relay/pv-a/"), "{text}");
        assert!(text.contains("Anyone with this link"), "{text}");
        assert!(text.contains("00:01 UTC"), "{text}");
        assert_eq!(call.params["reply_parameters"]["message_id"], 7);
        assert_eq!(next_deadline(&db).unwrap(), Some(61_000));
        // Asking again for the same port answers the same link.
        let again = open(&db, &settings("pv-b"), &s1, 3000, 42, 8, 3_000, true)
            .unwrap()
            .unwrap_err();
        assert!(again.contains("/relay/pv-a/"), "{again}");
        let list = list_text(&db, 42, 3_000).unwrap();
        assert!(list.contains("api on devbox · port 3000"), "{list}");
        assert!(list.contains("/relay/pv-a/"), "{list}");
        assert!(list_text(&db, 43, 3_000).unwrap().contains("No open"));

        let stops = end_session(&db, "s1", 4_000).unwrap();
        assert_eq!(
            stops,
            vec![Stop {
                channel: "pv-a".into(),
                machine_id: "devbox".into()
            }]
        );
        assert!(end_session(&db, "s1", 4_000).unwrap().is_empty());
        assert_eq!(next_deadline(&db).unwrap(), None);
        assert!(stopped_text(&stops).contains("ended"));
        prune(&db, 4_000 + ENDED_RETENTION_MS + 1).unwrap();
    }

    #[test]
    fn open_previews_are_resumed_when_their_machine_connects() {
        let db = MemDb::migrated();
        upsert_session(&db, "s1", "devbox", None, 0).unwrap();
        let s1 = get_session(&db, "s1").unwrap().unwrap();
        open(&db, &settings("pv-a"), &s1, 3000, 42, 7, 1_000, true)
            .unwrap()
            .unwrap();
        open(&db, &settings("pv-b"), &s1, 4000, 42, 8, 1_000, true)
            .unwrap()
            .unwrap();
        // Only started previews are resumed (pv-b's start is still pending).
        assert!(resumable(&db, "devbox", 2_000).unwrap().is_empty());
        assert!(matches!(
            on_result(&db, "pv-a", "devbox", None, false, 2_000).unwrap(),
            Outcome::Tell(_, None)
        ));
        let again = resumable(&db, "devbox", 3_000).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].channel.as_str(), again[0].port), ("pv-a", 3000));
        assert_eq!(again[0].expires_at, 61_000);
        assert!(resumable(&db, "laptop", 3_000).unwrap().is_empty());
        assert!(
            resumable(&db, "devbox", 61_000).unwrap().is_empty(),
            "expired"
        );
        // The restarted agent serves it again: nothing to tell, nothing to stop.
        assert_eq!(
            on_result(&db, "pv-a", "devbox", None, false, 3_000).unwrap(),
            Outcome::Serving
        );
        // Another machine's answer is unknown (it must not serve it).
        assert_eq!(
            on_result(&db, "pv-a", "laptop", None, false, 3_000).unwrap(),
            Outcome::Unknown
        );
        // Nothing listens any more: it ends, and the chat is told why.
        let Outcome::Tell(call, Some(stop)) = on_result(
            &db,
            "pv-a",
            "devbox",
            Some("nothing is listening on port 3000"),
            false,
            4_000,
        )
        .unwrap() else {
            panic!("a failed resumption is told and stopped");
        };
        assert_eq!(stop.channel, "pv-a");
        let text = call.params["text"].as_str().unwrap();
        assert!(
            text.contains("port 3000") && text.contains("restarted"),
            "{text}"
        );
        assert!(text.contains("nothing is listening"), "{text}");
        assert!(resumable(&db, "devbox", 5_000).unwrap().is_empty());
        assert_eq!(
            on_result(&db, "pv-a", "devbox", None, false, 5_000).unwrap(),
            Outcome::Unknown
        );
    }

    #[test]
    fn failures_timeouts_and_expiry_end_previews() {
        let db = MemDb::migrated();
        upsert_session(&db, "s1", "devbox", None, 0).unwrap();
        let s1 = get_session(&db, "s1").unwrap().unwrap();
        open(&db, &settings("pv-a"), &s1, 1, 42, 7, 0, true)
            .unwrap()
            .unwrap();
        let (call, stop) = answered(
            &db,
            "pv-a",
            "devbox",
            Some("nothing is listening on port 1 on devbox"),
            false,
            10,
        )
        .unwrap()
        .unwrap();
        assert!(call.params["text"]
            .as_str()
            .unwrap()
            .contains("nothing is listening on port 1 on devbox"));
        assert!(stop.is_some());
        // A machine's error of a whole frame's length is cut to fit one message.
        open(&db, &settings("pv-long"), &s1, 3, 42, 7, 0, true)
            .unwrap()
            .unwrap();
        let long = ">".repeat(ccr_protocol::MAX_FRAME_BYTES);
        let (call, _) = answered(&db, "pv-long", "devbox", Some(&long), false, 10)
            .unwrap()
            .unwrap();
        let text = call.params["text"].as_str().unwrap();
        assert!(text.encode_utf16().count() <= ccr_protocol::TELEGRAM_MAX_TEXT);
        assert!(text.ends_with("&gt;…"), "{}", &text[..40]);

        // No answer: ended at the start timeout, the chat told.
        open(&db, &settings("pv-b"), &s1, 2, 42, 7, 0, true)
            .unwrap()
            .unwrap();
        let (stops, calls) = expire(&db, PREVIEW_START_TIMEOUT_MS - 1).unwrap();
        assert!(stops.is_empty() && calls.is_empty());
        let (stops, calls) = expire(&db, PREVIEW_START_TIMEOUT_MS).unwrap();
        assert_eq!(stops.len(), 1);
        assert!(calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("did not answer"));

        // Started, then its time runs out.
        open(&db, &settings("pv-c"), &s1, 3, 42, 7, 0, true)
            .unwrap()
            .unwrap();
        answered(&db, "pv-c", "devbox", None, false, 1)
            .unwrap()
            .unwrap();
        let (stops, _) = expire(&db, 59_999).unwrap();
        assert!(stops.is_empty());
        let (stops, calls) = expire(&db, 60_000).unwrap();
        assert_eq!(stops[0].channel, "pv-c");
        assert!(calls[0].params["text"]
            .as_str()
            .unwrap()
            .contains("expired"));
        // A late answer to an ended preview is nobody's.
        assert!(answered(&db, "pv-c", "devbox", None, false, 60_001)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_machine_has_a_bound_and_stop_without_a_reply_ends_the_chats() {
        let db = MemDb::migrated();
        upsert_session(&db, "s1", "devbox", None, 0).unwrap();
        let s1 = get_session(&db, "s1").unwrap().unwrap();
        for i in 0..MAX_OPEN_PER_MACHINE {
            let port = u16::try_from(3000 + i).unwrap();
            open(
                &db,
                &settings(&format!("pv-{i}")),
                &s1,
                port,
                42,
                7,
                0,
                true,
            )
            .unwrap()
            .unwrap();
        }
        let why = open(&db, &settings("pv-x"), &s1, 4000, 42, 7, 0, true)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("already has 8 open"), "{why}");
        // Another machine's previews in the same chat: the list stops at LISTED.
        upsert_session(&db, "s2", "laptop", None, 0).unwrap();
        let s2 = get_session(&db, "s2").unwrap().unwrap();
        for i in 0..MAX_OPEN_PER_MACHINE {
            let port = u16::try_from(5000 + i).unwrap();
            let channel = format!("pv-l{i}");
            open(&db, &settings(&channel), &s2, port, 42, 7, 0, true)
                .unwrap()
                .unwrap();
            answered(&db, &channel, "laptop", None, false, 1).unwrap();
        }
        for i in 0..MAX_OPEN_PER_MACHINE {
            answered(&db, &format!("pv-{i}"), "devbox", None, false, 1).unwrap();
        }
        let list = list_text(&db, 42, 2).unwrap();
        assert_eq!(list.matches("• ").count(), LISTED, "{list}");
        assert!(list.ends_with("… and 1 more."), "{list}");
        assert!(list.encode_utf16().count() < 4096);
        assert_eq!(end_chat(&db, 43, 1).unwrap().len(), 0);
        assert_eq!(end_chat(&db, 42, 3).unwrap().len(), 16);
    }
}
