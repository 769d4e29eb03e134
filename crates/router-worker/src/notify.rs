//! `POST /notifications/send` decided without the runtime: which chat, the text's size and
//! escaping into parts, the buttons or raw markup, the reply mappings to record as each part
//! lands, and the answer or the refusal.
//!
//! Pure over the [`Sql`] trait, so it runs on real SQLite in `cargo test`. The RouterDO only
//! makes the Bot API calls of a [`Plan`] in order and reports each answer to its [`Delivery`].

use ccr_protocol::api::{Buttons, NotificationSent, SendNotification};
use ccr_protocol::validate;
use serde_json::Value;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::router::{self, Config};
use crate::store::{self, Sql};
use crate::telegram::{self, ApiOutcome, BotCall};

/// Largest notification text accepted (bytes); longer texts are split into many messages.
pub(crate) const MAX_NOTIFICATION_BYTES: usize = 32 * 1024;

/// A notification ready to go: the `sendMessage` calls, in order, and their bookkeeping.
#[derive(Debug)]
pub(crate) struct Plan {
    /// One call per part; only the last carries the keyboard or the raw markup.
    pub(crate) calls: Vec<BotCall>,
    /// Takes Telegram's answer to each call in turn.
    pub(crate) delivery: Delivery,
}

/// Where a notification's parts went so far.
#[derive(Debug)]
pub(crate) struct Delivery {
    chat_id: i64,
    session_id: String,
    token: String,
    parts: usize,
    message_ids: Vec<i64>,
}

/// Checks a notification and plans its calls. `new_token` is called only once the request
/// is accepted; the token goes into the buttons' callback data and the answer.
pub(crate) fn prepare(
    db: &impl Sql,
    cfg: &Config,
    principal: &Principal,
    body: &SendNotification,
    new_token: impl FnOnce() -> Result<String, ApiError>,
) -> Result<Plan, ApiError> {
    validate::session_id(&body.session_id).map_err(|e| ApiError::new(400, e))?;
    if body.text.trim().is_empty() {
        return Err(ApiError::new(400, "text is empty"));
    }
    if body.text.len() > MAX_NOTIFICATION_BYTES {
        return Err(ApiError::new(
            400,
            format!("text is over {MAX_NOTIFICATION_BYTES} bytes"),
        ));
    }
    if body.reply_markup.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::new(
            400,
            "replyMarkup must be a Telegram reply markup object",
        ));
    }
    let chat_id = choose_chat(cfg, body.chat_id)?;
    let Some(session) = store::get_session(db, &body.session_id)? else {
        return Err(ApiError::new(
            404,
            "unknown session: register it first (POST /sessions/register)",
        ));
    };
    if !principal.may_act_for(&session.machine_id) {
        return Err(ApiError::new(
            403,
            "this session belongs to another machine",
        ));
    }
    let token = new_token()?;
    let label = session.label.as_deref().unwrap_or(&session.machine_id);
    let parts = telegram::format_notification(Some(label), &body.text);
    let markup: Option<Value> = match (&body.reply_markup, &body.buttons) {
        (Some(raw), _) => Some(raw.clone()),
        (None, buttons) => {
            let actions = buttons
                .as_ref()
                .map_or_else(|| Buttons::Enabled(true).actions(), Buttons::actions);
            telegram::keyboard(&token, &actions)
        }
    };
    let last = parts.len().saturating_sub(1);
    let calls = parts
        .iter()
        .enumerate()
        .map(|(i, part)| match (&markup, i == last) {
            (Some(m), true) => {
                BotCall::send(chat_id, part, None).with_param("reply_markup", m.clone())
            }
            _ => BotCall::send(chat_id, part, None),
        })
        .collect::<Vec<_>>();
    Ok(Plan {
        delivery: Delivery {
            chat_id,
            session_id: session.session_id,
            token,
            parts: calls.len(),
            message_ids: Vec::with_capacity(calls.len()),
        },
        calls,
    })
}

/// The chat to send to: the one asked for, if allowed, else the first allowed chat.
fn choose_chat(cfg: &Config, asked: Option<i64>) -> Result<i64, ApiError> {
    match asked {
        Some(c) if cfg.allowed_chats.contains(&c) => Ok(c),
        Some(c) => Err(ApiError::new(
            403,
            format!("chat {c} is not in ALLOWED_CHAT_IDS"),
        )),
        None => cfg.allowed_chats.first().copied().ok_or_else(|| {
            ApiError::new(
                400,
                "no chatId given and ALLOWED_CHAT_IDS is empty: set it on the Worker",
            )
        }),
    }
}

impl Delivery {
    /// Telegram's answer to the next part. A sent part's reply mapping is recorded at once,
    /// so replies to it route even if a later part fails; a failure is the 502 to answer.
    pub(crate) fn sent(
        &mut self,
        db: &impl Sql,
        outcome: ApiOutcome,
        now: i64,
    ) -> Result<(), ApiError> {
        match outcome {
            ApiOutcome::Ok(result) => {
                let Some(id) = result.get("message_id").and_then(Value::as_i64) else {
                    return Err(ApiError::new(502, "Telegram's answer had no message_id"));
                };
                router::record_message(db, self.chat_id, id, &self.session_id, &self.token, now)?;
                self.message_ids.push(id);
                Ok(())
            }
            ApiOutcome::Failed(why) if self.message_ids.is_empty() => Err(ApiError::new(
                502,
                format!("Telegram refused the message: {}", why_or(&why)),
            )),
            ApiOutcome::Failed(why) => Err(ApiError::new(
                502,
                format!(
                    "Telegram refused part {} of {}: {why} (parts before it were sent)",
                    self.message_ids.len() + 1,
                    self.parts
                ),
            )),
            ApiOutcome::RetryAfter(secs) => Err(ApiError::new(
                502,
                format!("Telegram asks to retry after {secs} s"),
            )),
        }
    }

    /// Every part was sent: marks the session active and gives the answer.
    pub(crate) fn finish(self, db: &impl Sql, now: i64) -> Result<NotificationSent, ApiError> {
        store::touch_session(db, &self.session_id, now)?;
        Ok(NotificationSent {
            ok: true,
            message_id: self.message_ids.first().copied().unwrap_or_default(),
            message_ids: self.message_ids,
            token: self.token,
        })
    }
}

/// A notification token from random bytes: one of 32 unambiguous characters per byte (12
/// bytes: 60 bits). It names the notification in `/cmd` and in the buttons' callback data.
pub(crate) fn token_from(random: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    random
        .iter()
        .map(|b| char::from(ALPHABET.get(usize::from(b % 32)).copied().unwrap_or(b'a')))
        .collect()
}

fn why_or(why: &str) -> &str {
    if why.is_empty() {
        "no description"
    } else {
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::MemDb;
    use crate::store::StoreError;
    use ccr_protocol::TELEGRAM_MAX_TEXT;
    use serde_json::json;

    const CHAT: i64 = 42;
    const OTHER: i64 = 43;

    fn cfg() -> Config {
        Config {
            allowed_chats: vec![CHAT, OTHER],
            allowed_users: vec![],
        }
    }

    fn setup() -> MemDb {
        let db = MemDb::migrated();
        store::upsert_session(&db, "s1", "devbox", Some("api <prod>"), 0).unwrap();
        store::upsert_session(&db, "s2", "laptop", None, 0).unwrap();
        db
    }

    fn body(v: Value) -> SendNotification {
        serde_json::from_value(v).unwrap()
    }

    fn token() -> Result<String, ApiError> {
        Ok("tok123".into())
    }

    fn plan(db: &MemDb, cfg: &Config, who: &Principal, v: Value) -> Result<Plan, ApiError> {
        prepare(db, cfg, who, &body(v), token)
    }

    /// The refusal's status and message.
    fn refusal(r: Result<Plan, ApiError>) -> (u16, String) {
        match r {
            Err(ApiError::Answer {
                status, message, ..
            }) => (status, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn text(call: &BotCall) -> &str {
        call.params["text"].as_str().unwrap()
    }

    /// The reply mappings stored, as (chat, message, session, token).
    fn mappings(db: &MemDb) -> Vec<(i64, i64, String, String)> {
        let mut stmt =
            db.0.prepare(
                "SELECT chat_id, message_id, session_id, token FROM messages ORDER BY message_id",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn sent(id: i64) -> ApiOutcome {
        ApiOutcome::Ok(json!({"message_id": id, "chat": {"id": CHAT}}))
    }

    #[test]
    fn one_part_with_the_default_keyboard_and_escaped_label_and_text() {
        let db = setup();
        let p = plan(
            &db,
            &cfg(),
            &Principal::Admin,
            json!({"sessionId": "s1", "text": "done: a<b && c>d"}),
        )
        .unwrap();
        assert_eq!(p.calls.len(), 1);
        let call = &p.calls[0];
        assert_eq!(call.method, "sendMessage");
        assert_eq!(call.params["chat_id"], CHAT, "the first allowed chat");
        assert_eq!(call.params["parse_mode"], "HTML");
        assert_eq!(
            text(call),
            "<b>api &lt;prod&gt;</b>\ndone: a&lt;b &amp;&amp; c&gt;d"
        );
        let row = call.params["reply_markup"]["inline_keyboard"][0]
            .as_array()
            .unwrap();
        assert_eq!(row.len(), 4);
        assert_eq!(row[0]["callback_data"], "cmd:tok123:continue");
        assert!(call.params.get("reply_parameters").is_none());
    }

    #[test]
    fn the_label_falls_back_to_the_machine() {
        let db = setup();
        let p = plan(
            &db,
            &cfg(),
            &Principal::Admin,
            json!({"sessionId": "s2", "text": "hi"}),
        )
        .unwrap();
        assert_eq!(text(&p.calls[0]), "<b>laptop</b>\nhi");
    }

    #[test]
    fn buttons_and_raw_markup() {
        let db = setup();
        let markup = |v: Value| {
            let p = plan(&db, &cfg(), &Principal::Admin, v).unwrap();
            p.calls[0].params.get("reply_markup").cloned()
        };
        assert_eq!(
            markup(json!({"sessionId": "s1", "text": "x", "buttons": false})),
            None
        );
        assert_eq!(
            markup(json!({"sessionId": "s1", "text": "x", "buttons": []})),
            None
        );
        let two =
            markup(json!({"sessionId": "s1", "text": "x", "buttons": ["yes", "no"]})).unwrap();
        assert_eq!(
            two,
            json!({"inline_keyboard": [[
                {"text": ccr_protocol::api::ButtonAction::Yes.caption(), "callback_data": "cmd:tok123:yes"},
                {"text": ccr_protocol::api::ButtonAction::No.caption(), "callback_data": "cmd:tok123:no"},
            ]]})
        );
        assert_eq!(
            markup(json!({"sessionId": "s1", "text": "x", "buttons": true})).unwrap()
                ["inline_keyboard"][0]
                .as_array()
                .unwrap()
                .len(),
            4
        );
        // The original clients' raw markup passes through and wins over `buttons`.
        let raw = json!({"inline_keyboard": [[{"text": "Go", "callback_data": "x"}]]});
        assert_eq!(
            markup(json!({"sessionId": "s1", "text": "x", "replyMarkup": raw, "buttons": false})),
            Some(raw)
        );
        for bad in [json!("x"), json!([1]), json!(3)] {
            assert_eq!(
                refusal(plan(
                    &db,
                    &cfg(),
                    &Principal::Admin,
                    json!({"sessionId": "s1", "text": "x", "replyMarkup": bad})
                )),
                (
                    400,
                    "replyMarkup must be a Telegram reply markup object".into()
                )
            );
        }
    }

    #[test]
    fn size_limits_and_splitting() {
        let db = setup();
        let admin = Principal::Admin;
        for empty in ["", "  \n\t"] {
            assert_eq!(
                refusal(plan(
                    &db,
                    &cfg(),
                    &admin,
                    json!({"sessionId": "s1", "text": empty})
                )),
                (400, "text is empty".into())
            );
        }
        let over = "a".repeat(MAX_NOTIFICATION_BYTES + 1);
        assert_eq!(
            refusal(plan(
                &db,
                &cfg(),
                &admin,
                json!({"sessionId": "s1", "text": over})
            )),
            (400, format!("text is over {MAX_NOTIFICATION_BYTES} bytes"))
        );
        // At the limit: split into parts that each fit, the keyboard only on the last.
        let full = "&".repeat(MAX_NOTIFICATION_BYTES);
        let p = plan(
            &db,
            &cfg(),
            &admin,
            json!({"sessionId": "s1", "text": full}),
        )
        .unwrap();
        assert!(p.calls.len() > 1);
        for (i, call) in p.calls.iter().enumerate() {
            assert!(text(call).encode_utf16().count() <= TELEGRAM_MAX_TEXT);
            assert_eq!(
                call.params.get("reply_markup").is_some(),
                i == p.calls.len() - 1
            );
            assert_eq!(call.params["chat_id"], CHAT);
        }
        let joined: String = p.calls.iter().map(text).collect();
        assert_eq!(
            joined,
            format!(
                "<b>api &lt;prod&gt;</b>\n{}",
                "&amp;".repeat(MAX_NOTIFICATION_BYTES)
            )
        );
        assert_eq!(p.delivery.parts, p.calls.len());
    }

    #[test]
    fn chat_choice() {
        let db = setup();
        let chat = |c: &Config, v: Value| {
            plan(&db, c, &Principal::Admin, v).map(|p| p.calls[0].params["chat_id"].clone())
        };
        assert_eq!(
            chat(
                &cfg(),
                json!({"sessionId": "s1", "text": "x", "chatId": OTHER})
            )
            .unwrap(),
            OTHER
        );
        assert_eq!(
            chat(
                &cfg(),
                json!({"sessionId": "s1", "text": "x", "chatId": OTHER.to_string()})
            )
            .unwrap(),
            OTHER,
            "a numeric string, as the original clients send"
        );
        assert_eq!(
            refusal(plan(
                &db,
                &cfg(),
                &Principal::Admin,
                json!({"sessionId": "s1", "text": "x", "chatId": 5})
            )),
            (403, "chat 5 is not in ALLOWED_CHAT_IDS".into())
        );
        assert_eq!(
            refusal(plan(
                &db,
                &Config::default(),
                &Principal::Admin,
                json!({"sessionId": "s1", "text": "x"})
            )),
            (
                400,
                "no chatId given and ALLOWED_CHAT_IDS is empty: set it on the Worker".into()
            )
        );
    }

    #[test]
    fn sessions_and_who_may_notify() {
        let db = setup();
        let (status, _) = refusal(plan(
            &db,
            &cfg(),
            &Principal::Admin,
            json!({"sessionId": "", "text": "x"}),
        ));
        assert_eq!(status, 400);
        assert_eq!(
            refusal(plan(
                &db,
                &cfg(),
                &Principal::Admin,
                json!({"sessionId": "nope", "text": "x"})
            )),
            (
                404,
                "unknown session: register it first (POST /sessions/register)".into()
            )
        );
        let laptop = Principal::Machine("laptop".into());
        assert_eq!(
            refusal(plan(
                &db,
                &cfg(),
                &laptop,
                json!({"sessionId": "s1", "text": "x"})
            )),
            (403, "this session belongs to another machine".into())
        );
        assert!(plan(
            &db,
            &cfg(),
            &laptop,
            json!({"sessionId": "s2", "text": "x"})
        )
        .is_ok());
    }

    #[test]
    fn the_token_is_drawn_only_for_an_accepted_request() {
        let db = setup();
        let refused = prepare(
            &db,
            &cfg(),
            &Principal::Admin,
            &body(json!({"sessionId": "nope", "text": "x"})),
            || panic!("no token for a refused request"),
        );
        assert!(refused.is_err());
        let failing = prepare(
            &db,
            &cfg(),
            &Principal::Admin,
            &body(json!({"sessionId": "s1", "text": "x"})),
            || Err(ApiError::Store(StoreError("no randomness".into()))),
        );
        assert!(matches!(failing, Err(ApiError::Store(_))));
    }

    #[test]
    fn tokens() {
        let t = token_from(&[0, 31, 32, 255, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(t, "a9a9ijkmnpqr");
        let all: Vec<u8> = (0..=255).collect();
        let t = token_from(&all);
        assert_eq!(t.len(), 256);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_lowercase() || ('2'..='9').contains(&c)));
        assert!(!t.contains(['l', 'o', '0', '1']));
    }

    #[test]
    fn delivery_records_each_part_and_answers() {
        let db = setup();
        let text = format!("{}\n{}", "a".repeat(3000), "b".repeat(3000));
        let mut p = plan(
            &db,
            &cfg(),
            &Principal::Admin,
            json!({"sessionId": "s1", "text": text, "chatId": OTHER}),
        )
        .unwrap();
        assert_eq!(p.calls.len(), 2);
        p.delivery.sent(&db, sent(7), 100).unwrap();
        p.delivery.sent(&db, sent(8), 101).unwrap();
        let answer = p.delivery.finish(&db, 102).unwrap();
        assert_eq!(
            answer,
            NotificationSent {
                ok: true,
                message_ids: vec![7, 8],
                message_id: 7,
                token: "tok123".into(),
            }
        );
        assert_eq!(
            mappings(&db),
            vec![
                (OTHER, 7, "s1".into(), "tok123".into()),
                (OTHER, 8, "s1".into(), "tok123".into()),
            ]
        );
        assert_eq!(
            store::get_session(&db, "s1")
                .unwrap()
                .unwrap()
                .last_activity,
            102
        );
    }

    /// Telegram's answers that fail the request: status and message.
    fn failure(db: &MemDb, text: &str, answers: Vec<ApiOutcome>) -> (u16, String) {
        let mut p = plan(
            db,
            &cfg(),
            &Principal::Admin,
            json!({"sessionId": "s1", "text": text}),
        )
        .unwrap();
        for outcome in answers {
            if let Err(e) = p.delivery.sent(db, outcome, 5) {
                let (status, body) = e.answer().unwrap();
                return (status, body.error);
            }
        }
        panic!("every part was sent");
    }

    #[test]
    fn telegram_failures_are_502s() {
        let db = setup();
        assert_eq!(
            failure(
                &db,
                "x",
                vec![ApiOutcome::Failed("Bad Request: chat not found".into())]
            ),
            (
                502,
                "Telegram refused the message: Bad Request: chat not found".into()
            )
        );
        assert_eq!(
            failure(&db, "x", vec![ApiOutcome::Failed(String::new())]),
            (502, "Telegram refused the message: no description".into())
        );
        assert_eq!(
            failure(&db, "x", vec![ApiOutcome::Ok(json!({"chat": {}}))]),
            (502, "Telegram's answer had no message_id".into())
        );
        assert_eq!(
            failure(&db, "x", vec![ApiOutcome::RetryAfter(3)]),
            (502, "Telegram asks to retry after 3 s".into())
        );
        assert!(mappings(&db).is_empty());
        // A later part failing names it; the parts before it stay routable.
        let long = "y".repeat(3 * TELEGRAM_MAX_TEXT);
        assert_eq!(
            failure(
                &db,
                &long,
                vec![sent(1), ApiOutcome::Failed("Forbidden: bot was blocked".into())]
            ),
            (
                502,
                "Telegram refused part 2 of 4: Forbidden: bot was blocked (parts before it were sent)"
                    .into()
            )
        );
        assert_eq!(mappings(&db), vec![(CHAT, 1, "s1".into(), "tok123".into())]);
    }
}
