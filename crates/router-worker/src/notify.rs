//! `POST /notifications/send` decided without the runtime: which chat, the text's size and
//! escaping into parts, the buttons or raw markup, the reply mappings to record as each part
//! lands, and the answer or the refusal.
//!
//! Pure over the [`Sql`] trait, so it runs on real SQLite in `cargo test`. The RouterDO
//! [`store`]s a [`Plan`]'s calls in the outbox, sends its chat's lane at once, and answers
//! with what became of the parts ([`answer`]): 200 when all were sent, 202 when some wait
//! for Telegram, 502 when Telegram refused one for good.

use ccr_protocol::api::{Buttons, NotificationQueued, NotificationSent, SendNotification};
use ccr_protocol::validate;
use serde_json::Value;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::outbox::{self, GroupState, Mapping};
use crate::router::Config;
use crate::store::{self, Sql};
use crate::telegram::{self, BotCall};
use crate::topics;

/// Largest notification text accepted (bytes); longer texts are split into many messages.
pub(crate) const MAX_NOTIFICATION_BYTES: usize = 32 * 1024;

/// A notification ready to go: the `sendMessage` calls, in order, and whom they are about.
#[derive(Debug)]
pub(crate) struct Plan {
    /// One call per part; only the last carries the keyboard or the raw markup.
    pub(crate) calls: Vec<BotCall>,
    /// The notification's token: its id in the outbox and in a 202 answer.
    pub(crate) token: String,
    session_id: String,
    /// Its chat.
    chat_id: i64,
    /// The name of the session's topic, should the chat have topics.
    topic_name: String,
}

impl Plan {
    /// The outbox lane its parts go to (its chat's).
    pub(crate) fn lane(&self) -> String {
        self.calls
            .first()
            .map(|c| outbox::lane_of(c).0)
            .unwrap_or_default()
    }
}

/// What a notification is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200: every part was sent.
    Sent(NotificationSent),
    /// 202: some part waits in the outbox.
    Queued(NotificationQueued),
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
        calls,
        token,
        topic_name: topics::name(session.label.as_deref(), &session.machine_id),
        session_id: session.session_id,
        chat_id,
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

/// Stores the plan's parts in the outbox, all or none, and marks the session active. 503
/// (with `Retry-After`) when the outbox has no room for them. The session's topic is asked
/// for first when it has none in the chat yet (`topics::ensure`): the parts wait behind it
/// in the lane and go to it.
pub(crate) fn store(db: &impl Sql, plan: &Plan, now: i64) -> Result<(), ApiError> {
    let mapping = Mapping {
        session_id: plan.session_id.clone(),
        token: plan.token.clone(),
    };
    db.transaction(|db| {
        let topic = topics::ensure(db, plan.chat_id, &plan.session_id, &plan.topic_name, now)?;
        outbox::add_for_session(db, &topic, &plan.session_id, now)?;
        let added = outbox::add_notification(db, &plan.calls, &plan.token, &mapping, now)?;
        if added.is_ok() {
            store::touch_session(db, &plan.session_id, now)?;
        }
        Ok(added)
    })?
    .map_err(|why| {
        ApiError::busy(
            503,
            format!("notification not queued: {why}; try again later"),
            60,
        )
    })
}

/// The answer, from what became of the plan's parts once its lane was sent: 200 with the
/// message ids when all went out, 202 when some wait for Telegram, 502 with Telegram's
/// description when it refused one for good.
pub(crate) fn answer(db: &impl Sql, plan: &Plan) -> Result<Answer, ApiError> {
    match outbox::group_state(db, &plan.token)? {
        GroupState::Sent(message_ids) => Ok(Answer::Sent(NotificationSent {
            ok: true,
            message_id: message_ids.first().copied().unwrap_or_default(),
            message_ids,
            token: plan.token.clone(),
        })),
        GroupState::Pending => Ok(Answer::Queued(NotificationQueued::new(plan.token.clone()))),
        GroupState::Refused { part: 1, why, .. } => Err(ApiError::new(
            502,
            format!("Telegram refused the message: {}", why_or(&why)),
        )),
        GroupState::Refused { part, parts, why } => Err(ApiError::new(
            502,
            format!(
                "Telegram refused part {part} of {parts}: {} (parts before it were sent)",
                why_or(&why)
            ),
        )),
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
    use crate::telegram::ApiOutcome;
    use ccr_protocol::TELEGRAM_MAX_TEXT;
    use serde_json::json;

    const CHAT: i64 = 42;
    const OTHER: i64 = 43;

    fn cfg() -> Config {
        Config {
            allowed_chats: vec![CHAT, OTHER],
            allowed_users: vec![],
            ..Config::default()
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
        assert_eq!(row.len(), 6);
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
            6
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

    /// Telegram's answer to `createForumTopic` in a chat without topics (these tests' chats).
    fn not_a_forum() -> ApiOutcome {
        ApiOutcome::Refused("Bad Request: the chat is not a forum".into())
    }

    /// Stores the plan, sends its lane through `answers` (then "down" when they run out) as
    /// the RouterDO does at once, and gives the answer.
    fn deliver(db: &MemDb, p: &Plan, answers: Vec<ApiOutcome>) -> Result<Answer, ApiError> {
        store(db, p, 100)?;
        let mut answers = answers.into_iter();
        outbox::testing::flush(db, &p.lane(), 100, true, |e| {
            if e.method == topics::CREATE {
                return not_a_forum();
            }
            answers
                .next()
                .unwrap_or_else(|| ApiOutcome::Failed("cannot reach Telegram".into()))
        });
        answer(db, p)
    }

    #[test]
    fn sent_at_once_records_each_part_and_answers_200() {
        let db = setup();
        let text = format!("{}\n{}", "a".repeat(3000), "b".repeat(3000));
        let p = plan(
            &db,
            &cfg(),
            &Principal::Admin,
            json!({"sessionId": "s1", "text": text, "chatId": OTHER}),
        )
        .unwrap();
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.lane(), format!("chat:{OTHER}"));
        let answer = deliver(&db, &p, vec![sent(7), sent(8)]).unwrap();
        assert_eq!(
            answer,
            Answer::Sent(NotificationSent {
                ok: true,
                message_ids: vec![7, 8],
                message_id: 7,
                token: "tok123".into(),
            })
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
            100
        );
    }

    #[test]
    fn telegram_unreachable_or_rate_limiting_is_a_202_and_nothing_is_mapped_yet() {
        let db = setup();
        let note = json!({"sessionId": "s1", "text": "x"});
        let p = plan(&db, &cfg(), &Principal::Admin, note.clone()).unwrap();
        assert_eq!(
            deliver(&db, &p, vec![]).unwrap(),
            Answer::Queued(NotificationQueued::new("tok123"))
        );
        assert!(mappings(&db).is_empty());
        // A 429 past the request's budget: queued as well, behind the first one.
        let p2 = prepare(&db, &cfg(), &Principal::Admin, &body(note), || {
            Ok("tok456".into())
        })
        .unwrap();
        store(&db, &p2, 100).unwrap();
        assert_eq!(
            answer(&db, &p2).unwrap(),
            Answer::Queued(NotificationQueued::new("tok456"))
        );
        // When Telegram is back the mappings appear as the parts go out.
        let mut id = 0;
        outbox::testing::flush(&db, &p.lane(), 60_000, false, |e| {
            if e.method == topics::CREATE {
                return not_a_forum();
            }
            id += 1;
            sent(id)
        });
        assert_eq!(
            mappings(&db),
            vec![
                (CHAT, 1, "s1".into(), "tok123".into()),
                (CHAT, 2, "s1".into(), "tok456".into())
            ]
        );
    }

    /// Telegram's answers that fail the request: status and message.
    fn failure(db: &MemDb, text: &str, answers: Vec<ApiOutcome>) -> (u16, String) {
        // Every plan here has the same token: forget the previous one's parts.
        db.exec("DELETE FROM outbox", vec![]).unwrap();
        let p = plan(
            db,
            &cfg(),
            &Principal::Admin,
            json!({"sessionId": "s1", "text": text}),
        )
        .unwrap();
        let e = deliver(db, &p, answers).unwrap_err();
        let (status, body) = e.answer().unwrap();
        (status, body.error)
    }

    #[test]
    fn telegram_refusals_are_502s() {
        let db = setup();
        assert_eq!(
            failure(
                &db,
                "x",
                vec![ApiOutcome::Refused("Bad Request: chat not found".into())]
            ),
            (
                502,
                "Telegram refused the message: Bad Request: chat not found".into()
            )
        );
        assert_eq!(
            failure(&db, "x", vec![ApiOutcome::Refused(String::new())]),
            (502, "Telegram refused the message: no description".into())
        );
        assert_eq!(
            failure(&db, "x", vec![ApiOutcome::Ok(json!({"chat": {}}))]),
            (
                502,
                "Telegram refused the message: Telegram's answer had no message_id".into()
            )
        );
        assert!(mappings(&db).is_empty());
        // A later part failing names it; the parts before it stay routable.
        let long = "y".repeat(3 * TELEGRAM_MAX_TEXT);
        assert_eq!(
            failure(
                &db,
                &long,
                vec![sent(1), ApiOutcome::Refused("Forbidden: bot was blocked".into())]
            ),
            (
                502,
                "Telegram refused part 2 of 4: Forbidden: bot was blocked (parts before it were sent)"
                    .into()
            )
        );
        assert_eq!(mappings(&db), vec![(CHAT, 1, "s1".into(), "tok123".into())]);
    }

    #[test]
    fn a_full_outbox_refuses_with_503() {
        let db = setup();
        let many: Vec<BotCall> = (0..outbox::MAX_PENDING_PER_CHAT)
            .map(|i| BotCall::send(CHAT, &i.to_string(), None))
            .collect();
        outbox::add_or_drop(&db, &many, 0).unwrap();
        let p = plan(
            &db,
            &cfg(),
            &Principal::Admin,
            json!({"sessionId": "s1", "text": "x"}),
        )
        .unwrap();
        let e = store(&db, &p, 5).unwrap_err();
        let (status, body) = e.answer().unwrap();
        assert_eq!(status, 503);
        assert!(
            body.error
                .starts_with("notification not queued: the outbox is full")
                && body.error.contains("at most 1000 per chat"),
            "{}",
            body.error
        );
    }
}
