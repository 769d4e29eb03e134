//! `ccr-agent doctor`: checks every link of a machine's set-up, one ✓/✗ line each with the fix,
//! so a person knows at once what is wrong.
//!
//! Checks, in order: the settings, the data directory, the Worker (`GET /health`), the key
//! (`GET /sessions`, and again without `X-CCR-Machine-Id` to tell the admin key from a machine
//! key), the socket (`/ws` with subprotocol `ccr, <key>`, closed with 1000), the clock (the
//! Worker's `Date` header), tmux and the Claude Code hooks. Each has its own timeout; a check
//! that depends on a failed one is shown as skipped.

use ccr_protocol::wire::{header, route, subprotocols, SUBPROTOCOL};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ccr_native::error_chain as chain;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::daemon::sessions::Sessions;
use crate::daemon::status::ConnectionStatus;
use crate::db::{now_ms, Db};
use crate::hooks::HookEvent;
use crate::settings::{
    data_dir as settings_data_dir, hook_config_path, hook_worker, RawSettings, WorkerConfig,
};
use crate::setup::claude_settings;

/// Largest accepted difference between this machine's clock and the Worker's.
const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// What `doctor` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The Claude Code settings file to look for the hooks in; default ~/.claude/settings.json
    pub(crate) settings: Option<PathBuf>,
    /// How long each check may take.
    pub(crate) timeout: Duration,
}

/// How a check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Passed, with what was found.
    Pass(String),
    /// Failed: what is wrong and how to fix it.
    Fail {
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// Not run because an earlier check failed.
    Skipped(String),
}

/// One named check.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// Its name, e.g. `API key`.
    pub(crate) name: &'static str,
    /// Its outcome.
    pub(crate) outcome: Outcome,
}

/// All checks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    /// In the order they ran.
    pub(crate) checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, name: &'static str, outcome: Outcome) {
        self.checks.push(Check { name, outcome });
    }

    /// Whether every check passed.
    pub(crate) fn ok(&self) -> bool {
        self.checks
            .iter()
            .all(|c| matches!(c.outcome, Outcome::Pass(_)))
    }

    /// One line per check (two for a failure: the problem, then the fix), and a summary.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            match &c.outcome {
                Outcome::Pass(what) => out.push_str(&format!("✓ {}: {what}\n", c.name)),
                Outcome::Fail { problem, fix } => {
                    out.push_str(&format!("✗ {}: {problem}\n    fix: {fix}\n", c.name))
                }
                Outcome::Skipped(why) => out.push_str(&format!("- {}: skipped, {why}\n", c.name)),
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
            .count();
        if self.ok() {
            out.push_str("all checks passed\n");
        } else if failed == 0 {
            out.push_str("some checks could not run (see above)\n");
        } else {
            out.push_str(&format!(
                "{failed} check(s) failed: fix the first ✗ first, then run `ccr-agent doctor` again\n"
            ));
        }
        out
    }
}

fn fail(problem: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Fail {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Runs every check.
pub(crate) async fn run(common: &RawSettings, args: &Options) -> Report {
    let timeout = args.timeout;
    let mut report = Report::default();

    // Settings: flags and environment first, then the daemon's saved file (as the hooks do).
    let data_dir = settings_data_dir(common);
    let worker = match &data_dir {
        Ok(dir) => hook_worker(common, dir),
        Err(e) => Err(e.clone()),
    };
    match (&data_dir, &worker) {
        (Ok(dir), Ok(w)) => {
            let from_file = (common.worker_url.is_none()
                || common.api_key.is_none()
                || common.machine_id.is_none())
                && hook_config_path(dir).exists();
            report.push(
                "settings",
                Outcome::Pass(format!(
                    "Worker {}, machine {}, API key set{}",
                    w.url,
                    w.machine_id,
                    if from_file {
                        format!(
                            " (from flags, environment and {})",
                            hook_config_path(dir).display()
                        )
                    } else {
                        " (from flags and environment)".to_owned()
                    }
                )),
            );
        }
        (_, Err(e)) => report.push(
            "settings",
            fail(
                e.0.clone(),
                "set CCR_WORKER_URL and CCR_API_KEY (and CCR_MACHINE_ID), or run \
                 `ccr-agent install-service` once with them set: it saves them for the daemon \
                 and the hooks",
            ),
        ),
        (Err(e), Ok(_)) => report.push("settings", fail(e.0.clone(), "set CCR_DATA_DIR")),
    }

    match &data_dir {
        Ok(dir) => report.push("data dir", check_data_dir(dir)),
        Err(_) => report.push("data dir", Outcome::Skipped("no data directory".into())),
    }

    let http = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .build();
    match (&worker, http) {
        (Ok(w), Ok(http)) => {
            let (outcome, date) = check_health(&http, w).await;
            let reachable = matches!(outcome, Outcome::Pass(_));
            report.push("Worker reachable", outcome);
            if reachable {
                let outcome = check_key(&http, w).await;
                let key_ok = matches!(outcome, Outcome::Pass(_));
                report.push("API key", outcome);
                let outcome = if key_ok {
                    check_socket(w, data_dir.as_deref().ok(), timeout).await
                } else {
                    Outcome::Skipped("the key was not accepted".into())
                };
                report.push("socket", outcome);
                report.push("clock", check_clock(date, &w.url));
            } else {
                for name in ["API key", "socket", "clock"] {
                    report.push(name, Outcome::Skipped("the Worker is not reachable".into()));
                }
            }
        }
        (Ok(_), Err(e)) => {
            report.push(
                "Worker reachable",
                fail(
                    format!("cannot build an HTTP client: {}", chain(&e)),
                    "report this bug",
                ),
            );
        }
        (Err(_), _) => {
            for name in ["Worker reachable", "API key", "socket", "clock"] {
                report.push(name, Outcome::Skipped("the settings are missing".into()));
            }
        }
    }

    report.push("tmux", check_tmux(timeout).await);
    let settings_path = args
        .settings
        .clone()
        .or_else(claude_settings::default_settings_path);
    report.push(
        "Claude Code hooks",
        check_hooks(settings_path.as_deref(), args.settings.is_some()),
    );
    report
}

fn check_data_dir(dir: &Path) -> Outcome {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = crate::db::ensure_private_dir(dir) {
        return fail(
            format!("cannot create {}: {e}", dir.display()),
            "set CCR_DATA_DIR (or --data-dir) to a directory you can write",
        );
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    if let Err(e) = crate::db::open_private_file(&probe, false).and_then(|mut f| f.write_all(b"ok"))
    {
        return fail(
            format!("cannot write in {}: {e}", dir.display()),
            format!(
                "make it yours and writable (`chmod u+rwx {}`), or set CCR_DATA_DIR elsewhere",
                dir.display()
            ),
        );
    }
    let _ = std::fs::remove_file(&probe);
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return fail(
                format!(
                    "{} holds the inbox, the log and the API key but has mode {mode:o}: others can enter it",
                    dir.display()
                ),
                format!("chmod 700 {}", dir.display()),
            );
        }
    }
    let settings = hook_config_path(dir);
    if let Ok(meta) = std::fs::metadata(&settings) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return fail(
                format!(
                    "{} holds the API key but has mode {mode:o}: others can read it",
                    settings.display()
                ),
                format!("chmod 600 {}", settings.display()),
            );
        }
    }
    Outcome::Pass(format!("{} is writable", dir.display()))
}

async fn check_health(http: &reqwest::Client, w: &WorkerConfig) -> (Outcome, Option<String>) {
    let url = w.http_url(route::HEALTH);
    let down_fix = format!(
        "check CCR_WORKER_URL ({}) and that the Worker runs: `make deploy` (or `make dev` \
         locally), then `curl {url}` should print ok",
        w.url
    );
    match http.get(url.clone()).send().await {
        Err(e) => (
            fail(
                format!("GET {url} failed: {}", chain(&e.without_url())),
                down_fix,
            ),
            None,
        ),
        Ok(resp) => {
            let status = resp.status();
            let date = resp
                .headers()
                .get("date")
                .and_then(|d| d.to_str().ok())
                .map(str::to_owned);
            let body = resp.text().await.unwrap_or_default();
            if status.is_success() && body.trim() == "ok" {
                (Outcome::Pass(format!("GET {url} answered ok")), date)
            } else {
                let shown: String = body.chars().take(120).collect();
                (
                    fail(
                        format!("GET {url} answered {status} {shown:?}, not ok: is this the CCR Worker?"),
                        down_fix,
                    ),
                    date,
                )
            }
        }
    }
}

async fn get_sessions(
    http: &reqwest::Client,
    w: &WorkerConfig,
    with_machine: bool,
) -> Result<(u16, String), String> {
    let mut req = http
        .get(w.http_url(route::SESSIONS))
        .bearer_auth(w.api_key.expose());
    if with_machine {
        req = req.header(header::MACHINE_ID, &w.machine_id);
    }
    let resp = req.send().await.map_err(|e| chain(&e.without_url()))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let error = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(120).collect());
    Ok((status, error))
}

async fn check_key(http: &reqwest::Client, w: &WorkerConfig) -> Outcome {
    let key_fix = format!(
        "set CCR_API_KEY to the Worker's CCR_API_KEY (the admin key) or to this machine's \
         key: run `ccr-agent machine-key --machine-id {}` where the admin key is set; a \
         machine key works only with the machine id it was made for",
        w.machine_id
    );
    match get_sessions(http, w, true).await {
        Err(e) => fail(
            format!("GET /sessions failed: {e}"),
            "check the network to the Worker, then run `ccr-agent doctor` again",
        ),
        Ok((200, _)) => match get_sessions(http, w, false).await {
            Ok((200, _)) => Outcome::Pass(
                "accepted; it is the admin key (a machine key from `ccr-agent machine-key` \
                 would limit this machine to its own sessions)"
                    .into(),
            ),
            Ok((401, _)) => Outcome::Pass(format!(
                "accepted; it is the machine-scoped key of {}",
                w.machine_id
            )),
            Ok((status, why)) => Outcome::Pass(format!(
                "accepted (could not tell admin from machine key: HTTP {status} {why})"
            )),
            Err(e) => Outcome::Pass(format!(
                "accepted (could not tell admin from machine key: {e})"
            )),
        },
        Ok((401, why)) => fail(
            format!(
                "the Worker rejected it for machine {} (HTTP 401: {why})",
                w.machine_id
            ),
            key_fix,
        ),
        Ok((503, why)) => fail(
            format!("the Worker cannot check keys (HTTP 503: {why})"),
            "give the Worker its admin key: `npx wrangler secret put CCR_API_KEY`",
        ),
        Ok((status, why)) => fail(
            format!("GET /sessions answered HTTP {status}: {why}"),
            "check CCR_WORKER_URL points at the CCR Worker",
        ),
    }
}

/// Whether a daemon is connected right now (the same rule as `ccr-agent status`), and when
/// it last heard from the Worker.
fn daemon_connection(data_dir: &Path) -> Option<String> {
    if !Db::path(data_dir).exists() {
        return None;
    }
    let sessions = Sessions::new(Db::open(data_dir).ok()?);
    let status = ConnectionStatus::read(&sessions).ok()??;
    let now = now_ms();
    status
        .is_live(now)
        .then(|| format!("{}s ago", status.silence(now).as_secs()))
}

async fn check_socket(w: &WorkerConfig, data_dir: Option<&Path>, timeout: Duration) -> Outcome {
    // A second socket for this machine would replace the daemon's (close 4000) and keep it
    // away for a minute, so a daemon that is connected right now is the proof.
    if let Some(heard) = data_dir.and_then(daemon_connection) {
        return Outcome::Pass(format!(
            "the running daemon is connected (last heard from the Worker {heard}); a test \
             socket would replace its, so none was opened"
        ));
    }
    let url = w.socket_url();
    let fix_net = "check that proxies and firewalls between here and the Worker allow \
                   WebSockets (wss://), then run `ccr-agent doctor` again";
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return fail(format!("bad socket URL {url}: {e}"), "check CCR_WORKER_URL"),
    };
    let Ok(protocols) = HeaderValue::from_str(&subprotocols(w.api_key.expose())) else {
        return fail(
            "the API key has characters a header cannot carry",
            "set CCR_API_KEY to the key exactly as printed",
        );
    };
    request
        .headers_mut()
        .insert(header::WEBSOCKET_PROTOCOL, protocols);
    let attempt = tokio_tungstenite::connect_async(request);
    let (mut ws, resp) = match tokio::time::timeout(timeout, attempt).await {
        Err(_) => {
            return fail(
                format!("opening {url} took longer than {timeout:?}"),
                fix_net,
            )
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let status = resp.status();
            return fail(
                format!("the Worker answered the upgrade of {url} with HTTP {status}"),
                if status.as_u16() == 401 {
                    "set CCR_API_KEY to the admin key or this machine's key"
                } else {
                    fix_net
                },
            );
        }
        Ok(Err(e)) => return fail(format!("opening {url}: {}", chain(&e)), fix_net),
        Ok(Ok(pair)) => pair,
    };
    let status = resp.status().as_u16();
    let protocol = resp
        .headers()
        .get(header::WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "ccr-agent doctor".into(),
    };
    let closing = async {
        ws.send(Message::Close(Some(close))).await.ok()?;
        // Commands queued for this machine may arrive first; the Worker's close follows.
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(_)) | Err(_) = msg {
                break;
            }
        }
        Some(())
    };
    let closed = tokio::time::timeout(Duration::from_secs(3), closing)
        .await
        .ok()
        .flatten()
        .is_some();
    if status != 101 || protocol != SUBPROTOCOL {
        return fail(
            format!(
                "{url} answered HTTP {status} with subprotocol {protocol:?}, not 101 and \"ccr\""
            ),
            "check CCR_WORKER_URL points at the CCR Worker (an old deployment? `make deploy`)",
        );
    }
    Outcome::Pass(format!(
        "{url} opened (101, subprotocol ccr) and {}",
        if closed {
            "closed with 1000"
        } else {
            "was dropped after the close went unanswered"
        }
    ))
}

fn check_clock(date: Option<String>, worker: &url::Url) -> Outcome {
    let Some(date) = date else {
        // Cloudflare dates every response; `wrangler dev` does not, and runs on this clock.
        let local = match worker.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        return Outcome::Pass(if local {
            "the Worker runs on this machine, so it shares this clock".into()
        } else {
            "not compared: the Worker's answer had no Date header".into()
        });
    };
    let Some(worker_secs) = parse_http_date(&date) else {
        return Outcome::Skipped(format!(
            "the Worker's Date header {date:?} is not an HTTP date"
        ));
    };
    let local = now_ms() / 1000;
    let skew = local - worker_secs;
    if skew.abs() > MAX_CLOCK_SKEW_SECS {
        fail(
            format!(
                "this machine's clock is {}s {} the Worker's ({date})",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" }
            ),
            "turn on time sync (`sudo timedatectl set-ntp true`; on macOS: System Settings › \
             General › Date & Time › Set automatically)",
        )
    } else {
        Outcome::Pass(format!("within {}s of the Worker's", skew.abs()))
    }
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(text: &str) -> Option<i64> {
    let rest = text.trim().split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

async fn check_tmux(timeout: Duration) -> Outcome {
    let fix = "install tmux (`sudo apt-get install tmux`, `brew install tmux`) and run Claude \
               Code inside it; a service finds it through the PATH `install-service` saved";
    let run = tokio::process::Command::new("tmux")
        .arg("-V")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Err(_) => fail(format!("`tmux -V` took longer than {timeout:?}"), fix),
        Ok(Err(e)) => fail(format!("cannot run tmux: {e}"), fix),
        Ok(Ok(out)) if !out.status.success() => {
            fail(format!("`tmux -V` failed ({})", out.status), fix)
        }
        Ok(Ok(out)) => Outcome::Pass(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
    }
}

fn check_hooks(path: Option<&Path>, explicit: bool) -> Outcome {
    let Some(path) = path else {
        return fail(
            "HOME is not set, so ~/.claude/settings.json cannot be found",
            "pass --settings <path to Claude Code's settings.json>",
        );
    };
    let install = if explicit {
        format!("ccr-agent install-hooks --settings {}", path.display())
    } else {
        "ccr-agent install-hooks".to_owned()
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(
                format!(
                    "{} does not exist, so Claude Code runs none of our hooks",
                    path.display()
                ),
                format!("run `{install}`"),
            )
        }
        Err(e) => {
            return fail(
                format!("cannot read {}: {e}", path.display()),
                format!("run `{install}`"),
            )
        }
    };
    let settings: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                format!(
                    "{} is not valid JSON ({e}), so Claude Code ignores it",
                    path.display()
                ),
                format!("fix the file, then run `{install}`"),
            )
        }
    };
    let mut missing = Vec::new();
    let mut gone = Vec::new();
    let mut shell_form = Vec::new();
    for event in HookEvent::ALL {
        let ours: Vec<&Value> = settings
            .pointer(&format!("/hooks/{}", event.claude_name()))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|g| g.get("hooks").and_then(Value::as_array))
            .flatten()
            .filter(|h| claude_settings::is_ours(h, event))
            .collect();
        match ours.first() {
            None => missing.push(event.claude_name()),
            Some(h) => {
                let program = claude_settings::hook_program(h);
                if !Path::new(&program).exists() {
                    gone.push(program);
                }
                if h.get("args").is_none() {
                    shell_form.push(event.claude_name());
                }
            }
        }
    }
    if !missing.is_empty() {
        return fail(
            format!(
                "{} has no ccr-agent hook for {}",
                path.display(),
                missing.join(", ")
            ),
            format!("run `{install}`"),
        );
    }
    if let Some(program) = gone.first() {
        return fail(
            format!(
                "the hooks in {} run {program}, which does not exist",
                path.display()
            ),
            format!("run `{install}` with the ccr-agent you use now"),
        );
    }
    if !shell_form.is_empty() {
        // A shell between Claude Code and the hook: the signal of a PermissionRequest hook
        // Claude Code gives up on may not reach it, so its card may not say "answered at the
        // terminal".
        return fail(
            format!(
                "the {} hooks in {} are the shell command lines of an earlier ccr-agent",
                shell_form.join(", "),
                path.display()
            ),
            format!("run `{install}` (it rewrites them in exec form, keeping your own hooks)"),
        );
    }
    let names: Vec<&str> = HookEvent::ALL.iter().map(|e| e.claude_name()).collect();
    Outcome::Pass(format!("{} in {}", names.join(", "), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 12:00:00 GMT"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("garbage"), None);
    }

    #[test]
    fn clock_skew_over_five_minutes_fails() {
        let remote: url::Url = "https://w.example".parse().unwrap();
        let check_clock = |date: Option<String>| super::check_clock(date, &remote);
        let now = now_ms() / 1000;
        assert!(matches!(
            check_clock(Some(render(now - 10))),
            Outcome::Pass(_)
        ));
        match check_clock(Some(render(now - 600))) {
            Outcome::Fail { problem, .. } => assert!(problem.contains("ahead of"), "{problem}"),
            o => panic!("{o:?}"),
        }
        match check_clock(Some(render(now + 600))) {
            Outcome::Fail { problem, .. } => assert!(problem.contains("behind"), "{problem}"),
            o => panic!("{o:?}"),
        }
        match check_clock(None) {
            Outcome::Pass(what) => assert!(what.starts_with("not compared"), "{what}"),
            o => panic!("{o:?}"),
        }
        let local: url::Url = "http://127.0.0.1:8787".parse().unwrap();
        match super::check_clock(None, &local) {
            Outcome::Pass(what) => assert!(what.contains("shares this clock"), "{what}"),
            o => panic!("{o:?}"),
        }
    }

    /// An IMF-fixdate for `secs` (tests only).
    fn render(secs: i64) -> String {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Civil from days (Hinnant).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "Mon, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
            months[(m - 1) as usize],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    #[test]
    fn render_round_trips() {
        for secs in [0, 784_111_777, 1_709_208_000, 1_800_000_123] {
            assert_eq!(parse_http_date(&render(secs)), Some(secs));
        }
    }

    #[test]
    fn hooks_check_names_missing_events_and_vanished_programs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        assert!(matches!(
            check_hooks(Some(&path), true),
            Outcome::Fail { .. }
        ));
        let exe = dir.path().join("ccr-agent");
        std::fs::write(&exe, "").unwrap();
        claude_settings::install(&path, &exe, None, 3600).unwrap();
        assert!(matches!(check_hooks(Some(&path), true), Outcome::Pass(_)));
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["hooks"].as_object_mut().unwrap().remove("Stop");
        std::fs::write(&path, v.to_string()).unwrap();
        match check_hooks(Some(&path), true) {
            Outcome::Fail { problem, fix } => {
                assert!(problem.contains("for Stop"), "{problem}");
                assert!(fix.contains("install-hooks --settings"), "{fix}");
            }
            o => panic!("{o:?}"),
        }
        claude_settings::install(&path, Path::new("/nowhere/ccr-agent"), None, 3600).unwrap();
        match check_hooks(Some(&path), false) {
            Outcome::Fail { problem, .. } => assert!(problem.contains("/nowhere/ccr-agent")),
            o => panic!("{o:?}"),
        }
        // An earlier version's shell command line: found, but the fix is to reinstall.
        claude_settings::install(&path, &exe, None, 3600).unwrap();
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let stop = &mut v["hooks"]["Stop"][0]["hooks"][0];
        stop.as_object_mut().unwrap().remove("args");
        stop["command"] = Value::String(format!("{} hook stop", exe.display()));
        std::fs::write(&path, v.to_string()).unwrap();
        match check_hooks(Some(&path), true) {
            Outcome::Fail { problem, fix } => {
                assert!(problem.contains("the Stop hooks"), "{problem}");
                assert!(fix.contains("exec form"), "{fix}");
            }
            o => panic!("{o:?}"),
        }
        claude_settings::install(&path, &exe, None, 3600).unwrap();
        assert!(matches!(check_hooks(Some(&path), true), Outcome::Pass(_)));
    }

    #[test]
    fn data_dir_check_flags_a_readable_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        assert!(matches!(check_data_dir(&d), Outcome::Pass(_)));
        std::fs::write(hook_config_path(&d), "{}").unwrap();
        std::fs::set_permissions(hook_config_path(&d), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        match check_data_dir(&d) {
            Outcome::Fail { fix, .. } => assert!(fix.starts_with("chmod 600")),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn report_renders_marks_and_fixes() {
        let mut r = Report::default();
        r.push("a", Outcome::Pass("fine".into()));
        assert!(r.ok());
        assert!(r.render().ends_with("all checks passed\n"));
        r.push("b", fail("broken", "mend it"));
        r.push("c", Outcome::Skipped("b failed".into()));
        assert!(!r.ok());
        let text = r.render();
        assert!(
            text.contains("✓ a: fine\n✗ b: broken\n    fix: mend it\n- c: skipped, b failed\n"),
            "{text}"
        );
        assert!(text.contains("1 check(s) failed"));
    }
}
