//! Files the chat sends to a session (photos, documents, voice notes): downloaded from the
//! Worker's `GET /files/{file_id}` with this machine's key (the bot token stays in the
//! Worker), written to a temporary file while the bytes are counted against Telegram's
//! 20 MB limit for bots, then renamed into place under a name the agent makes up — never a
//! name from the chat. The prompt typed is the caption followed by the saved file's path.
//!
//! Where: `<session cwd>/.ccr/files/`, with `<session cwd>/.ccr/.gitignore` holding `*` so
//! the folder ignores itself in any git repository without touching the project's own
//! `.gitignore`. Inside its working directory Claude Code reads a file without asking to go
//! outside the project, which a file in the agent's private data directory would need. A
//! session without a usable working directory gets the data directory's `files/` instead.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ccr_protocol::api::ErrorBody;
use ccr_protocol::socket::{FileKind, FileRef};
use ccr_protocol::wire::{header, route};
use ccr_protocol::MAX_FILE_BYTES;
use reqwest::StatusCode;
use tracing::warn;

use crate::settings::WorkerConfig;

/// The folder under a session's working directory that holds what CCR saves there.
pub(crate) const CCR_DIR: &str = ".ccr";
/// The files' folder inside [`CCR_DIR`] (and inside the data directory, as the fallback).
pub(crate) const FILES_DIR: &str = "files";
/// A whole download may take this long (20 MB over a slow link).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Downloads chat files from the Worker.
#[derive(Clone)]
pub(crate) struct Fetcher {
    worker: WorkerConfig,
    http: reqwest::Client,
    data_dir: PathBuf,
}

impl Fetcher {
    /// A fetcher for `worker`, falling back to `data_dir` for sessions without a folder.
    pub(crate) fn new(worker: WorkerConfig, data_dir: PathBuf) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(DOWNLOAD_TIMEOUT)
            .build()?;
        Ok(Self {
            worker,
            http,
            data_dir,
        })
    }

    /// Downloads `file` of command `command_id` into the folder for a session working in
    /// `cwd`; the saved file's path, or why not in words for the chat.
    pub(crate) async fn save(
        &self,
        command_id: &str,
        file: &FileRef,
        cwd: Option<&str>,
    ) -> Result<PathBuf, String> {
        let what = file.kind.as_str();
        if file.size.is_some_and(|s| s > MAX_FILE_BYTES) {
            return Err(too_big(what));
        }
        let dir = self.folder(cwd)?;
        let name = file_name(command_id, file);
        let part = dir.join(format!(".{name}.part"));
        let result = self.download(file, &part, what).await;
        let saved = result.and_then(|()| {
            let target = free_name(&dir, &name);
            std::fs::rename(&part, &target)
                .map(|()| target)
                .map_err(|e| format!("the {what} could not be saved in {}: {e}", dir.display()))
        });
        if saved.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        saved
    }

    /// The session's `.ccr/files/` (made, with its `.gitignore`), or the data directory's
    /// `files/` when the session has no working directory that can take it.
    fn folder(&self, cwd: Option<&str>) -> Result<PathBuf, String> {
        if let Some(cwd) = cwd.map(Path::new).filter(|p| p.is_absolute() && p.is_dir()) {
            if let Ok(dir) = session_folder(cwd) {
                return Ok(dir);
            }
        }
        let dir = self.data_dir.join(FILES_DIR);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("the folder {} could not be made: {e}", dir.display()))?;
        Ok(dir)
    }

    /// Streams the Worker's answer into `part`, counting bytes against the limit.
    async fn download(&self, file: &FileRef, part: &Path, what: &str) -> Result<(), String> {
        let url = self.worker.http_url(&route::file(&file.file_id));
        let mut resp = self
            .http
            .get(url)
            .bearer_auth(self.worker.api_key.expose())
            .header(header::MACHINE_ID, &self.worker.machine_id)
            .send()
            .await
            .map_err(|e| format!("the {what} could not be downloaded: {}", short(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                return Err(too_big(what));
            }
            let body = resp.text().await.unwrap_or_default();
            let why = serde_json::from_str::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| body.chars().take(200).collect());
            return Err(format!(
                "the {what} could not be downloaded (the Worker answered {}): {why}",
                status.as_u16()
            ));
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(part)
            .map_err(|e| format!("the {what} could not be saved at {}: {e}", part.display()))?;
        let mut total: u64 = 0;
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| format!("the {what}'s download broke off: {}", short(&e)))?;
            let Some(chunk) = chunk else { break };
            total = total.saturating_add(chunk.len() as u64);
            if total > MAX_FILE_BYTES {
                return Err(too_big(what));
            }
            out.write_all(&chunk)
                .map_err(|e| format!("the {what} could not be saved at {}: {e}", part.display()))?;
        }
        out.sync_all()
            .map_err(|e| format!("the {what} could not be saved at {}: {e}", part.display()))?;
        Ok(())
    }
}

/// Removes the `.part` files a download left when the agent was killed in the middle of it
/// (its command is reported failed at start-up, never resumed): in the data directory's
/// `files/` and in each of `cwds`' `.ccr/files/`. Runs at start-up, before any download.
/// Returns how many were removed.
pub(crate) fn remove_leftovers<'a>(data_dir: &Path, cwds: impl Iterator<Item = &'a str>) -> usize {
    let mut dirs = vec![data_dir.join(FILES_DIR)];
    dirs.extend(cwds.map(|c| Path::new(c).join(CCR_DIR).join(FILES_DIR)));
    dirs.sort();
    dirs.dedup();
    let mut removed = 0;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = name.starts_with('.') && name.ends_with(".part");
            if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) => warn!("removing {}: {e}", entry.path().display()),
                }
            }
        }
    }
    removed
}

/// `<cwd>/.ccr/files/`, made with a `.gitignore` of `*` in `<cwd>/.ccr/`.
fn session_folder(cwd: &Path) -> std::io::Result<PathBuf> {
    let ccr = cwd.join(CCR_DIR);
    let dir = ccr.join(FILES_DIR);
    std::fs::create_dir_all(&dir)?;
    let ignore = ccr.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(
            &ignore,
            "# Files CCR saved for Claude Code from the chat; not part of the project.\n*\n",
        )?;
    }
    Ok(dir)
}

fn too_big(what: &str) -> String {
    format!(
        "the {what} is over the {} MB Telegram lets bots download, so it was not fetched",
        MAX_FILE_BYTES / (1024 * 1024)
    )
}

/// A reqwest error with its causes (the URL names the Worker and the file id: no secret).
fn short(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The saved file's name: its kind, the command id (letters, digits and `-` only) and an
/// extension — `jpg` for photos (Telegram sends them as JPEG), `ogg` for voice notes, and for
/// documents the sender's extension when it is 1 to 8 letters and digits, else `bin`.
pub(crate) fn file_name(command_id: &str, file: &FileRef) -> String {
    let id: String = command_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    let ext = match file.kind {
        FileKind::Photo => "jpg".to_owned(),
        FileKind::Voice => "ogg".to_owned(),
        FileKind::Document => file
            .name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase())
            .filter(|e| (1..=8).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_alphanumeric()))
            .unwrap_or_else(|| "bin".to_owned()),
    };
    let id = if id.is_empty() { "file".to_owned() } else { id };
    format!("{}-{id}.{ext}", file.kind.as_str())
}

/// `name` in `dir`, or `name` with `-2`, `-3`, … before its extension when taken.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    (2..1000)
        .map(|n| dir.join(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// The prompt typed for a saved file: the caption, then the path (the path alone without a
/// caption).
pub(crate) fn prompt(caption: &str, path: &Path) -> String {
    let caption = caption.trim();
    if caption.is_empty() {
        path.display().to_string()
    } else {
        format!("{caption} {}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(kind: FileKind, name: Option<&str>) -> FileRef {
        FileRef {
            file_id: "F".into(),
            size: Some(3),
            kind,
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn names_are_made_up_never_taken_from_the_chat() {
        assert_eq!(
            file_name("tg-17", &file(FileKind::Photo, None)),
            "photo-tg-17.jpg"
        );
        assert_eq!(
            file_name("tg-18", &file(FileKind::Voice, None)),
            "voice-tg-18.ogg"
        );
        assert_eq!(
            file_name("tg-19", &file(FileKind::Document, Some("Report.PDF"))),
            "document-tg-19.pdf"
        );
        for hostile in [
            "../../.bashrc",
            "a.tar.gz/../../x",
            "evil.sh\n",
            "x.toolongextension",
            "noext",
            ".",
        ] {
            let name = file_name("tg-20", &file(FileKind::Document, Some(hostile)));
            assert!(name.starts_with("document-tg-20."), "{name}");
            assert!(!name.contains('/') && !name.contains(".."), "{name}");
        }
        assert_eq!(
            file_name("../x/../y", &file(FileKind::Photo, None)),
            "photo-xy.jpg"
        );
    }

    #[test]
    fn a_taken_name_gets_a_number_and_the_folder_ignores_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = session_folder(tmp.path()).unwrap();
        assert_eq!(dir, tmp.path().join(".ccr/files"));
        let ignore = std::fs::read_to_string(tmp.path().join(".ccr/.gitignore")).unwrap();
        assert!(ignore.lines().any(|l| l == "*"));
        assert_eq!(
            free_name(&dir, "photo-tg-1.jpg"),
            dir.join("photo-tg-1.jpg")
        );
        std::fs::write(dir.join("photo-tg-1.jpg"), b"x").unwrap();
        assert_eq!(
            free_name(&dir, "photo-tg-1.jpg"),
            dir.join("photo-tg-1-2.jpg")
        );
    }

    #[test]
    fn leftover_parts_are_removed_and_nothing_else() {
        let data = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        let files = session_folder(cwd.path()).unwrap();
        std::fs::write(files.join(".photo-abc.jpg.part"), b"half").unwrap();
        std::fs::write(files.join("photo-abc.jpg"), b"kept").unwrap();
        std::fs::write(files.join("notes.part"), b"not ours: no leading dot").unwrap();
        let own = data.path().join(FILES_DIR);
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join(".doc-1.pdf.part"), b"half").unwrap();
        let cwd_str = cwd.path().to_str().unwrap();
        let gone = ["/nonexistent/dir", cwd_str, cwd_str];
        assert_eq!(remove_leftovers(data.path(), gone.into_iter()), 2);
        assert!(!files.join(".photo-abc.jpg.part").exists());
        assert!(files.join("photo-abc.jpg").exists());
        assert!(files.join("notes.part").exists());
        assert!(files.parent().unwrap().join(".gitignore").exists());
        assert_eq!(remove_leftovers(data.path(), gone.into_iter()), 0);
    }

    #[test]
    fn the_prompt_is_the_caption_then_the_path() {
        let p = Path::new("/w/.ccr/files/photo-tg-1.jpg");
        assert_eq!(
            prompt("what is this?", p),
            "what is this? /w/.ccr/files/photo-tg-1.jpg"
        );
        assert_eq!(prompt("  ", p), "/w/.ccr/files/photo-tg-1.jpg");
    }
}
