//! The inbox: why a command is typed exactly once although the Worker delivers it at least
//! once.
//!
//! A command moves `stored → acked → executing → typed → done`. It is acked only after it is
//! stored; a command id seen before is acked again and nothing else. Only the `stored|acked →
//! executing` transition (one UPDATE that must change one row) lets a command be typed, so no
//! id is typed twice, even across restarts. `typed` means the text is in the pane and only
//! Enter is missing: a crash there is finished at start-up by pressing Enter. A command found
//! `executing` at start-up may have been typed in part: it is finished as failed rather than
//! typed again. Done rows keep their result until it has been sent, and are pruned after a day.

use rusqlite::{params, OptionalExtension};

use crate::db::Db;

/// A done row is deleted this long after it finished (ms).
pub(crate) const DONE_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

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
}

/// What storing a command found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First time: stored now.
    New,
    /// Seen before, in this state: ack again, do not execute.
    Duplicate(State),
}

/// The outcome of executing a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Whether the text reached the pane.
    pub(crate) success: bool,
    /// Why not, for a person.
    pub(crate) error: Option<String>,
}

impl Outcome {
    /// Success.
    pub(crate) fn ok() -> Self {
        Self {
            success: true,
            error: None,
        }
    }

    /// Failure with a reason.
    pub(crate) fn failed(reason: impl Into<String>) -> Self {
        Self {
            success: false,
            error: Some(reason.into()),
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
    pub fn store(&self, cmd: &Command, now: i64) -> rusqlite::Result<Receipt> {
        self.db.with(|c| {
            let inserted = c.execute(
                "INSERT INTO inbox (command_id, session_id, command, chat_id, state, \
                 received_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'stored', ?5, ?5) \
                 ON CONFLICT (command_id) DO NOTHING",
                params![
                    cmd.command_id,
                    cmd.session_id,
                    cmd.command,
                    cmd.chat_id,
                    now
                ],
            )?;
            if inserted == 1 {
                return Ok(Receipt::New);
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

    /// Commands whose text was typed but whose Enter a crash prevented, oldest first.
    pub(crate) fn typed(&self) -> rusqlite::Result<Vec<Command>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT command_id, session_id, command, chat_id FROM inbox \
                 WHERE state = 'typed' ORDER BY received_at, rowid",
            )?;
            let rows = st.query_map([], |r| {
                Ok(Command {
                    command_id: r.get(0)?,
                    session_id: r.get(1)?,
                    command: r.get(2)?,
                    chat_id: r.get(3)?,
                })
            })?;
            rows.collect()
        })
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
                 updated_at = ?4 WHERE command_id = ?1 AND state IN ('executing', 'typed')",
                params![command_id, outcome.success, outcome.error, now],
            )
            .map(drop)
        })
    }

    /// Commands stored or acked but not started, oldest first.
    pub(crate) fn runnable(&self) -> rusqlite::Result<Vec<Command>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT command_id, session_id, command, chat_id FROM inbox \
                 WHERE state IN ('stored', 'acked') ORDER BY received_at, rowid",
            )?;
            let rows = st.query_map([], |r| {
                Ok(Command {
                    command_id: r.get(0)?,
                    session_id: r.get(1)?,
                    command: r.get(2)?,
                    chat_id: r.get(3)?,
                })
            })?;
            rows.collect()
        })
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

    /// Results not yet sent to the Worker, oldest first, at most `limit`.
    pub(crate) fn unsent_results(&self, limit: usize) -> rusqlite::Result<Vec<(String, Outcome)>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT command_id, success, error FROM inbox \
                 WHERE state = 'done' AND result_sent = 0 ORDER BY updated_at, rowid LIMIT ?1",
            )?;
            let rows = st.query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Outcome {
                        success: r.get::<_, Option<bool>>(1)?.unwrap_or(false),
                        error: r.get(2)?,
                    },
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

    /// Deletes done rows older than `retention_ms`; returns how many.
    pub(crate) fn prune(&self, now: i64, retention_ms: i64) -> rusqlite::Result<usize> {
        self.db.with(|c| {
            c.execute(
                "DELETE FROM inbox WHERE state = 'done' AND updated_at < ?1",
                [now - retention_ms],
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
                        }),
                        received_at: r.get(5)?,
                    })
                },
            )
            .optional()
        })
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
        }
    }

    fn inbox() -> Inbox {
        Inbox::new(Db::open_in_memory().unwrap())
    }

    #[test]
    fn a_command_walks_stored_acked_executing_done() {
        let ib = inbox();
        assert_eq!(ib.store(&cmd("c1"), 1).unwrap(), Receipt::New);
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
            vec![("c1".to_string(), Outcome::ok())]
        );
        ib.mark_result_sent("c1").unwrap();
        assert!(ib.unsent_results(10).unwrap().is_empty());
    }

    #[test]
    fn a_redelivered_command_is_acked_but_never_runs_twice() {
        let ib = inbox();
        assert_eq!(ib.store(&cmd("c1"), 1).unwrap(), Receipt::New);
        // Redelivered before the ack went out.
        assert_eq!(
            ib.store(&cmd("c1"), 2).unwrap(),
            Receipt::Duplicate(State::Stored)
        );
        ib.mark_acked("c1", 2).unwrap();
        assert!(ib.begin("c1", 3).unwrap());
        // Redelivered while running, and again after.
        assert_eq!(
            ib.store(&cmd("c1"), 4).unwrap(),
            Receipt::Duplicate(State::Executing)
        );
        assert!(!ib.begin("c1", 4).unwrap());
        ib.finish("c1", &Outcome::failed("pane gone"), 5).unwrap();
        ib.mark_result_sent("c1").unwrap();
        ib.resend_result("c1").unwrap();
        assert_eq!(ib.unsent_results(10).unwrap().len(), 1);
        assert_eq!(
            ib.store(&cmd("c1"), 6).unwrap(),
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
            ib.store(&cmd("b"), 10).unwrap();
            ib.store(&cmd("a"), 11).unwrap();
            ib.mark_acked("a", 12).unwrap();
            ib.store(&cmd("c"), 11).unwrap();
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
        ib.store(&cmd("c1"), 1).unwrap();
        ib.store(&cmd("c2"), 2).unwrap();
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
        ib.store(&cmd("c1"), 1).unwrap();
        ib.store(&cmd("c2"), 2).unwrap();
        assert!(ib.begin("c1", 3).unwrap());
        ib.mark_typed("c1", 4).unwrap();
        assert_eq!(ib.state("c1").unwrap(), Some(State::Typed));
        // Crash here; at start-up the typed one is not failed but handed back for its Enter.
        assert_eq!(ib.recover_interrupted(5).unwrap(), 0);
        assert_eq!(ib.typed().unwrap(), vec![cmd("c1")]);
        assert!(!ib.begin("c1", 5).unwrap());
        assert_eq!(ib.runnable().unwrap(), vec![cmd("c2")]);
        assert_eq!(
            ib.store(&cmd("c1"), 6).unwrap(),
            Receipt::Duplicate(State::Typed)
        );
        ib.finish("c1", &Outcome::ok(), 7).unwrap();
        assert_eq!(ib.state("c1").unwrap(), Some(State::Done));
        assert!(ib.typed().unwrap().is_empty());
        // Only an executing command can become typed.
        ib.mark_typed("c2", 8).unwrap();
        assert_eq!(ib.state("c2").unwrap(), Some(State::Stored));
    }

    #[test]
    fn done_rows_are_pruned_after_retention_and_others_kept() {
        let ib = inbox();
        for (id, t) in [("old", 0), ("new", DONE_RETENTION_MS)] {
            ib.store(&cmd(id), t).unwrap();
            assert!(ib.begin(id, t).unwrap());
            ib.finish(id, &Outcome::ok(), t).unwrap();
        }
        ib.store(&cmd("waiting"), 0).unwrap();
        let now = DONE_RETENTION_MS + 1;
        assert_eq!(ib.prune(now, DONE_RETENTION_MS).unwrap(), 1);
        assert_eq!(ib.state("old").unwrap(), None);
        assert_eq!(ib.state("new").unwrap(), Some(State::Done));
        // Never prune what has not run.
        assert_eq!(ib.state("waiting").unwrap(), Some(State::Stored));
        // A pruned id that comes back after a day is new again (the Worker's TTL is a day).
        assert_eq!(
            ib.counts().unwrap(),
            Counts {
                stored: 1,
                acked: 0,
                executing: 0,
                done: 1
            }
        );
    }

    #[test]
    fn last_command_reports_outcome() {
        let ib = inbox();
        assert_eq!(ib.last().unwrap(), None);
        ib.store(&cmd("c1"), 1).unwrap();
        ib.store(&cmd("c2"), 2).unwrap();
        assert!(ib.begin("c2", 3).unwrap());
        ib.finish("c2", &Outcome::failed("no pane"), 4).unwrap();
        let last = ib.last().unwrap().unwrap();
        assert_eq!(last.command_id, "c2");
        assert_eq!(last.outcome, Some(Outcome::failed("no pane")));
    }
}
