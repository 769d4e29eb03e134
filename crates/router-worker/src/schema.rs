//! The RouterDO's SQLite schema as numbered migrations.
//!
//! `schema_version` holds one row with the number of the last migration applied. A new
//! schema change is a new entry at the end of [`MIGRATIONS`]; existing entries never change,
//! so every stored object moves forward through the same steps.

/// Migration `n` (1-based) is `MIGRATIONS[n - 1]`: statements run in order, in one go.
pub const MIGRATIONS: &[&[&str]] = &[&[
    // Session → machine. Retention: removed by unregister, or after 30 days without activity.
    "CREATE TABLE IF NOT EXISTS sessions (
        session_id    TEXT PRIMARY KEY,
        machine_id    TEXT NOT NULL,
        label         TEXT,
        created_at    INTEGER NOT NULL,
        last_activity INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS sessions_by_machine ON sessions (machine_id)",
    "CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (last_activity)",
    // Telegram message → session, for reply routing; `token` serves /cmd and buttons.
    // Retention: 7 days, and with their session.
    "CREATE TABLE IF NOT EXISTS messages (
        chat_id    INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        token      TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    )",
    "CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id)",
    "CREATE INDEX IF NOT EXISTS messages_by_token ON messages (token)",
    "CREATE INDEX IF NOT EXISTS messages_by_age ON messages (created_at)",
    // Commands on their way to a machine: pending → sent → acked → done|failed, or dead
    // after 24 h undelivered. Retention: finished rows 7 days.
    "CREATE TABLE IF NOT EXISTS command_queue (
        command_id        TEXT PRIMARY KEY,
        session_id        TEXT NOT NULL,
        machine_id        TEXT NOT NULL,
        chat_id           INTEGER NOT NULL,
        source_message_id INTEGER,
        command           TEXT NOT NULL,
        state             TEXT NOT NULL
            CHECK (state IN ('pending', 'sent', 'acked', 'done', 'failed', 'dead')),
        attempts          INTEGER NOT NULL DEFAULT 0,
        next_attempt_at   INTEGER NOT NULL,
        last_error        TEXT,
        created_at        INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS queue_by_machine ON command_queue (machine_id, state, created_at)",
    "CREATE INDEX IF NOT EXISTS queue_by_due ON command_queue (state, next_attempt_at)",
    // Telegram update_id dedup. Retention: 7 days (Telegram retries for at most 24 h).
    "CREATE TABLE IF NOT EXISTS seen_updates (
        update_id INTEGER PRIMARY KEY,
        seen_at   INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS seen_updates_by_age ON seen_updates (seen_at)",
], &[
    // The session's machine reported its pane gone (`SessionGone`): replies are refused
    // until the session registers again, which clears both.
    "ALTER TABLE sessions ADD COLUMN gone_at INTEGER",
    "ALTER TABLE sessions ADD COLUMN gone_reason TEXT",
],
// The outbox: every Bot API call the router makes, stored before it is sent and retried
// until Telegram answers (`outbox.rs`). `lane` keeps one chat's calls in order; a
// notification's parts share `group_id` and record `map_session`/`map_token` as the reply
// mapping once sent. Retention: pending until sent, refused for good, or 24 h old; sent
// and dropped rows 1 day. `counters` holds the running totals `GET /outbox` shows.
&[
    "CREATE TABLE IF NOT EXISTS outbox (
        id              INTEGER PRIMARY KEY,
        lane            TEXT NOT NULL,
        chat_id         INTEGER,
        method          TEXT NOT NULL,
        params          TEXT NOT NULL,
        group_id        TEXT,
        part            INTEGER NOT NULL DEFAULT 0,
        parts           INTEGER NOT NULL DEFAULT 1,
        map_session     TEXT,
        map_token       TEXT,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dropped')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        held            INTEGER NOT NULL DEFAULT 0,
        message_id      INTEGER,
        last_error      TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS outbox_by_lane ON outbox (state, lane, id)",
    "CREATE INDEX IF NOT EXISTS outbox_by_group ON outbox (group_id)",
    "CREATE INDEX IF NOT EXISTS outbox_by_age ON outbox (state, updated_at)",
    "CREATE TABLE IF NOT EXISTS counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )",
], &[
    // Permission requests decided from the chat (`approvals.rs`): open → decided (pushed to
    // the machine until acked) | closed. Settled rows are kept 7 days for late taps.
    "CREATE TABLE IF NOT EXISTS approvals (
        request_id   TEXT PRIMARY KEY,
        session_id   TEXT NOT NULL,
        machine_id   TEXT NOT NULL,
        chat_id      INTEGER NOT NULL,
        tool_name    TEXT NOT NULL,
        tool_input   TEXT NOT NULL DEFAULT 'null',
        answers      TEXT NOT NULL DEFAULT '{}',
        picks        TEXT NOT NULL DEFAULT '{}',
        suggestions  TEXT NOT NULL,
        card         TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('open', 'decided', 'closed')),
        outcome      TEXT,
        decision     TEXT,
        acked        INTEGER NOT NULL DEFAULT 0,
        next_push_at INTEGER,
        decided_at   INTEGER,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS approvals_by_push ON approvals (state, acked, next_push_at)",
], &[
    // Named keys (`/esc`, `/keys`): space-separated names from `wire::keys::NAMES`; NULL for
    // text. A row with keys is pushed as a `keys` frame instead of a `command` frame.
    "ALTER TABLE command_queue ADD COLUMN keys TEXT",
], &[
    // `/peek` questions waiting for their machine's answer. Retention: until answered, or
    // until `deadline` (the alarm tells the chat and deletes the row).
    "CREATE TABLE IF NOT EXISTS peeks (
        request_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        machine_id TEXT NOT NULL,
        chat_id    INTEGER NOT NULL,
        reply_to   INTEGER NOT NULL,
        deadline   INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS peeks_by_deadline ON peeks (deadline)",
], &[
    // `/new`: each machine's project names as its agent last announced them (`projects`
    // frame; names only, never paths). Kept while the machine is away so `/new` can queue
    // for it; replaced on each connection.
    "CREATE TABLE IF NOT EXISTS machine_projects (
        machine_id TEXT PRIMARY KEY,
        projects   TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    )",
    // A start request (`startSession` frame) is a queued command with `project` set; its
    // `command` is the first prompt and its `session_id` is empty (no session yet).
    "ALTER TABLE command_queue ADD COLUMN project TEXT",
    // The choices a `/new` answer offered as buttons (machine × project, and the prompt),
    // so a button carries only `new:<launch_id>:<n>`. Retention: 1 day.
    "CREATE TABLE IF NOT EXISTS launches (
        launch_id  INTEGER PRIMARY KEY,
        chat_id    INTEGER NOT NULL,
        prompt     TEXT,
        choices    TEXT NOT NULL,
        created_at INTEGER NOT NULL
    )",
], &[
    // A topic per session (`topics.rs`), in chats that have topics. `thread_id` is NULL
    // while `createForumTopic` waits in the outbox; `state` 'none' when the chat refused it
    // (the session's messages go to the chat as they do without topics). Rows outlive their
    // session (unregister closes the topic, a resume reopens it); retention: 30 days
    // without a change.
    "CREATE TABLE IF NOT EXISTS topics (
        chat_id    INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        thread_id  INTEGER,
        name       TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('open', 'closed', 'none')),
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (chat_id, session_id)
    )",
    "CREATE INDEX IF NOT EXISTS topics_by_thread ON topics (chat_id, thread_id)",
    // Chats that refused `createForumTopic` (no topics): not asked again for a day, or
    // until an update shows topics in them.
    "CREATE TABLE IF NOT EXISTS topic_chats (
        chat_id    INTEGER PRIMARY KEY,
        refused_at INTEGER NOT NULL
    )",
    // The session whose topic a call goes to: its `message_thread_id` is filled in when the
    // call is sent, so a call stored before its topic exists still lands in it.
    "ALTER TABLE outbox ADD COLUMN topic_session TEXT",
], &[
    // A file the chat sent (photo, document, voice note): `file` is the `FileRef` JSON the
    // `file` frame carries (the caption is `command`), `file_id` is Telegram's id, indexed
    // because `GET /files/{file_id}` serves only files of a machine's live commands.
    "ALTER TABLE command_queue ADD COLUMN file TEXT",
    "ALTER TABLE command_queue ADD COLUMN file_id TEXT",
    "CREATE INDEX IF NOT EXISTS queue_by_file ON command_queue (file_id)",
], &[
    // `/preview PORT`: a session machine's loopback port served through the relay on channel
    // `channel`. `started_at` is set when the machine says it serves; `ended_at` on
    // `/preview stop`, the session's end, its expiry or a failed start. Retention: ended rows
    // for 7 days (`preview::prune`).
    "CREATE TABLE IF NOT EXISTS previews (
        channel    TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        machine_id TEXT NOT NULL,
        port       INTEGER NOT NULL,
        chat_id    INTEGER NOT NULL,
        reply_to   INTEGER NOT NULL,
        url        TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        started_at INTEGER,
        ended_at   INTEGER,
        end_reason TEXT
    )",
    "CREATE INDEX IF NOT EXISTS previews_open ON previews (ended_at, expires_at)",
]];

/// Creates the version table itself; safe to run every time.
pub const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
)";

/// Reads the current version (no row = 0).
pub const READ_VERSION: &str = "SELECT version FROM schema_version WHERE id = 1";

/// Records a version.
pub const WRITE_VERSION: &str = "INSERT INTO schema_version (id, version) VALUES (1, ?)
    ON CONFLICT (id) DO UPDATE SET version = excluded.version";

/// The version a fully migrated database has.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// The migrations still to run on a database at `current`, with the version each leads to.
pub fn pending(current: i64) -> impl Iterator<Item = (i64, &'static [&'static str])> {
    MIGRATIONS
        .iter()
        .enumerate()
        .map(|(i, stmts)| (i as i64 + 1, *stmts))
        .filter(move |(v, _)| *v > current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_counts_from_current() {
        assert_eq!(pending(0).count(), MIGRATIONS.len());
        assert_eq!(pending(latest()).count(), 0);
        assert_eq!(pending(0).last().map(|(v, _)| v), Some(latest()));
    }
}
