//! Files a chat sends to a session (photos, documents, voice notes): who may fetch one with
//! `GET /files/{file_id}`, what Telegram's `getFile` answer allows, and the download URL.
//!
//! The bot token never leaves the Worker: the agent asks the Worker for a file by its
//! Telegram id, and the Worker asks Telegram and streams the bytes through. A machine may
//! fetch only a file that was sent to one of its own sessions and whose command is still
//! live (queued, sent or acked): a file id is not a secret (anyone the file was forwarded to
//! sees it), so a machine key alone must not open every file the bot ever received.

use ccr_protocol::{validate, MAX_FILE_BYTES};
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::store::{Sql, StoreError};
use crate::telegram::ApiOutcome;

/// The answer to a file Telegram will not hand a bot (413).
pub(crate) const TOO_BIG: &str = "the file is over the 20 MB Telegram lets bots download";

/// Checks the path's file id (400 when it could not be one of Telegram's).
pub(crate) fn check_id(file_id: &str) -> Result<(), ApiError> {
    validate::file_id(file_id).map_err(|e| ApiError::new(400, e))
}

/// Whether `principal` may fetch `file_id`: a live command of one of its machine's sessions
/// carries it (the admin key: any machine's). 404 otherwise — the same answer whether the
/// file is unknown or another machine's, so a key learns nothing about other machines.
pub(crate) fn may_fetch(
    db: &impl Sql,
    principal: &Principal,
    file_id: &str,
) -> Result<(), ApiError> {
    check_id(file_id)?;
    #[derive(Deserialize)]
    struct Row {
        machine_id: String,
    }
    let rows = db
        .query::<Row>(
            "SELECT machine_id FROM command_queue
             WHERE file_id = ? AND state IN ('pending', 'sent', 'acked')",
            vec![file_id.into()],
        )
        .map_err(|e: StoreError| ApiError::Store(e))?;
    if rows.iter().any(|r| principal.may_act_for(&r.machine_id)) {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            "no file with this id is waiting for this machine",
        ))
    }
}

/// A file Telegram will hand out: where, and how big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    /// The path to append to `{base}/file/bot{token}/`.
    pub(crate) file_path: String,
    /// Its size, when Telegram said.
    pub(crate) size: Option<u64>,
}

/// Reads `getFile`'s answer: where to download the file, or the refusal to give the agent
/// (413 too big, 502 refused or unreadable, 503 Telegram unreachable or busy).
pub(crate) fn located(outcome: ApiOutcome) -> Result<Located, ApiError> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        file_path: Option<String>,
        #[serde(default)]
        file_size: Option<u64>,
    }
    let result = match outcome {
        ApiOutcome::Ok(result) => result,
        ApiOutcome::Refused(why) if why.to_ascii_lowercase().contains("file is too big") => {
            return Err(ApiError::new(413, TOO_BIG))
        }
        ApiOutcome::Refused(why) => {
            return Err(ApiError::new(
                502,
                format!("Telegram refused the file: {why}"),
            ))
        }
        ApiOutcome::RetryAfter(secs) => {
            return Err(ApiError::busy(
                503,
                "Telegram asks to wait before fetching the file",
                u32::try_from(secs).unwrap_or(u32::MAX),
            ))
        }
        ApiOutcome::Failed(why) => {
            return Err(ApiError::new(
                503,
                format!("Telegram could not be asked for the file: {why}"),
            ))
        }
    };
    let file: File = serde_json::from_value(result)
        .map_err(|_| ApiError::new(502, "Telegram's getFile answer has no file"))?;
    if file.file_size.is_some_and(|s| s > MAX_FILE_BYTES) {
        return Err(ApiError::new(413, TOO_BIG));
    }
    let path = file.file_path.unwrap_or_default();
    if !safe_file_path(&path) {
        return Err(ApiError::new(
            502,
            "Telegram's getFile answer has no usable file path",
        ));
    }
    Ok(Located {
        file_path: path,
        size: file.file_size,
    })
}

/// A `file_path` that stays a path under the download prefix: relative, no `..` or empty
/// segment, no query or fragment, printable ASCII only.
fn safe_file_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 512
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'))
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// The download URL of a located file (it holds the token: never logged).
pub(crate) fn download_url(api_base: &str, token: &str, file_path: &str) -> String {
    let base = if api_base.is_empty() {
        ccr_protocol::wire::bot::DEFAULT_API_BASE
    } else {
        api_base.trim_end_matches('/')
    };
    format!("{base}/file/bot{token}/{file_path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{self, NewCommand};
    use crate::store::testing::MemDb;
    use ccr_protocol::socket::{FileKind, FileRef};
    use serde_json::json;

    fn status(r: Result<impl std::fmt::Debug, ApiError>) -> u16 {
        match r {
            Err(ApiError::Answer { status, .. }) => status,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn queue_file(db: &MemDb, id: &str, machine: &str, file_id: &str) {
        let cmd = NewCommand {
            command_id: id.into(),
            session_id: "s1".into(),
            machine_id: machine.into(),
            chat_id: 42,
            source_message_id: Some(7),
            command: "look".into(),
            keys: None,
            project: None,
            file: Some(FileRef {
                file_id: file_id.into(),
                size: Some(10),
                kind: FileKind::Photo,
                name: None,
            }),
        };
        queue::enqueue(db, &cmd, 0).unwrap();
    }

    #[test]
    fn only_the_machine_of_a_live_command_may_fetch_its_file() {
        let db = MemDb::migrated();
        queue_file(&db, "tg-1", "devbox", "F1");
        let devbox = Principal::Machine("devbox".into());
        let other = Principal::Machine("laptop".into());
        assert!(may_fetch(&db, &devbox, "F1").is_ok());
        assert!(may_fetch(&db, &Principal::Admin, "F1").is_ok());
        assert_eq!(status(may_fetch(&db, &other, "F1")), 404);
        assert_eq!(status(may_fetch(&db, &devbox, "F2")), 404);
        assert_eq!(status(may_fetch(&db, &devbox, "../etc")), 400);
        // Acked is still live (the agent downloads after storing and acking)…
        queue::ack(&db, "tg-1", "devbox", 1).unwrap();
        assert!(may_fetch(&db, &devbox, "F1").is_ok());
        // …finished is not.
        queue::complete(&db, "tg-1", "devbox", true, None, 2).unwrap();
        assert_eq!(status(may_fetch(&db, &devbox, "F1")), 404);
    }

    #[test]
    fn get_file_answers_become_locations_or_refusals() {
        let ok = located(ApiOutcome::Ok(
            json!({"file_id": "F", "file_unique_id": "u",
            "file_size": 1234, "file_path": "photos/file_1.jpg"}),
        ))
        .unwrap();
        assert_eq!(ok.file_path, "photos/file_1.jpg");
        assert_eq!(ok.size, Some(1234));
        assert_eq!(
            status(located(ApiOutcome::Refused(
                "Bad Request: file is too big".into()
            ))),
            413
        );
        assert_eq!(
            status(located(ApiOutcome::Ok(
                json!({"file_size": MAX_FILE_BYTES + 1, "file_path": "a"})
            ))),
            413
        );
        assert_eq!(
            status(located(ApiOutcome::Refused(
                "Bad Request: invalid file_id".into()
            ))),
            502
        );
        assert_eq!(status(located(ApiOutcome::Failed("down".into()))), 503);
        for bad in ["", "../x", "a//b", "/abs", "a?b", "a/./b", "a b"] {
            assert_eq!(
                status(located(ApiOutcome::Ok(json!({"file_path": bad})))),
                502,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn download_urls_follow_the_api_base() {
        assert_eq!(
            download_url("http://127.0.0.1:9/", "123:abc", "photos/f.jpg"),
            "http://127.0.0.1:9/file/bot123:abc/photos/f.jpg"
        );
        assert!(download_url("", "t", "x").starts_with("https://api.telegram.org/file/bott/"));
    }
}
