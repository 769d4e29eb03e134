//! The inbox: why a command is typed exactly once although the Worker delivers it at least
//! once.
//!
//! A command moves `stored → acked → executing → typed → done`. It is acked only after it is
//! stored; a command id seen before is acked again and nothing else. Only the `stored|acked →
//! executing` transition (one UPDATE that must change one row) lets a command be typed, so no
//! id is typed twice, even across restarts. `typed` means the text is in the pane and only
//! Enter is missing: a crash there is finished at start-up by pressing Enter. A command found
//! `executing` at start-up may have been typed in part: it is finished as failed rather than
//! typed again.
//!
//! Exactly once has no expiry date. Every command carries the moment the Worker stops
//! sending it (`expires_at`, or received + [`COMMAND_TTL_MS`] from a Worker too old to say):
//! - one that arrives at or after its expiry is refused — stored straight as `done` with a
//!   failed result (the Worker has already reported it dead, or will), acked, never typed;
//! - a finished row is kept until its expiry + [`RETENTION_MARGIN_MS`], and never before its
//!   result was sent. Until the expiry a redelivery finds the row (a duplicate); after it a
//!   redelivery is refused anyway, so a pruned id is never typed again either.

use rusqlite::{params, OptionalExtension};

use ccr_protocol::socket::FileRef;
use ccr_protocol::COMMAND_TTL_MS;

use crate::db::Db;

/// A finished row is deleted this long after its command's expiry (ms), once its result was
/// sent. The expiry is on the Worker's clock and the Worker stops resending only when its
/// alarm runs; the hour covers a late alarm, a frame still in flight and a clock that differs
/// from the Worker's or is stepped back (`doctor` flags more than five minutes). Past it a
/// redelivery would be refused as expired anyway: the margin keeps the id's real result
/// instead of a refusal, and guards against the agent's clock going back.
pub(crate) const RETENTION_MARGIN_MS: i64 = 60 * 60 * 1000;

/// When a command stops being delivered: what the Worker said, or, from a Worker too old to
/// send `expires_at`, its arrival plus the protocol's time-to-live (the Worker's default).
pub(crate) fn expiry(expires_at: Option<i64>, received_at: i64) -> i64 {
    expires_at.unwrap_or_else(|| received_at.saturating_add(COMMAND_TTL_MS))
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// On disk, ack not yet sent.
    Stored,
    /// Ack sent.
    Acked,
    /// Being typed (or interrupted while being typed).
    Executing,
    /// The text is in the pane; Enter is next.
    Typed,
    /// Finished, with a result.
    Done,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Stored => "stored",
            State::Acked => "acked",
            State::Executing => "executing",
            State::Typed => "typed",
            State::Done => "done",
        }
    }

    fn parse(s: &str) -> Option<State> {
        [
            State::Stored,
            State::Acked,
            State::Executing,
            State::Typed,
            State::Done,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// A command as the Worker sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Unique id from the Worker.
    pub command_id: String,
    /// Target session.
    pub session_id: String,
    /// Text to type ("" = Enter).
    pub command: String,
    /// Telegram chat it came from.
    pub chat_id: String,
    /// Named keys to press instead of typing (a `keys` frame: space-separated names from
    /// `wire::keys::NAMES`); `None` for text.
    pub keys: Option<String>,
    /// A start request (a `startSession` frame): the project to start Claude Code in, with
    /// `command` as its first prompt ("" = none) and no session yet.
    pub project: Option<String>,
    /// A file to download before typing (a `file` frame): `command` is its caption, and the
    /// saved file's path is typed after it.
    pub file: Option<FileRef>,
}

/// The `file` column: a row whose JSON does not read (never written so) has no file.
fn file_column(text: Option<String>) -> Option<FileRef> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// What storing a command found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First time: stored now.
    New,
    /// Seen before, in this state: ack again, do not execute.
    Duplicate(State),
    /// First time, but it arrived at or after its expiry: stored as done with a failed result
    /// (ack it, send the result), never executed.
    Expired,
}

/// The outcome of executing a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Whether the text reached the pane.
    pub(crate) success: bool,
    /// Why not, for a person.
    pub(crate) error: Option<String>,
    /// What else the result reports (a start request: the new tmux window).
    pub(crate) detail: Option<String>,
}

impl Outcome {
    /// Success.
    pub(crate) fn ok() -> Self {
        Self {
            success: true,
            error: None,
            detail: None,
        }
    }

    /// Failure with a reason.
    pub(crate) fn failed(reason: impl Into<String>) -> Self {
        Self {
            success: false,
            error: Some(reason.into()),
            detail: None,
        }
    }
}

/// Rows per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Stored, not acked.
    pub(crate) stored: u64,
    /// Acked, waiting to run.
    pub(crate) acked: u64,
    /// Running or interrupted (including typed, waiting for Enter).
    pub(crate) executing: u64,
    /// Finished.
    pub(crate) done: u64,
}

/// The most recent command, for `ccr-agent status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastCommand {
    /// Its id.
    pub(crate) command_id: String,
    /// Its session.
    pub(crate) session_id: String,
    /// Its state.
    pub(crate) state: State,
    /// Result, once done.
    pub(crate) outcome: Option<Outcome>,
    /// When it arrived (ms).
    pub(crate) received_at: i64,
}

/// The inbox over the agent's database.
#[derive(Clone)]
pub struct Inbox {
    db: Db,
}

impl Inbox {
    /// The inbox in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores a command unless its id is known; either way the caller acks it next.
    /// `expires_at` is the Worker's (ms since the epoch; `None` from an older Worker). A new
    /// command received at or after its expiry is stored already finished, as refused.
    pub fn store(
        &self,
        cmd: &Command,
        expires_at: Option<i64>,
        now: i64,
    ) -> rusqlite::Result<Receipt> {
        let expires = expiry(expires_at, now);
        // The Worker counts a command dead from its expiry on (inclusive), so does the agent.
        let refused = (now >= expires).then(|| refusal(now - expires));
        self.db.with(|c| {
            let inserted = c.execute(
                "INSERT INTO inbox (command_id, session_id, command, chat_id, state, success, \
                 error, result_sent, received_at, updated_at, expires_at, keys, project, file) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (command_id) DO NOTHING",
                params![
                    cmd.command_id,
                    cmd.session_id,
                    cmd.command,
                    cmd.chat_id,
                    if refused.is_some() { "done" } else { "stored" },
                    refused.as_ref().map(|_| false),
                    refused,
                    now,
                    expires,
                    cmd.keys,
                    cmd.project,
                    cmd.file
                        .as_ref()
                        .and_then(|f| serde_json::to_string(f).ok()),
                ],
            )?;
            if inserted == 1 {
                return Ok(if refused.is_some() {
                    Receipt::Expired
                } else {
                    Receipt::New
                });
            }
            let state: String = c.query_row(
                "SELECT state FROM inbox WHERE command_id = ?1",
                [&cmd.command_id],
                |r| r.get(0),
            )?;
            Ok(Receipt::Duplicate(
                State::parse(&state).unwrap_or(State::Done),
            ))
        })
    }

    /// Records that the ack was sent (`stored → acked`; later states stay).
    pub(crate) fn mark_acked(&self, command_id: &str, now: i64) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE inbox SET state = 'acked', updated_at = ?2 \
                 WHERE command_id = ?1 AND state = 'stored'",
                params![command_id, now],
            )
            .map(drop)
        })
    }

    /// Claims a command for execution. `true` exactly once per id: the only way to type it.
    pub fn begin(&self, command_id: &str, now: i64) -> rusqlite::Result<bool> {
        self.db.with(|c| {
            c.execute(
                "UPDATE inbox SET state = 'executing', updated_at = ?2 \
                 WHERE command_id = ?1 AND state IN ('stored', 'acked')",
                params![command_id, now],
            )
            .map(|n| n == 1)
        })
    }

    /// Records that the text is in the pane and only Enter is missing.
    pub fn mark_typed(&self, command_id: &str, now: i64) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE inbox SET state = 'typed', updated_at = ?2 \
                 WHERE command_id = ?1 AND state = 'executing'",
                params![command_id, now],
            )
            .map(drop)
        })
    }

    /// The stored commands that `condition` (an SQL condition on `state`, always a constant
    /// of this file: nothing from outside is ever part of it) selects, oldest first.
    fn commands_where(&self, condition: &str) -> rusqlite::Result<Vec<Command>> {
        self.db.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT command_id, session_id, command, chat_id, keys, project, file FROM inbox \
                 WHERE {condition} ORDER BY received_at, rowid"
            ))?;
            let rows = st.query_map([], |r| {
                Ok(Command {
                    command_id: r.get(0)?,
                    session_id: r.get(1)?,
                    command: r.get(2)?,
                    chat_id: r.get(3)?,
                    keys: r.get(4)?,
                    project: r.get(5)?,
                    file: file_column(r.get(6)?),
                })
            })?;
            rows.collect()
        })
    }

    /// Commands whose text was typed but whose Enter a crash prevented, oldest first.
    pub(crate) fn typed(&self) -> rusqlite::Result<Vec<Command>> {
        self.commands_where("state = 'typed'")
    }

    /// Records the outcome of a command claimed with [`Inbox::begin`].
    pub(crate) fn finish(
        &self,
        command_id: &str,
        outcome: &Outcome,
        now: i64,
    ) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE inbox SET state = 'done', success = ?2, error = ?3, result_sent = 0, \
                 updated_at = ?4, detail = ?5 \
                 WHERE command_id = ?1 AND state IN ('executing', 'typed')",
                params![
                    command_id,
                    outcome.success,
                    outcome.error,
                    now,
                    outcome.detail
                ],
            )
            .map(drop)
        })
    }

    /// Commands stored or acked but not started, oldest first.
    pub(crate) fn runnable(&self) -> rusqlite::Result<Vec<Command>> {
        self.commands_where("state IN ('stored', 'acked')")
    }

    /// At start-up: commands left `executing` by a crash may have been typed in part, so they
    /// are finished as failed instead of typed again. Returns how many. (`typed` ones are
    /// completed by the caller: see [`Inbox::typed`].)
    pub(crate) fn recover_interrupted(&self, now: i64) -> rusqlite::Result<usize> {
        self.db.with(|c| {
            c.execute(
                "UPDATE inbox SET state = 'done', success = 0, error = ?1, result_sent = 0, \
                 updated_at = ?2 WHERE state = 'executing'",
                params![
                    "the agent stopped while typing this command; it was not typed again so \
                     it cannot arrive twice — check the pane",
                    now
                ],
            )
        })
    }

    /// Results not yet sent to the Worker, oldest first, at most `limit`: id, outcome, and
    /// whether it is a start request's (sent as a `startResult`).
    pub(crate) fn unsent_results(
        &self,
        limit: usize,
    ) -> rusqlite::Result<Vec<(String, Outcome, bool)>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT command_id, success, error, detail, project IS NOT NULL FROM inbox \
                 WHERE state = 'done' AND result_sent = 0 ORDER BY updated_at, rowid LIMIT ?1",
            )?;
            let rows = st.query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Outcome {
                        success: r.get::<_, Option<bool>>(1)?.unwrap_or(false),
                        error: r.get(2)?,
                        detail: r.get(3)?,
                    },
                    r.get::<_, bool>(4)?,
                ))
            })?;
            rows.collect()
        })
    }

    /// Records that a result was handed to the socket.
    pub(crate) fn mark_result_sent(&self, command_id: &str) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE inbox SET result_sent = 1 WHERE command_id = ?1",
                [command_id],
            )
            .map(drop)
        })
    }

    /// Queues a done command's result to be sent again (the Worker delivered the command
    /// again, so it may have missed the result too; it ignores a result it already has).
    pub(crate) fn resend_result(&self, command_id: &str) -> rusqlite::Result<()> {
        self.db.with(|c| {
            c.execute(
                "UPDATE inbox SET result_sent = 0 WHERE command_id = ?1 AND state = 'done'",
                [command_id],
            )
            .map(drop)
        })
    }

    /// Deletes finished rows whose result was sent and whose expiry is more than `margin_ms`
    /// past (see [`RETENTION_MARGIN_MS`]); returns how many. Nothing else is ever deleted: a
    /// command not yet run, and a result not yet sent, wait however long it takes.
    pub(crate) fn prune(&self, now: i64, margin_ms: i64) -> rusqlite::Result<usize> {
        self.db.with(|c| {
            c.execute(
                "DELETE FROM inbox WHERE state = 'done' AND result_sent = 1 \
                 AND COALESCE(expires_at, received_at + ?2) < ?1",
                params![now.saturating_sub(margin_ms), COMMAND_TTL_MS],
            )
        })
    }

    /// The state of one command.
    #[cfg(test)]
    pub(crate) fn state(&self, command_id: &str) -> rusqlite::Result<Option<State>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT state FROM inbox WHERE command_id = ?1",
                [command_id],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map(|s| s.and_then(|s| State::parse(&s)))
        })
    }

    /// Rows per state.
    pub(crate) fn counts(&self) -> rusqlite::Result<Counts> {
        self.db.with(|c| {
            let mut st = c.prepare("SELECT state, COUNT(*) FROM inbox GROUP BY state")?;
            let mut counts = Counts::default();
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (state, n) = row?;
                let n = n.max(0) as u64;
                match State::parse(&state) {
                    Some(State::Stored) => counts.stored = n,
                    Some(State::Acked) => counts.acked = n,
                    Some(State::Executing) | Some(State::Typed) => counts.executing += n,
                    Some(State::Done) | None => counts.done += n,
                }
            }
            Ok(counts)
        })
    }

    /// The most recently received command.
    pub(crate) fn last(&self) -> rusqlite::Result<Option<LastCommand>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT command_id, session_id, state, success, error, received_at FROM inbox \
                 ORDER BY received_at DESC, rowid DESC LIMIT 1",
                [],
                |r| {
                    let state = State::parse(&r.get::<_, String>(2)?).unwrap_or(State::Done);
                    let success: Option<bool> = r.get(3)?;
                    Ok(LastCommand {
                        command_id: r.get(0)?,
                        session_id: r.get(1)?,
                        state,
                        outcome: success.map(|success| Outcome {
                            success,
                            error: r.get(4).ok().flatten(),
                            detail: None,
                        }),
                        received_at: r.get(5)?,
                    })
                },
            )
            .optional()
        })
    }
}

/// The failed result of a command that arrived `late_ms` after its expiry.
fn refusal(late_ms: i64) -> String {
    format!(
        "this command reached the machine {} after it expired (the Worker keeps a command only \
         so long, e.g. while the machine is offline), so it was not typed; send it again if it \
         still applies",
        human_duration(late_ms)
    )
}

fn human_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(id: &str) -> Command {
        Command {
            command_id: id.into(),
            session_id: "s1".into(),
            command: format!("text of {id}"),
            chat_id: "42".into(),
            keys: None,
            project: None,
            file: None,
        }
    }

    fn inbox() -> Inbox {
        Inbox::new(Db::open_in_memory().unwrap())
    }

    #[test]
    fn a_command_walks_stored_acked_executing_done() {
        let ib = inbox();
        assert_eq!(ib.store(&cmd("c1"), None, 1).unwrap(), Receipt::New);
        assert_eq!(ib.state("c1").unwrap(), Some(State::Stored));
        ib.mark_acked("c1", 2).unwrap();
        assert_eq!(ib.state("c1").unwrap(), Some(State::Acked));
        assert_eq!(ib.runnable().unwrap(), vec![cmd("c1")]);
        assert!(ib.begin("c1", 3).unwrap());
        assert_eq!(ib.state("c1").unwrap(), Some(State::Executing));
        assert!(ib.runnable().unwrap().is_empty());
        ib.finish("c1", &Outcome::ok(), 4).unwrap();
        assert_eq!(ib.state("c1").unwrap(), Some(State::Done));
        assert_eq!(
            ib.unsent_results(10).unwrap(),
            vec![("c1".to_string(), Outcome::ok(), false)]
        );
        ib.mark_result_sent("c1").unwrap();
        assert!(ib.unsent_results(10).unwrap().is_empty());
    }

    #[test]
    fn a_redelivered_command_is_acked_but_never_runs_twice() {
        let ib = inbox();
        assert_eq!(ib.store(&cmd("c1"), None, 1).unwrap(), Receipt::New);
        // Redelivered before the ack went out.
        assert_eq!(
            ib.store(&cmd("c1"), None, 2).unwrap(),
            Receipt::Duplicate(State::Stored)
        );
        ib.mark_acked("c1", 2).unwrap();
        assert!(ib.begin("c1", 3).unwrap());
        // Redelivered while running, and again after.
        assert_eq!(
            ib.store(&cmd("c1"), None, 4).unwrap(),
            Receipt::Duplicate(State::Executing)
        );
        assert!(!ib.begin("c1", 4).unwrap());
        ib.finish("c1", &Outcome::failed("pane gone"), 5).unwrap();
        ib.mark_result_sent("c1").unwrap();
        ib.resend_result("c1").unwrap();
        assert_eq!(ib.unsent_results(10).unwrap().len(), 1);
        assert_eq!(
            ib.store(&cmd("c1"), None, 6).unwrap(),
            Receipt::Duplicate(State::Done)
        );
        // A late ack mark does not move a done command back.
        ib.mark_acked("c1", 7).unwrap();
        assert_eq!(ib.state("c1").unwrap(), Some(State::Done));
        assert!(!ib.begin("c1", 8).unwrap());
        assert!(ib.runnable().unwrap().is_empty());
    }

    #[test]
    fn runnable_is_fifo_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ib = Inbox::new(Db::open(dir.path()).unwrap());
            ib.store(&cmd("b"), None, 10).unwrap();
            ib.store(&cmd("a"), None, 11).unwrap();
            ib.mark_acked("a", 12).unwrap();
            ib.store(&cmd("c"), None, 11).unwrap();
        }
        // A new process (the same file) sees the stored commands, oldest first.
        let ib = Inbox::new(Db::open(dir.path()).unwrap());
        let ids: Vec<String> = ib
            .runnable()
            .unwrap()
            .into_iter()
            .map(|c| c.command_id)
            .collect();
        assert_eq!(ids, ["b", "a", "c"]);
    }

    #[test]
    fn interrupted_commands_fail_instead_of_running_again() {
        let ib = inbox();
        ib.store(&cmd("c1"), None, 1).unwrap();
        ib.store(&cmd("c2"), None, 2).unwrap();
        assert!(ib.begin("c1", 3).unwrap());
        // Crash here; at start-up:
        assert_eq!(ib.recover_interrupted(4).unwrap(), 1);
        assert_eq!(ib.state("c1").unwrap(), Some(State::Done));
        assert!(!ib.begin("c1", 5).unwrap());
        let results = ib.unsent_results(10).unwrap();
        assert_eq!(results.len(), 1);
        assert!(!results[0].1.success);
        assert!(results[0].1.error.as_deref().unwrap().contains("stopped"));
        // The untouched one still runs.
        assert_eq!(ib.runnable().unwrap(), vec![cmd("c2")]);
    }

    #[test]
    fn typed_commands_only_miss_their_enter() {
        let ib = inbox();
        ib.store(&cmd("c1"), None, 1).unwrap();
        ib.store(&cmd("c2"), None, 2).unwrap();
        assert!(ib.begin("c1", 3).unwrap());
        ib.mark_typed("c1", 4).unwrap();
        assert_eq!(ib.state("c1").unwrap(), Some(State::Typed));
        // Crash here; at start-up the typed one is not failed but handed back for its Enter.
        assert_eq!(ib.recover_interrupted(5).unwrap(), 0);
        assert_eq!(ib.typed().unwrap(), vec![cmd("c1")]);
        assert!(!ib.begin("c1", 5).unwrap());
        assert_eq!(ib.runnable().unwrap(), vec![cmd("c2")]);
        assert_eq!(
            ib.store(&cmd("c1"), None, 6).unwrap(),
            Receipt::Duplicate(State::Typed)
        );
        ib.finish("c1", &Outcome::ok(), 7).unwrap();
        assert_eq!(ib.state("c1").unwrap(), Some(State::Done));
        assert!(ib.typed().unwrap().is_empty());
        // Only an executing command can become typed.
        ib.mark_typed("c2", 8).unwrap();
        assert_eq!(ib.state("c2").unwrap(), Some(State::Stored));
    }

    const HOUR: i64 = 60 * 60 * 1000;
    const DAY: i64 = 24 * HOUR;

    /// Stores, runs and finishes `id` at `t` with the Worker's expiry `expires_at`; the result
    /// is sent when `sent`.
    fn run_once(ib: &Inbox, id: &str, expires_at: Option<i64>, t: i64, sent: bool) {
        assert_eq!(ib.store(&cmd(id), expires_at, t).unwrap(), Receipt::New);
        ib.mark_acked(id, t).unwrap();
        assert!(ib.begin(id, t).unwrap());
        ib.finish(id, &Outcome::ok(), t).unwrap();
        if sent {
            ib.mark_result_sent(id).unwrap();
        }
    }

    /// The hourly prune at `now`, then a redelivery of `id` at `now`: the receipt.
    fn prune_then_redeliver(ib: &Inbox, id: &str, expires_at: Option<i64>, now: i64) -> Receipt {
        ib.prune(now, RETENTION_MARGIN_MS).unwrap();
        ib.store(&cmd(id), expires_at, now).unwrap()
    }

    #[test]
    fn a_redelivery_just_before_expiry_is_a_duplicate() {
        let ib = inbox();
        let expires = 10 * DAY; // a Worker whose COMMAND_TTL_SECS is ten days
        run_once(&ib, "c1", Some(expires), 0, true);
        let again = prune_then_redeliver(&ib, "c1", Some(expires), expires - 1);
        assert_eq!(again, Receipt::Duplicate(State::Done));
        assert!(!ib.begin("c1", expires - 1).unwrap());
        assert!(ib.runnable().unwrap().is_empty());
    }

    #[test]
    fn an_executed_id_outlives_the_old_fixed_day() {
        // The old rule forgot a finished id a day after it finished, though the Worker may
        // redeliver it until its own expiry, which can be later.
        let ib = inbox();
        let expires = 3 * DAY;
        run_once(&ib, "c1", Some(expires), 0, true);
        for now in [DAY + 1, 2 * DAY, expires - 1] {
            assert_eq!(
                prune_then_redeliver(&ib, "c1", Some(expires), now),
                Receipt::Duplicate(State::Done),
                "at {now}"
            );
        }
        // Kept through the margin after the expiry…
        assert_eq!(
            prune_then_redeliver(&ib, "c1", Some(expires), expires + RETENTION_MARGIN_MS),
            Receipt::Duplicate(State::Done)
        );
        // …then pruned; a redelivery after that is refused as expired, never run again.
        let late = expires + RETENTION_MARGIN_MS + 1;
        assert_eq!(ib.prune(late, RETENTION_MARGIN_MS).unwrap(), 1);
        assert_eq!(ib.state("c1").unwrap(), None);
        assert_eq!(
            ib.store(&cmd("c1"), Some(expires), late).unwrap(),
            Receipt::Expired
        );
        assert!(ib.runnable().unwrap().is_empty());
        assert!(!ib.begin("c1", late).unwrap());
    }

    #[test]
    fn an_expired_arrival_is_refused_and_reported() {
        let ib = inbox();
        let expires = 20_000;
        for (id, at) in [
            ("on-time", expires - 1),
            ("at-expiry", expires),
            ("late", expires + 90_000),
        ] {
            let receipt = ib.store(&cmd(id), Some(expires), at).unwrap();
            if id == "on-time" {
                assert_eq!(receipt, Receipt::New);
            } else {
                assert_eq!(receipt, Receipt::Expired, "{id}");
                assert_eq!(ib.state(id).unwrap(), Some(State::Done));
                assert!(!ib.begin(id, at).unwrap(), "{id} must never run");
            }
        }
        assert_eq!(ib.runnable().unwrap(), vec![cmd("on-time")]);
        let results = ib.unsent_results(10).unwrap();
        let ids: Vec<&str> = results.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["at-expiry", "late"]);
        for (_, outcome, _) in &results {
            assert!(!outcome.success);
            let error = outcome.error.as_deref().unwrap();
            assert!(error.contains("after it expired"), "{error}");
            assert!(error.contains("not typed"), "{error}");
        }
        assert!(results[1].1.error.as_deref().unwrap().contains("90s after"));
        // The refused id is remembered like an executed one: a redelivery is a duplicate.
        assert_eq!(
            ib.store(&cmd("late"), Some(expires), expires + 100_000)
                .unwrap(),
            Receipt::Duplicate(State::Done)
        );
    }

    #[test]
    fn a_result_not_yet_sent_survives_every_prune() {
        let ib = inbox();
        run_once(&ib, "unsent", Some(HOUR), 0, false);
        run_once(&ib, "sent", Some(HOUR), 0, true);
        ib.store(&cmd("expired"), Some(HOUR), 2 * HOUR).unwrap();
        ib.store(&cmd("waiting"), Some(HOUR), 0).unwrap();
        let much_later = 400 * DAY;
        assert_eq!(ib.prune(much_later, RETENTION_MARGIN_MS).unwrap(), 1);
        assert_eq!(ib.state("sent").unwrap(), None);
        assert_eq!(ib.state("unsent").unwrap(), Some(State::Done));
        assert_eq!(ib.state("expired").unwrap(), Some(State::Done));
        // Never prune what has not run.
        assert_eq!(ib.state("waiting").unwrap(), Some(State::Stored));
        let ids: Vec<String> = ib
            .unsent_results(10)
            .unwrap()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(ids, ["unsent", "expired"]);
        // Once sent, they go at the next prune.
        ib.mark_result_sent("unsent").unwrap();
        ib.mark_result_sent("expired").unwrap();
        assert_eq!(ib.prune(much_later, RETENTION_MARGIN_MS).unwrap(), 2);
        assert_eq!(
            ib.counts().unwrap(),
            Counts {
                stored: 1,
                acked: 0,
                executing: 0,
                done: 0
            }
        );
    }

    #[test]
    fn without_an_expiry_the_protocol_ttl_counts_from_arrival() {
        // An older Worker sends no expiresAt: never refused on arrival, remembered until
        // arrival + COMMAND_TTL_MS + the margin.
        let ib = inbox();
        let received = 5 * DAY;
        run_once(&ib, "c1", None, received, true);
        let expiry = received + COMMAND_TTL_MS;
        assert_eq!(
            prune_then_redeliver(&ib, "c1", None, expiry + RETENTION_MARGIN_MS),
            Receipt::Duplicate(State::Done)
        );
        assert_eq!(
            ib.prune(expiry + RETENTION_MARGIN_MS + 1, RETENTION_MARGIN_MS)
                .unwrap(),
            1
        );
        assert_eq!(ib.store(&cmd("c2"), None, 100 * DAY).unwrap(), Receipt::New);
        assert_eq!(super::expiry(None, 7), 7 + COMMAND_TTL_MS);
        assert_eq!(super::expiry(Some(9), 7), 9);
    }

    #[test]
    fn rows_of_an_older_agent_get_the_ttl_as_their_expiry() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The first schema only, with a finished row in it.
            let c = rusqlite::Connection::open(Db::path(dir.path())).unwrap();
            c.execute_batch(crate::db::MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO inbox (command_id, session_id, command, chat_id, state, success, \
                 result_sent, received_at, updated_at) VALUES ('old', 's1', 'x', '1', 'done', 1, \
                 1, 1000, 2000)",
                [],
            )
            .unwrap();
        }
        let ib = Inbox::new(Db::open(dir.path()).unwrap());
        let kept_until = 1000 + COMMAND_TTL_MS + RETENTION_MARGIN_MS;
        assert_eq!(ib.prune(kept_until, RETENTION_MARGIN_MS).unwrap(), 0);
        assert_eq!(ib.prune(kept_until + 1, RETENTION_MARGIN_MS).unwrap(), 1);
    }

    #[test]
    fn last_command_reports_outcome() {
        let ib = inbox();
        assert_eq!(ib.last().unwrap(), None);
        ib.store(&cmd("c1"), None, 1).unwrap();
        ib.store(&cmd("c2"), None, 2).unwrap();
        assert!(ib.begin("c2", 3).unwrap());
        ib.finish("c2", &Outcome::failed("no pane"), 4).unwrap();
        let last = ib.last().unwrap().unwrap();
        assert_eq!(last.command_id, "c2");
        assert_eq!(last.outcome, Some(Outcome::failed("no pane")));
    }
}
