//! Files and photos from the chat: the real Worker, the real agent (with its machine key) and
//! real tmux, with Telegram's `getFile` and file downloads served by the Bot API stand-in. A
//! photo, document or voice note replying to a notification lands in the session's
//! `.ccr/files/` byte for byte and its path is typed; a file over the bots' 20 MB limit and a
//! failed download are answered in the chat with nothing typed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccr_e2e::agent::Agent;
use ccr_e2e::session::{wait_raw_settled, RawSession};
use ccr_e2e::socket::Event;
use ccr_e2e::telegram::{BotApi, Update, BOT_FILE_LIMIT};
use ccr_e2e::tmux::Tmux;
use ccr_e2e::worker::{machine_key, start_with_bot, Worker, WorkerOptions, TEST_BOT_TOKEN};
use ccr_protocol::socket::{FileKind, SocketMessage};
use ccr_protocol::wire::route;
use reqwest::Method;

const CHAT: i64 = 4242;
/// Generous: workerd and the agent share two cores with other test processes.
const T: Duration = Duration::from_secs(30);

/// Bytes that are not all alike, so a truncated or reordered copy cannot pass.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Waits until the pane's raw recording holds as many bytes as `want`, and nothing more
/// arrives.
async fn wait_raw(record: &Path, want: &[u8]) -> Vec<u8> {
    wait_raw_settled(record, want, T)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A Worker, its Bot API stand-in, a recording pane and an agent (machine key) with session
/// `sess-files` working in a temporary directory; the notification's message id.
struct Stand {
    w: Worker,
    bot: BotApi,
    _tmux: Tmux,
    record: PathBuf,
    agent: Agent,
    cwd: tempfile::TempDir,
    note: i64,
}

async fn stand() -> Stand {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let RawSession {
        agent,
        record,
        pane: _,
        tmux,
    } = RawSession::start(
        &w.base_url(),
        &machine_key("devbox"),
        "devbox",
        "sess-files",
        &cwd.path().to_string_lossy(),
        T,
    )
    .await
    .unwrap();
    let note = w.notify("sess-files", "done").await.unwrap().message_id;
    Stand {
        w,
        bot,
        _tmux: tmux,
        record,
        agent,
        cwd,
        note,
    }
}

impl Stand {
    fn saved(&self, name: &str) -> PathBuf {
        self.cwd.path().join(".ccr").join("files").join(name)
    }

    /// Asserts the pane received nothing (the chat answer is sent after the agent's result,
    /// so by then anything it typed would be there).
    fn nothing_typed(&self) {
        let raw = std::fs::read(&self.record).unwrap();
        assert!(raw.is_empty(), "typed: {:?}", String::from_utf8_lossy(&raw));
    }
}

#[tokio::test]
async fn a_photo_with_a_caption_lands_byte_identical_and_its_path_is_typed() {
    let s = stand().await;
    let large = pattern(300_000, 7);
    s.bot
        .add_file("ph-small", "photos/file_0.jpg", pattern(900, 1));
    s.bot
        .add_file("ph-large", "photos/file_1.jpg", large.clone());
    let update = Update::message(1, CHAT)
        .photo_sizes(&[
            ("ph-small", 900, 90, 67),
            ("ph-large", large.len() as u64, 1280, 960),
        ])
        .caption("what is wrong in this screenshot?")
        .reply_to(s.note);
    s.w.deliver(&update).await;

    let path = s.saved("photo-tg-1.jpg");
    let want = format!("what is wrong in this screenshot? {}\r", path.display());
    let got = wait_raw(&s.record, want.as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&got), want);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        large,
        "the saved photo differs"
    );
    // The largest size only, fetched once; the folder ignores itself in git; no .part left.
    assert_eq!(s.bot.downloads(), vec!["photos/file_1.jpg".to_owned()]);
    let ignore = std::fs::read_to_string(s.cwd.path().join(".ccr/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
    let names: Vec<String> = std::fs::read_dir(s.saved(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["photo-tg-1.jpg".to_owned()]);
    // Delivered like a reply: the 👍 on the photo's message once the agent stored it.
    let reaction = s.bot.wait_call("setMessageReaction", T).await.unwrap();
    assert_eq!(reaction.params["message_id"], 1 + 10_000);
    // The token never reaches the agent.
    assert!(!s.agent.log().contains(TEST_BOT_TOKEN));
}

#[tokio::test]
async fn a_document_without_caption_types_its_path_and_a_voice_note_says_no_transcription() {
    let s = stand().await;
    let doc = pattern(4_321, 3);
    s.bot.add_file("doc-1", "documents/file_7.txt", doc.clone());
    s.w.deliver(
        &Update::message(2, CHAT)
            .document("doc-1", "../../etc/passwd.TXT", doc.len() as u64)
            .reply_to(s.note),
    )
    .await;
    // The name is made up (only a short extension comes from the sender's file name).
    let path = s.saved("document-tg-2.txt");
    let want = format!("{}\r", path.display());
    assert_eq!(wait_raw(&s.record, want.as_bytes()).await, want.as_bytes());
    assert_eq!(std::fs::read(&path).unwrap(), doc);

    std::fs::write(&s.record, "").unwrap();
    let voice = pattern(2_000, 9);
    s.bot.add_file("voice-1", "voice/file_8.oga", voice.clone());
    s.w.deliver(
        &Update::message(3, CHAT)
            .voice("voice-1", voice.len() as u64)
            .reply_to(s.note),
    )
    .await;
    let answer = s.bot.wait_message("not transcribed", T).await.unwrap();
    assert_eq!(answer["reply_parameters"]["message_id"], 3 + 10_000);
    let path = s.saved("voice-tg-3.ogg");
    let want = format!("{}\r", path.display());
    assert_eq!(wait_raw(&s.record, want.as_bytes()).await, want.as_bytes());
    assert_eq!(std::fs::read(&path).unwrap(), voice);
}

#[tokio::test]
async fn files_over_the_limit_and_failed_downloads_are_answered_and_nothing_is_typed() {
    let s = stand().await;
    // The update says it is too big: refused before queueing, never fetched.
    s.w.deliver(
        &Update::message(4, CHAT)
            .document("huge", "video.mp4", BOT_FILE_LIMIT as u64 + 1)
            .reply_to(s.note),
    )
    .await;
    let answer = s
        .bot
        .wait_message("Not sent: the file is", T)
        .await
        .unwrap();
    assert!(
        answer["text"].as_str().unwrap().contains("20 MB"),
        "{answer}"
    );
    assert!(s.bot.calls_of("getFile").is_empty());

    // The update does not say (or says less), getFile refuses it: the agent's failure.
    s.bot
        .add_file("big", "documents/big.bin", vec![0; BOT_FILE_LIMIT + 1]);
    s.w.deliver(
        &Update::message(5, CHAT)
            .document("big", "big.bin", 1_000)
            .reply_to(s.note),
    )
    .await;
    let answer = s
        .bot
        .wait_message("20 MB Telegram lets bots", T)
        .await
        .unwrap();
    assert!(
        answer["text"].as_str().unwrap().contains("Could not type"),
        "{answer}"
    );
    assert!(s.bot.downloads().is_empty(), "{:?}", s.bot.downloads());

    // getFile answers, the download fails (404 from Telegram's file server).
    s.bot.add_file("lost", "photos/file_9.jpg", pattern(500, 2));
    s.bot.lose_file("lost");
    s.w.deliver(
        &Update::message(6, CHAT)
            .photo_sizes(&[("lost", 500, 90, 90)])
            .caption("look")
            .reply_to(s.note),
    )
    .await;
    let answer = s
        .bot
        .wait_message("could not be downloaded", T)
        .await
        .unwrap();
    assert!(answer["text"].as_str().unwrap().contains("404"), "{answer}");
    assert_eq!(answer["reply_parameters"]["message_id"], 6 + 10_000);
    s.nothing_typed();
    // Nothing half-written is left behind.
    let left: Vec<_> = std::fs::read_dir(s.saved(""))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn only_the_machine_a_file_was_sent_to_may_fetch_it() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    w.register("sess-x", "devbox", None).await.unwrap();
    let note = w.notify("sess-x", "done").await.unwrap().message_id;
    let bytes = pattern(1_234, 5);
    bot.add_file("ph-x", "photos/file_3.jpg", bytes.clone());
    // Playing the agent by hand: the frame arrives, nothing is acked or fetched yet.
    let mut sock = w.socket("devbox", &machine_key("devbox")).await.unwrap();
    w.deliver(
        &Update::message(7, CHAT)
            .photo_sizes(&[("ph-x", 1_234, 10, 10)])
            .reply_to(note),
    )
    .await;
    let frame = loop {
        match sock.next(T).await.unwrap() {
            Event::Msg(SocketMessage::Pong) => continue,
            other => break other,
        }
    };
    let Event::Msg(SocketMessage::File { file, caption, .. }) = frame else {
        panic!("expected a file frame, got {frame:?}");
    };
    assert_eq!(
        (file.file_id.as_str(), file.kind, caption.as_str()),
        ("ph-x", FileKind::Photo, "")
    );
    let path = route::file("ph-x");
    let get = |key: Option<String>, machine: &str| {
        w.api_request(Method::GET, &path, key.as_deref(), Some(machine))
            .send()
    };
    assert_eq!(get(None, "devbox").await.unwrap().status(), 401);
    let other = get(Some(machine_key("laptop")), "laptop").await.unwrap();
    assert_eq!(other.status(), 404, "another machine fetched the file");
    assert!(bot.calls_of("getFile").is_empty());
    let unknown = w
        .api_request(
            Method::GET,
            &route::file("not-sent"),
            Some(&machine_key("devbox")),
            Some("devbox"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let own = get(Some(machine_key("devbox")), "devbox").await.unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(own.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn a_file_stored_before_a_crash_is_fetched_and_typed_once_after_restart() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let tmux = Tmux::start().unwrap();
    let (pane, record) = tmux.add_raw_pane("claude").await.unwrap();
    // The first run stores and acks commands but does not execute them, so SIGKILL lands
    // between storing the file command and fetching the file.
    let mut agent = Agent::start_with(
        &w.base_url(),
        &machine_key("devbox"),
        "devbox",
        vec![("CCR_HOLD_COMMANDS".into(), "1".into())],
    )
    .unwrap();
    agent.wait_connected(1, T).await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    agent
        .start_session(&tmux, &pane, "sess-crash", &cwd.path().to_string_lossy())
        .await
        .unwrap();
    let note = w.notify("sess-crash", "done").await.unwrap().message_id;
    let bytes = pattern(70_000, 11);
    bot.add_file("ph-crash", "photos/file_5.jpg", bytes.clone());
    w.deliver(
        &Update::message(8, CHAT)
            .photo_sizes(&[("ph-crash", bytes.len() as u64, 800, 600)])
            .caption("after the crash")
            .reply_to(note),
    )
    .await;
    agent
        .wait_log("command stored and acked", 1, T)
        .await
        .unwrap();
    agent.kill9().await;
    assert!(bot.downloads().is_empty());

    agent.env.clear();
    agent.restart().unwrap();
    let path = cwd.path().join(".ccr/files/photo-tg-8.jpg");
    let want = format!("after the crash {}\r", path.display());
    assert_eq!(wait_raw(&record, want.as_bytes()).await, want.as_bytes());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    // Another restart (and the Worker's view of the command) fetch and type nothing more.
    // What a download killed half-way leaves behind is removed when the agent starts.
    agent.kill9().await;
    let leftover = cwd.path().join(".ccr/files/.photo-tg-9.jpg.part");
    std::fs::write(&leftover, b"half a photo").unwrap();
    agent.restart().unwrap();
    agent.wait_connected(3, T).await.unwrap();
    assert!(
        !leftover.exists(),
        "the unfinished download is removed at start-up"
    );
    let again = w
        .notify("sess-crash", "still there?")
        .await
        .unwrap()
        .message_id;
    w.reply(CHAT, 9, again, "next").await;
    let both = format!("{want}next\r");
    assert_eq!(wait_raw(&record, both.as_bytes()).await, both.as_bytes());
    assert_eq!(bot.downloads(), vec!["photos/file_5.jpg".to_owned()]);
}
