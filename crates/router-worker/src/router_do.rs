//! The RouterDO: one Durable Object holding an installation's sessions, reply mappings,
//! command queue and update dedup, and every machine's hibernating socket.
//!
//! Thin by design: decisions are in `router`, `notify`, `queue`, `store` and `telegram`;
//! this file reads requests and socket events, calls them, and carries out what they return.

use ccr_protocol::wire;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use ccr_protocol::api::{
    ApprovalOpened, CloseApprovals, OkBody, OpenApproval, RegisterSession, SendNotification,
    UnregisterSession,
};
use ccr_protocol::socket::{SocketMessage, PING_FRAME, PONG_FRAME};
use ccr_protocol::{validate, MAX_FRAME_BYTES};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use worker::worker_sys::WebSocketRequestResponsePair;
use worker::*;

use crate::approvals;
use crate::auth::Principal;
use crate::conversation;
use crate::error::ApiError;
use crate::files;
use crate::http::{self, json, parse_json, setting, Reply};
use crate::launch;
use crate::notify::{self, Answer};
use crate::outbox::{self, GroupState};
use crate::preview;
use crate::queue::{self, Queued};
use crate::route::{route, Route};
use crate::router::{self, Config};
use crate::store::{self, Sql, SqlValue, StoreError};
use crate::telegram::{self, ApiOutcome, BotCall, Retry, Update};
use crate::topics;

/// Longest total wait for Telegram's 429 `retry_after` within one request.
const MAX_RETRY_WAIT_SECS: u64 = 10;
/// The retention sweep runs at least this often (ms).
const SWEEP_EVERY_MS: i64 = 60 * 60 * 1000;
/// Commands pushed per flush (the rest follow as acks arrive and on the next alarm).
const FLUSH_BATCH: i64 = 100;
/// The alarm's shortest delay (ms).
const MIN_ALARM_MS: i64 = 250;
/// Longest a notification waits for another request that is sending its chat's outbox lane
/// before it is answered 202 (ms).
const LANE_WAIT_MS: i64 = 10_000;

/// What a machine socket carries across hibernation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SocketInfo {
    machine_id: String,
    connected_at: i64,
}

fn machine_tag(machine_id: &str) -> String {
    format!("machine:{machine_id}")
}

/// The runtime's clock as the store keeps it (ms since the epoch).
fn now_ms() -> i64 {
    i64::try_from(http::now_ms()).unwrap_or(i64::MAX)
}

/// The Durable Object's SQLite behind the [`Sql`] trait.
struct DoSql(SqlStorage, Storage);

fn bind(params: Vec<SqlValue>) -> Vec<SqlStorageValue> {
    params
        .into_iter()
        .map(|p| match p {
            SqlValue::Null => SqlStorageValue::Null,
            SqlValue::Int(i) => SqlStorageValue::Integer(i),
            SqlValue::Text(t) => SqlStorageValue::String(t),
        })
        .collect()
}

impl Sql for DoSql {
    fn transaction<T, F>(&self, work: F) -> std::result::Result<T, StoreError>
    where
        F: FnOnce(&Self) -> std::result::Result<T, StoreError>,
    {
        use worker::js_sys::{Function, Reflect};
        use worker::wasm_bindgen::closure::ScopedClosure;
        use worker::wasm_bindgen::{JsCast, JsValue};

        // workers-rs 0.8.7 binds only the asynchronous `transaction`; `transactionSync` runs
        // its callback at once and rolls every write back when the callback throws. The
        // callback is a scoped closure: it borrows `work` for the length of the call only.
        let raw = self.1.as_raw();
        let sync = Reflect::get(raw, &JsValue::from_str("transactionSync"))
            .ok()
            .and_then(|f| f.dyn_into::<Function>().ok())
            .ok_or_else(|| StoreError("storage.transactionSync is not available".into()))?;
        let mut work = Some(work);
        let mut result: Option<std::result::Result<T, StoreError>> = None;
        let mut body = || -> std::result::Result<JsValue, JsValue> {
            let r = match work.take() {
                Some(w) => w(self),
                None => Err(StoreError("transaction body called twice".into())),
            };
            let failed = r.is_err();
            result = Some(r);
            if failed {
                // Throwing is how `transactionSync` is told to roll back.
                Err(JsValue::from_str("rolled back"))
            } else {
                Ok(JsValue::UNDEFINED)
            }
        };
        let called = {
            let closure =
                ScopedClosure::<dyn FnMut() -> std::result::Result<JsValue, JsValue>>::borrow_mut_assert_unwind_safe(
                    &mut body,
                );
            sync.call1(raw, closure.as_ref())
        };
        match (result, called) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(_)) => Ok(v),
            (Some(Ok(_)), Err(e)) => Err(StoreError(format!("commit failed: {e:?}"))),
            (None, Err(e)) => Err(StoreError(format!("transaction failed: {e:?}"))),
            (None, Ok(_)) => Err(StoreError("transaction body never ran".into())),
        }
    }

    fn exec(&self, sql: &str, params: Vec<SqlValue>) -> std::result::Result<(), StoreError> {
        self.0
            .exec(sql, bind(params))
            .map(|_| ())
            .map_err(|e| StoreError(e.to_string()))
    }

    fn query<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> std::result::Result<Vec<T>, StoreError> {
        // `to_array` rather than `one()`: `one()` on zero rows hangs the request.
        self.0
            .exec(sql, bind(params))
            .and_then(|cursor| cursor.to_array::<T>())
            .map_err(|e| StoreError(e.to_string()))
    }
}

/// See the module docs.
#[durable_object]
pub struct RouterDO {
    state: State,
    env: Env,
    /// Set once migrations ran in this instance; memory only, so a fresh instance re-checks.
    migrated: Cell<bool>,
    /// Random per instance, memory only: `GET /sessions` shows it in `X-CCR-Instance`, so
    /// tests (and operators) can tell whether the object was reset, e.g. by a panic.
    instance: String,
    /// Outbox lanes a request is sending now (memory only: a lane is sent by one request at a
    /// time, so a call is never sent twice concurrently).
    busy_lanes: RefCell<HashSet<String>>,
}

/// A lane held by one sender; released when dropped.
struct LaneGuard<'a> {
    lanes: &'a RefCell<HashSet<String>>,
    lane: String,
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut lanes) = self.lanes.try_borrow_mut() {
            lanes.remove(&self.lane);
        }
    }
}

impl RouterDO {
    fn db(&self) -> DoSql {
        let storage = self.state.storage();
        DoSql(storage.sql(), storage)
    }

    fn ensure_schema(&self) -> Result<()> {
        if !self.migrated.get() {
            // No await between the statements: they commit together.
            let from = store::migrate(&self.db())?;
            if from != crate::schema::latest() {
                console_log!(
                    "RouterDO schema migrated from {from} to {}",
                    crate::schema::latest()
                );
            }
            self.migrated.set(true);
        }
        Ok(())
    }

    fn command_ttl_ms(&self) -> i64 {
        queue::ttl_ms(&setting(&self.env, "COMMAND_TTL_SECS"))
    }

    fn config(&self) -> Config {
        let mut cfg = Config::from_settings(
            &setting(&self.env, "ALLOWED_CHAT_IDS"),
            &setting(&self.env, "ALLOWED_USER_IDS"),
        );
        cfg.preview = preview::Settings {
            relay_configured: !setting(&self.env, "RELAY_TOKEN").is_empty(),
            public_key_required: !setting(&self.env, "RELAY_PUBLIC_KEY").is_empty(),
            ttl_ms: preview::ttl_ms(&setting(&self.env, "PREVIEW_TTL_SECS")),
            host_suffix: setting(&self.env, "RELAY_HOST_SUFFIX"),
            ..preview::Settings::default()
        };
        cfg
    }

    /// Ends previews: marks each channel ended for the relay (its link answers 410 from now
    /// on) and tells each connected machine to stop its bridge. A machine that is offline
    /// stops on its own timer; its bridge's polls are refused (410) meanwhile.
    async fn end_previews(&self, stops: &[preview::Stop]) {
        for stop in stops {
            if let Err(e) = crate::relay_binding::mark_preview_ended(&self.env, &stop.channel).await
            {
                console_error!("marking preview {} ended failed: {e}", stop.channel);
            }
            let frame = SocketMessage::PreviewStop {
                channel: stop.channel.clone(),
            };
            self.send_frame(&stop.machine_id, &frame, "preview stop");
        }
    }

    /// Sends `previewStart` again for every open preview of a machine that just connected:
    /// an agent restarted meanwhile serves them again under the same links (one still
    /// serving answers at once). Its answer is handled by `preview::on_result`.
    fn resume_previews(&self, ws: &WebSocket, machine_id: &str) -> Result<()> {
        let relay_token = setting(&self.env, "RELAY_TOKEN");
        if relay_token.is_empty() {
            return Ok(());
        }
        for start in preview::resumable(&self.db(), machine_id, now_ms())? {
            let frame = preview_start(&relay_token, &start);
            if let Err(e) = ws.send_with_str(frame.encode()) {
                console_warn!("resuming a preview on {machine_id} failed: {e}");
            }
        }
        Ok(())
    }

    /// The machine's current socket: the most recently connected one.
    fn machine_socket(&self, machine_id: &str) -> Option<WebSocket> {
        self.state
            .get_websockets_with_tag(&machine_tag(machine_id))
            .into_iter()
            .max_by_key(|ws| {
                ws.deserialize_attachment::<SocketInfo>()
                    .ok()
                    .flatten()
                    .map_or(0, |i| i.connected_at)
            })
    }

    fn online(&self, machine_id: &str) -> bool {
        self.machine_socket(machine_id).is_some()
    }

    /// Sends one frame to the machine's current socket, if it has one. Best effort: a frame
    /// not sent (no socket after all, a refused send, logged as `what`) is left to whatever
    /// ends it otherwise (the alarm times a question out; a bridge stops on its own timer).
    fn send_frame(&self, machine_id: &str, frame: &SocketMessage, what: &str) {
        if let Some(ws) = self.machine_socket(machine_id) {
            if let Err(e) = ws.send_with_str(frame.encode()) {
                console_warn!("{what} to {machine_id} failed: {e}");
            }
        }
    }

    /// Pushes a machine's unacked commands (all, or those due by `due_by`), oldest first.
    fn flush_machine(&self, machine_id: &str, due_by: Option<i64>) -> Result<usize> {
        let Some(ws) = self.machine_socket(machine_id) else {
            return Ok(0);
        };
        let db = self.db();
        let now = now_ms();
        let mut sent = 0;
        // Decisions first: a hook is waiting on each.
        for d in approvals::unacked_for_machine(&db, machine_id, due_by)? {
            let frame = SocketMessage::Decision {
                request_id: d.request_id.clone(),
                decision: d.decision(),
            }
            .encode();
            if let Err(e) = ws.send_with_str(&frame) {
                console_warn!(
                    "push of decision {} to {machine_id} failed: {e}",
                    d.request_id
                );
                return Ok(sent);
            }
            approvals::mark_pushed(&db, &d.request_id, now)?;
            sent += 1;
        }
        for q in queue::unacked_for_machine(&db, machine_id, due_by, FLUSH_BATCH)? {
            if !self.push(&ws, &q, now)? {
                break;
            }
            sent += 1;
        }
        Ok(sent)
    }

    /// Sends one command frame and records the attempt; false when the socket refused it.
    fn push(&self, ws: &WebSocket, q: &Queued, now: i64) -> Result<bool> {
        let expires_at = Some(q.created_at + self.command_ttl_ms());
        let frame = if let Some(project) = &q.project {
            SocketMessage::StartSession {
                command_id: q.command_id.clone(),
                project: project.clone(),
                prompt: (!q.command.is_empty()).then(|| q.command.clone()),
                chat_id: q.chat_id.to_string(),
                expires_at,
            }
        } else if let Some(file) = q.file_ref() {
            SocketMessage::File {
                command_id: q.command_id.clone(),
                session_id: q.session_id.clone(),
                file,
                caption: q.command.clone(),
                chat_id: q.chat_id.to_string(),
                expires_at,
            }
        } else if let Some(keys) = &q.keys {
            SocketMessage::Keys {
                command_id: q.command_id.clone(),
                session_id: q.session_id.clone(),
                keys: keys.split_whitespace().map(str::to_owned).collect(),
                chat_id: q.chat_id.to_string(),
                expires_at,
            }
        } else {
            SocketMessage::Command {
                command_id: q.command_id.clone(),
                session_id: q.session_id.clone(),
                command: q.command.clone(),
                chat_id: q.chat_id.to_string(),
                expires_at,
            }
        }
        .encode();
        if let Err(e) = ws.send_with_str(&frame) {
            console_warn!("push of {} to {} failed: {e}", q.command_id, q.machine_id);
            return Ok(false);
        }
        queue::mark_sent(&self.db(), &q.command_id, now)?;
        Ok(true)
    }

    /// Sets the alarm to the earliest moment anything is due.
    async fn arm_alarm(&self) -> Result<()> {
        let now = now_ms();
        let wake = queue::next_wake(
            &self.db(),
            self.command_ttl_ms(),
            |m| self.online(m),
            now + SWEEP_EVERY_MS,
        )?;
        let wake = match approvals::next_push(&self.db())? {
            Some(at) => wake.min(at),
            None => wake,
        };
        let wake = match conversation::next_peek_deadline(&self.db())? {
            Some(deadline) => wake.min(deadline),
            None => wake,
        };
        let wake = match preview::next_deadline(&self.db())? {
            Some(deadline) => wake.min(deadline),
            None => wake,
        };
        // Never sooner than MIN_ALARM_MS: something due that cannot go now (an outbox lane
        // another request is sending, a socket refusing a push) must not spin the alarm.
        let offset = (wake - now).max(MIN_ALARM_MS) as u64;
        self.state
            .storage()
            .set_alarm(std::time::Duration::from_millis(offset))
            .await
    }

    /// Calls the Bot API, waiting out 429s up to [`MAX_RETRY_WAIT_SECS`] in total.
    async fn bot(&self, method: &str, params: &Value) -> ApiOutcome {
        // The URL holds the token: it is never logged (nor stored: the outbox keeps the
        // reason of a failed call).
        let token = setting(&self.env, "TELEGRAM_BOT_TOKEN");
        let url = match telegram::api_url(&setting(&self.env, "TELEGRAM_API_BASE"), &token, method)
        {
            Ok(url) => url,
            Err(outcome) => return outcome,
        };
        let mut waited = 0;
        loop {
            let outcome = match http::post_json(&url, params).await {
                Ok((status, body)) => telegram::read_answer(status, &body),
                Err(e) => ApiOutcome::Failed(telegram::unreachable(&e.to_string(), &token)),
            };
            match telegram::retry(outcome, waited, MAX_RETRY_WAIT_SECS) {
                Retry::Wait(secs) => {
                    waited += secs;
                    Delay::from(std::time::Duration::from_secs(secs)).await;
                }
                Retry::Done(outcome) => return outcome,
            }
        }
    }

    fn lock_lane(&self, lane: &str) -> Option<LaneGuard<'_>> {
        let mut lanes = self.busy_lanes.try_borrow_mut().ok()?;
        lanes.insert(lane.to_owned()).then(|| LaneGuard {
            lanes: &self.busy_lanes,
            lane: lane.to_owned(),
        })
    }

    /// Sends an outbox lane's calls in order until it is empty or blocked (`outbox`); `eager`
    /// when a new call just arrived for it. False when another request is sending the lane
    /// (it goes on to the end, so the new call is sent by it).
    async fn send_lane(&self, lane: &str, eager: bool) -> Result<bool> {
        let Some(_held) = self.lock_lane(lane) else {
            return Ok(false);
        };
        // A message refused because of its topic is due again at once, without it; a few
        // of those go on in this pass, the rest on the alarm.
        let mut again_now = 3;
        while let Some(entry) = outbox::head(&self.db(), lane, now_ms(), eager)? {
            let outcome = self.bot(&entry.method, &entry.params()).await;
            let recorded = outbox::record(&self.db(), &entry, &outcome, now_ms())?;
            match &recorded {
                outbox::Recorded::Sent { .. } => {}
                outbox::Recorded::Retry { at } => console_warn!(
                    "Telegram {} in {lane} not sent yet ({}); retry in {} ms",
                    entry.method,
                    outcome.why(),
                    at - now_ms()
                ),
                outbox::Recorded::Dropped { why, count } => console_warn!(
                    "Telegram {} in {lane} dropped ({count} call(s)): {why}",
                    entry.method
                ),
            }
            if let outbox::Recorded::Retry { at } = recorded {
                if at <= now_ms() && again_now > 0 {
                    again_now -= 1;
                    continue;
                }
            }
            if !recorded.lane_moves_on() {
                break;
            }
        }
        Ok(true)
    }

    /// Sends the lanes of calls just stored, then re-arms the alarm for what is left. Storage
    /// already holds them: a failure here is logged and left to the alarm.
    async fn send_stored(&self, calls: &[BotCall]) {
        let mut lanes: Vec<String> = calls.iter().map(|c| outbox::lane_of(c).0).collect();
        lanes.dedup();
        for lane in lanes {
            if let Err(e) = self.send_lane(&lane, true).await {
                console_error!("sending the outbox lane {lane} failed: {e}");
            }
        }
        if let Err(e) = self.arm_alarm().await {
            console_error!("arming the alarm failed: {e}");
        }
    }

    /// Stores calls about `session` in the outbox (they go to its topic) and sends them.
    async fn tell_about(&self, session: &str, calls: &[BotCall]) -> Result<()> {
        for dropped in outbox::add_for_session(&self.db(), calls, session, now_ms())? {
            console_warn!("{dropped}");
        }
        self.send_stored(calls).await;
        Ok(())
    }

    /// Stores chat answers and notices in the outbox and sends them.
    async fn tell(&self, calls: &[BotCall]) -> Result<()> {
        for dropped in outbox::add_or_drop(&self.db(), calls, now_ms())? {
            console_warn!("{dropped}");
        }
        self.send_stored(calls).await;
        Ok(())
    }

    async fn handle_outbox(&self, principal: &Principal) -> Reply {
        if *principal != Principal::Admin {
            return Err(ApiError::new(403, "only the admin key may read the outbox"));
        }
        json(200, &outbox::status(&self.db())?)
    }

    async fn handle_list(&self, principal: &Principal) -> Reply {
        let scope = match principal {
            Principal::Admin => None,
            Principal::Machine(m) => Some(m.as_str()),
        };
        let listing = store::session_listing(&self.db(), scope, |m| self.online(m))?;
        let mut resp = json(200, &listing)?;
        resp.headers_mut()
            .set(wire::header::INSTANCE, &self.instance)?;
        Ok(resp)
    }

    async fn handle_register(&self, req: &mut Request, principal: &Principal) -> Reply {
        let body: RegisterSession = parse_json(req).await?;
        validate::session_id(&body.session_id)
            .and_then(|_| validate::machine_id(&body.machine_id))
            .and_then(|_| body.label.as_deref().map_or(Ok(()), validate::label))
            .map_err(|e| ApiError::new(400, e))?;
        if !principal.may_act_for(&body.machine_id) {
            return Err(ApiError::new(
                403,
                format!(
                    "this key may not register sessions for machine {}",
                    body.machine_id
                ),
            ));
        }
        let db = self.db();
        if let Some(existing) = store::get_session(&db, &body.session_id)? {
            if !principal.may_act_for(&existing.machine_id) {
                return Err(ApiError::new(
                    403,
                    "this session belongs to another machine",
                ));
            }
        }
        if let Some(why) = store::no_room_for_session(&db, &body.session_id, &body.machine_id)? {
            return Err(ApiError::new(409, why));
        }
        // The session and its topic's calls (created, reopened, renamed) commit together.
        let now = now_ms();
        let chat = self.config().allowed_chats.first().copied();
        let calls = db.transaction(|db| {
            store::upsert_session(
                db,
                &body.session_id,
                &body.machine_id,
                body.label.as_deref(),
                now,
            )?;
            let (Some(chat), Some(s)) = (chat, store::get_session(db, &body.session_id)?) else {
                return Ok(vec![]);
            };
            let name = topics::name(s.label.as_deref(), &s.machine_id);
            let calls = topics::on_register(db, chat, &s.session_id, &name, now)?;
            for dropped in outbox::add_for_session(db, &calls, &s.session_id, now)? {
                console_warn!("{dropped}");
            }
            Ok(calls)
        })?;
        if !calls.is_empty() {
            // Sent by the alarm, not here: the hook that registers has a deadline, and
            // Telegram's 429s may be waited out for seconds. The session's next notification
            // sends its lane at once anyway, the topic call first.
            self.arm_alarm().await?;
        }
        json(200, &OkBody::default())
    }

    async fn handle_unregister(&self, req: &mut Request, principal: &Principal) -> Reply {
        let body: UnregisterSession = parse_json(req).await?;
        validate::session_id(&body.session_id).map_err(|e| ApiError::new(400, e))?;
        let db = self.db();
        match store::get_session(&db, &body.session_id)? {
            None => Err(ApiError::new(404, "no such session")),
            Some(s) if !principal.may_act_for(&s.machine_id) => Err(ApiError::new(
                403,
                "this session belongs to another machine",
            )),
            Some(_) => {
                // The session goes, its topics close and its previews end, together.
                let now = now_ms();
                let (calls, stops) = db.transaction(|db| {
                    let calls = topics::on_unregister(db, &body.session_id, now)?;
                    for dropped in outbox::add_for_session(db, &calls, &body.session_id, now)? {
                        console_warn!("{dropped}");
                    }
                    let stops = preview::end_session(db, &body.session_id, now)?;
                    store::delete_session(db, &body.session_id)?;
                    Ok((calls, stops))
                })?;
                if !calls.is_empty() {
                    // Sent by the alarm, like a registration's (the SessionEnd hook has a
                    // deadline).
                    self.arm_alarm().await?;
                }
                self.end_previews(&stops).await;
                json(200, &OkBody::default())
            }
        }
    }

    async fn handle_notify(&self, req: &mut Request, principal: &Principal) -> Reply {
        let body: SendNotification = parse_json(req).await?;
        let plan = notify::prepare(&self.db(), &self.config(), principal, &body, new_token)?;
        notify::store(&self.db(), &plan, now_ms())?;
        let lane = plan.lane();
        let deadline = now_ms() + LANE_WAIT_MS;
        // Send the chat's lane now; when another request is sending it, that one sends these
        // parts too: wait for it (bounded), then try once more ourselves.
        while !self.send_lane(&lane, true).await?
            && now_ms() < deadline
            && outbox::group_state(&self.db(), &plan.token)? == GroupState::Pending
        {
            Delay::from(std::time::Duration::from_millis(50)).await;
        }
        self.arm_alarm().await?;
        match notify::answer(&self.db(), &plan)? {
            Answer::Sent(sent) => json(200, &sent),
            Answer::Queued(queued) => {
                console_log!(
                    "notification {} queued: Telegram has not taken it yet",
                    queued.id
                );
                json(202, &queued)
            }
        }
    }

    async fn handle_approval(&self, req: &mut Request, principal: &Principal) -> Reply {
        let body: OpenApproval = parse_json(req).await?;
        let chats = self.config().allowed_chats;
        if let Some(lane) = approvals::open(&self.db(), &chats, principal, &body, now_ms())? {
            self.send_lane(&lane, true).await?;
            self.arm_alarm().await?;
        }
        json(
            200,
            &ApprovalOpened {
                ok: true,
                request_id: body.request_id,
            },
        )
    }

    /// `openApproval` on a machine's socket: `POST /approvals` for the socket's own machine,
    /// answered on the socket (`approvalOpened`) as soon as the request is stored, then the
    /// card is sent. A refusal carries the status the route would have answered.
    async fn open_approval(
        &self,
        ws: &WebSocket,
        machine: &str,
        body: &OpenApproval,
    ) -> Result<()> {
        let chats = self.config().allowed_chats;
        let principal = Principal::Machine(machine.to_owned());
        let (lane, status, error) =
            match approvals::open(&self.db(), &chats, &principal, body, now_ms()) {
                Ok(lane) => (lane, None, None),
                Err(ApiError::Answer {
                    status, message, ..
                }) => (None, Some(status), Some(message)),
                Err(e) => {
                    console_warn!(
                        "machine {machine}: storing approval {}: {e:?}",
                        body.request_id
                    );
                    let why = "the Worker could not store the request".to_owned();
                    (None, Some(500), Some(why))
                }
            };
        let answer = SocketMessage::ApprovalOpened {
            request_id: body.request_id.clone(),
            status,
            error,
        };
        if let Err(e) = ws.send_with_str(answer.encode()) {
            // The hook gives up waiting for the answer and opens its card over HTTP (a no-op
            // when this one was stored).
            console_warn!(
                "machine {machine}: answering approval {}: {e}",
                body.request_id
            );
        }
        if let Some(lane) = lane {
            self.send_lane(&lane, true).await?;
            self.arm_alarm().await?;
        }
        Ok(())
    }

    async fn handle_webhook(&self, req: &mut Request) -> Reply {
        let update: Update = parse_json(req).await?;
        let mut cfg = self.config();
        cfg.preview.origin = req
            .headers()
            .get(wire::header::PUBLIC_ORIGIN)?
            .unwrap_or_default();
        cfg.preview.fresh_channel = new_channel()?;
        let outcome =
            router::handle_update(&self.db(), &cfg, &update, now_ms(), &|m| self.online(m))?;
        console_log!("{}", outcome.log);
        if outcome.duplicate {
            return json(200, &serde_json::json!({"ok": true, "duplicate": true}));
        }
        let now = now_ms();
        for q in &outcome.queued {
            if let Some(ws) = self.machine_socket(&q.machine_id) {
                self.push(&ws, q, now)?;
            }
        }
        for machine in &outcome.decided {
            self.flush_machine(machine, Some(now))?;
        }
        if !outcome.decided.is_empty() {
            // A hook is waiting on each decision: let the frames out now. The object holds
            // outgoing messages until the writes before them are durable, and the rest of
            // this request (the card's edit and the toast, sent to the Bot API) keeps
            // writing, so without this they left only with the end of the request.
            self.state.storage().sync().await?;
            self.arm_alarm().await?;
        }
        // Peeks and preview starts unanswered (not sent) time out on the alarm.
        for ask in &outcome.peeks {
            let frame = SocketMessage::PeekRequest {
                request_id: ask.request_id.clone(),
                session_id: ask.session_id.clone(),
            };
            self.send_frame(&ask.machine_id, &frame, &format!("peek {}", ask.request_id));
        }
        let relay_token = setting(&self.env, "RELAY_TOKEN");
        for start in &outcome.preview_starts {
            let frame = preview_start(&relay_token, start);
            self.send_frame(
                &start.machine_id,
                &frame,
                &format!("preview {}", start.channel),
            );
        }
        if !outcome.peeks.is_empty() || !outcome.preview_starts.is_empty() {
            self.arm_alarm().await?;
        }
        self.end_previews(&outcome.preview_stops).await;
        if !outcome.queued.is_empty() || !outcome.calls.is_empty() || !outcome.decided.is_empty() {
            // The answers are stored with the update; sending them cannot fail the update.
            self.send_stored(&outcome.calls).await;
        }
        json(200, &OkBody::default())
    }

    async fn handle_socket(&self, req: &Request, principal: &Principal) -> Reply {
        let machine_id = http::query_param(req, wire::query::MACHINE_ID)?.unwrap_or_default();
        if validate::machine_id(&machine_id).is_err() || !principal.may_act_for(&machine_id) {
            return Err(ApiError::new(
                403,
                "this key may not connect as that machine",
            ));
        }
        let tag = machine_tag(&machine_id);
        let previous = self.state.get_websockets_with_tag(&tag);
        let pair = WebSocketPair::new()?;
        self.state.accept_websocket_with_tags(&pair.server, &[&tag]);
        pair.server.serialize_attachment(SocketInfo {
            machine_id: machine_id.clone(),
            connected_at: now_ms(),
        })?;
        for old in previous {
            let _ = old.close(
                Some(wire::close::REPLACED),
                Some("replaced by a newer connection for this machine"),
            );
        }
        let flushed = self.flush_machine(&machine_id, None)?;
        console_log!("machine {machine_id} connected; {flushed} queued command(s) sent");
        self.resume_previews(&pair.server, &machine_id)?;
        self.arm_alarm().await?;
        let mut resp = Response::from_websocket(pair.client)?;
        if req
            .headers()
            .get(wire::header::WEBSOCKET_PROTOCOL)?
            .is_some()
        {
            resp.headers_mut()
                .set(wire::header::WEBSOCKET_PROTOCOL, wire::SUBPROTOCOL)?;
        }
        Ok(resp)
    }

    async fn on_frame(&self, ws: &WebSocket, text: &str) -> Result<()> {
        let Some(info) = ws.deserialize_attachment::<SocketInfo>()? else {
            let _ = ws.close(Some(1008), Some("unknown socket"));
            return Ok(());
        };
        let machine = info.machine_id;
        match SocketMessage::decode(text) {
            Ok(SocketMessage::Ack { command_id }) => {
                let now = now_ms();
                // The ack and its reaction in the outbox commit together.
                let (acked, reaction) = self.db().transaction(|db| {
                    let acked = queue::ack(db, &command_id, &machine, now)?;
                    let reaction: Vec<BotCall> =
                        acked.iter().filter_map(router::ack_reaction).collect();
                    for dropped in outbox::add_or_drop(db, &reaction, now)? {
                        console_warn!("{dropped}");
                    }
                    Ok((acked, reaction))
                })?;
                if acked.is_some() {
                    // The next command for this machine need not wait for the alarm.
                    self.flush_machine(&machine, Some(now_ms()))?;
                    self.send_stored(&reaction).await;
                }
            }
            Ok(SocketMessage::CommandResult {
                command_id,
                success,
                error,
            }) => {
                let db = self.db();
                let done = queue::complete(
                    &db,
                    &command_id,
                    &machine,
                    success,
                    error.as_deref(),
                    now_ms(),
                )?;
                if let (Some(q), false) = (done, success) {
                    let label = store::get_session(&db, &q.session_id)?
                        .and_then(|s| s.label)
                        .unwrap_or_else(|| machine.clone());
                    let notice = router::command_failed(&q, &label, &machine, error.as_deref());
                    self.tell_about(&q.session_id, &[notice]).await?;
                }
            }
            Ok(SocketMessage::Projects { projects }) => {
                let kept = launch::record_projects(&self.db(), &machine, &projects, now_ms())?;
                console_log!("machine {machine} announced {} project(s)", kept.len());
            }
            Ok(SocketMessage::StartResult {
                command_id,
                success,
                window,
                error,
            }) => {
                let done = queue::complete(
                    &self.db(),
                    &command_id,
                    &machine,
                    success,
                    error.as_deref(),
                    now_ms(),
                )?;
                if let Some(q) = done {
                    let notice =
                        launch::start_result(&q, success, window.as_deref(), error.as_deref());
                    self.tell(&[notice]).await?;
                }
            }
            Ok(SocketMessage::SessionGone { session_id, reason }) => {
                // The chat already has the reason from the failed command's result; this only
                // stops further replies from being queued for a pane that is gone.
                let report =
                    store::mark_session_gone(&self.db(), &session_id, &machine, &reason, now_ms())?;
                console_log!(
                    "machine {machine} reports the pane of session {session_id} gone: {report:?}"
                );
            }
            Ok(SocketMessage::DecisionAck { request_id }) => {
                approvals::ack(&self.db(), &request_id, &machine)?;
            }
            Ok(SocketMessage::PeekResult {
                request_id,
                screen,
                error,
            }) => {
                let answer = conversation::peek_answered(
                    &self.db(),
                    &request_id,
                    &machine,
                    screen.as_deref(),
                    error.as_deref(),
                )?;
                match answer {
                    Some(call) => self.tell(&[call]).await?,
                    None => console_log!("machine {machine}: late or unknown peek {request_id}"),
                }
            }
            Ok(SocketMessage::PreviewResult { channel, error }) => {
                let public_key_required = !setting(&self.env, "RELAY_PUBLIC_KEY").is_empty();
                let now = now_ms();
                let answer = self.db().transaction(|db| {
                    preview::on_result(
                        db,
                        &channel,
                        &machine,
                        error.as_deref(),
                        public_key_required,
                        now,
                    )
                })?;
                match answer {
                    preview::Outcome::Tell(call, stop) => {
                        if let Some(stop) = stop {
                            self.end_previews(&[stop]).await;
                        }
                        self.tell(&[call]).await?;
                    }
                    preview::Outcome::Serving => {
                        console_log!("machine {machine} serves preview {channel} again");
                    }
                    preview::Outcome::Unknown => {
                        console_log!("machine {machine}: late or unknown preview {channel}");
                        // A preview that ended meanwhile (stopped, timed out) must not serve.
                        let _ = ws.send_with_str(SocketMessage::PreviewStop { channel }.encode());
                    }
                }
            }
            Ok(SocketMessage::OpenApproval(body)) => {
                self.open_approval(ws, &machine, &body).await?
            }
            Ok(SocketMessage::Ping) => {
                // Only reached when the frame differs from the exact auto-response bytes.
                let _ = ws.send_with_str(PONG_FRAME);
            }
            Ok(other) => console_log!("machine {machine} sent {}; ignored", other.type_name()),
            Err(e) if e.is_unknown_type() => console_log!("machine {machine}: {e}; ignored"),
            Err(e) => console_warn!("machine {machine}: {e}; ignored"),
        }
        Ok(())
    }
}

/// The `previewStart` frame of `start`, with the channel's bridge token derived from
/// `RELAY_TOKEN`.
fn preview_start(relay_token: &str, start: &preview::Start) -> SocketMessage {
    SocketMessage::PreviewStart {
        channel: start.channel.clone(),
        session_id: start.session_id.clone(),
        port: start.port,
        token: preview::token(relay_token, &start.channel),
        expires_at: start.expires_at,
    }
}

/// A fresh preview channel name (`pv-` and 120 random bits).
fn new_channel() -> std::result::Result<String, ApiError> {
    let mut bytes = [0u8; 15];
    getrandom::fill(&mut bytes).map_err(|e| Error::RustError(format!("randomness: {e}")))?;
    Ok(preview::channel_name(&bytes))
}

/// A 12-character token for `/cmd` and callback data (60 bits of randomness).
fn new_token() -> std::result::Result<String, ApiError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| Error::RustError(format!("randomness: {e}")))?;
    Ok(notify::token_from(&bytes))
}

impl RouterDO {
    /// One request from the Worker, which has authenticated it.
    async fn serve(&self, mut req: Request) -> Reply {
        self.ensure_schema()?;
        let principal = req
            .headers()
            .get(wire::header::PRINCIPAL)?
            .as_deref()
            .and_then(Principal::decode)
            .ok_or_else(|| ApiError::new(401, "request reached the router without credentials"))?;
        let method = req.method().to_string();
        match route(&method, &req.path()) {
            Route::ListSessions => self.handle_list(&principal).await,
            Route::RegisterSession => self.handle_register(&mut req, &principal).await,
            Route::UnregisterSession => self.handle_unregister(&mut req, &principal).await,
            Route::SendNotification => self.handle_notify(&mut req, &principal).await,
            Route::Webhook(_) if principal == Principal::Admin => {
                self.handle_webhook(&mut req).await
            }
            Route::MachineSocket => self.handle_socket(&req, &principal).await,
            Route::Outbox => self.handle_outbox(&principal).await,
            Route::OpenApproval => self.handle_approval(&mut req, &principal).await,
            Route::CloseApprovals => {
                let body: CloseApprovals = parse_json(&mut req).await?;
                let calls = approvals::close_all(&self.db(), &principal, &body, now_ms())?;
                self.tell(&calls).await?;
                json(200, &OkBody::default())
            }
            // Whether this caller may fetch the file; the Worker then streams it from Telegram.
            Route::File(file_id) => {
                files::may_fetch(&self.db(), &principal, &file_id)?;
                json(200, &OkBody::default())
            }
            _ => Err(ApiError::new(404, "no such router operation")),
        }
    }
}

impl DurableObject for RouterDO {
    fn new(state: State, env: Env) -> Self {
        // Keepalive pings are answered without waking the object.
        match WebSocketRequestResponsePair::new(PING_FRAME, PONG_FRAME) {
            Ok(pair) => state.set_websocket_auto_response(&pair),
            Err(e) => console_error!("cannot set the ping auto-response: {e:?}"),
        }
        Self {
            state,
            env,
            migrated: Cell::new(false),
            instance: new_token().unwrap_or_default(),
            busy_lanes: RefCell::new(HashSet::new()),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        http::finish(self.serve(req).await)
    }

    async fn alarm(&self) -> Result<Response> {
        self.ensure_schema()?;
        let now = now_ms();
        let db = self.db();
        // Expiry and its chat notices in the outbox commit together.
        let ttl = self.command_ttl_ms();
        db.transaction(|db| {
            let dead = queue::expire(db, now, ttl)?;
            for q in &dead {
                // A start request (`/new`) has no session yet: its notice goes to the chat.
                let notice = match q.project {
                    Some(_) => launch::start_not_delivered(q),
                    None => router::not_delivered(q),
                };
                for dropped in outbox::add_for_session(db, &[notice], &q.session_id, now)? {
                    console_warn!("{dropped}");
                }
            }
            Ok(())
        })?;
        // Timed-out `/peek`s and their chat answers in the outbox commit together.
        let late_peeks = db.transaction(|db| {
            let calls = conversation::expire_peeks(db, now)?;
            for dropped in outbox::add_or_drop(db, &calls, now)? {
                console_warn!("{dropped}");
            }
            Ok(calls)
        })?;
        if !late_peeks.is_empty() {
            self.send_stored(&late_peeks).await;
        }
        // Previews whose time is up (or whose machine never answered) end; the chat is told.
        let (ended, notices) = db.transaction(|db| {
            let (stops, calls) = preview::expire(db, now)?;
            for dropped in outbox::add_or_drop(db, &calls, now)? {
                console_warn!("{dropped}");
            }
            Ok((stops, calls))
        })?;
        self.end_previews(&ended).await;
        if !notices.is_empty() {
            self.send_stored(&notices).await;
        }
        for line in outbox::expire(&db, now)? {
            console_warn!("{line}");
        }
        // Retry due sends on every connected machine.
        let mut machines: Vec<String> = self
            .state
            .get_websockets()
            .iter()
            .filter_map(|ws| ws.deserialize_attachment::<SocketInfo>().ok().flatten())
            .map(|i| i.machine_id)
            .collect();
        machines.sort();
        machines.dedup();
        for m in machines {
            self.flush_machine(&m, Some(now))?;
        }
        // Retry the outbox's due lanes (a lane another request is sending is skipped).
        for lane in outbox::due_lanes(&db, now)? {
            self.send_lane(&lane, false).await?;
        }
        queue::prune(&db, now)?;
        outbox::prune(&db, now)?;
        approvals::prune(&db, now)?;
        launch::prune(&db, now)?;
        topics::prune(&db, now)?;
        preview::prune(&db, now)?;
        self.arm_alarm().await?;
        Response::ok("")
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        self.ensure_schema()?;
        match message {
            WebSocketIncomingMessage::String(text) if text.len() > MAX_FRAME_BYTES => {
                let _ = ws.close(Some(wire::close::TOO_BIG), Some("frame over 64 KiB"));
            }
            WebSocketIncomingMessage::String(text) => self.on_frame(&ws, &text).await?,
            WebSocketIncomingMessage::Binary(bytes) => {
                console_warn!(
                    "binary frame of {} bytes ignored: the protocol is JSON text",
                    bytes.len()
                );
            }
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        // Reciprocate; 1005/1006 are not sendable codes, answer those with 1000.
        let code = u16::try_from(code)
            .ok()
            .filter(|c| (1000..5000).contains(c) && *c != 1005 && *c != 1006)
            .unwrap_or(1000);
        let _ = ws.close(Some(code), Some("closing"));
        Ok(())
    }

    async fn websocket_error(&self, _ws: WebSocket, err: Error) -> Result<()> {
        console_warn!("machine socket error: {err}");
        Ok(())
    }
}
