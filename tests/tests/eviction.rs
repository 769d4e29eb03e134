//! The wake-from-hibernation path, on the real Worker: `wrangler dev` (workerd) evicts a
//! RouterDO that only has hibernated sockets and no work, after some seconds without events.
//! The keepalive pings are answered by the hibernation auto-response and do not wake it.
//! After an eviction the object is rebuilt from storage, socket tags and attachments: a reply
//! must still reach the open socket, and an unacked command's retry alarm must still fire.
//!
//! Eviction is observed, not assumed: `GET /sessions` answers with `X-CCR-Instance`, a random
//! id each new instance of the object picks, so a changed id means the object was rebuilt.

use std::time::{Duration, Instant};

use ccr_e2e::socket::{Event, TestSocket};
use ccr_e2e::telegram::{BotApi, Update};
use ccr_e2e::wait_for;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use ccr_protocol::socket::{SocketMessage, PING_FRAME};
use ccr_protocol::wire::{header, route};
use reqwest::Method;

const CHAT: i64 = 5151;
/// How long an idle spell lasts before the test looks at the instance id.
const IDLE: Duration = Duration::from_secs(20);
/// Idle spells tried before the test gives up on seeing an eviction.
const SPELLS: usize = 5;
/// Generous: workerd shares two cores with other test processes.
const T: Duration = Duration::from_secs(30);

/// The instance id of the RouterDO that answers now (this wakes or builds it).
async fn instance(w: &Worker) -> String {
    let resp = w.admin(Method::GET, route::SESSIONS).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()
        .get(header::INSTANCE)
        .expect("GET /sessions names its instance")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Registers `session` on `machine` and sends it a notification; returns the message id.
async fn session_with_notification(w: &Worker, session: &str, machine: &str) -> i64 {
    w.register(session, machine, Some("evict")).await.unwrap();
    w.notify(session, "done").await.unwrap().message_id
}

/// Telegram delivers a reply to message `to`; returns the reply's own message id.
async fn reply(w: &Worker, update_id: i64, to: i64, text: &str) -> i64 {
    let update = Update::reply(update_id, CHAT, to, text);
    let status = w.send_update(&update).await.unwrap().status();
    assert_eq!(status, 200);
    update.json()["message"]["message_id"].as_i64().unwrap()
}

/// Keeps `sock` alive with pings only (every 5 s, as an agent would, if faster) for `idle`;
/// fails on anything but pongs.
async fn ping_only(sock: &mut TestSocket, idle: Duration) {
    let end = Instant::now() + idle;
    while Instant::now() < end {
        sock.send_text(PING_FRAME).await.unwrap();
        let slice = Duration::from_secs(5).min(end.saturating_duration_since(Instant::now()));
        let until = Instant::now() + slice;
        while Instant::now() < until {
            match sock
                .next(until.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(Event::Msg(SocketMessage::Pong)) => {}
                Ok(other) => panic!("expected only pongs while idle, got {other:?}"),
                Err(_) => break, // the slice ran out
            }
        }
    }
}

/// Waits for the 👍 on the user's reply `message_id`.
async fn wait_reaction(bot: &BotApi, message_id: i64) {
    wait_for("the 👍 reaction on the reply", T, || async {
        bot.calls_of("setMessageReaction")
            .into_iter()
            .find(|c| c.params["message_id"].as_i64() == Some(message_id))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_evicted_router_still_delivers_to_its_open_socket() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let note = session_with_notification(&w, "s-evict", "evictbox").await;
    let mut sock = w.socket("evictbox", TEST_API_KEY).await.unwrap();

    // Only pings for a while, then look: repeat until the object was rebuilt.
    let mut before = instance(&w).await;
    let mut evicted = false;
    for spell in 1..=SPELLS {
        ping_only(&mut sock, IDLE).await;
        let now = instance(&w).await;
        if now != before {
            eprintln!("eviction seen after {spell} idle spell(s) of {IDLE:?} with pings only");
            evicted = true;
            break;
        }
        before = now;
    }
    assert!(
        evicted,
        "the RouterDO was never evicted in {SPELLS} idle spells of {IDLE:?} (X-CCR-Instance stayed {before})"
    );

    // The rebuilt object finds the open socket by its tag and delivers the reply.
    let user_message = reply(&w, 900, note, "after the eviction").await;
    let (id, session, command) = sock.next_command(T).await.unwrap();
    assert_eq!(
        (session.as_str(), command.as_str()),
        ("s-evict", "after the eviction")
    );
    sock.send(&SocketMessage::Ack {
        command_id: id.clone(),
    })
    .await
    .unwrap();
    wait_reaction(&bot, user_message).await;
    sock.send(&SocketMessage::CommandResult {
        command_id: id,
        success: true,
        error: None,
    })
    .await
    .unwrap();

    // Acked once: never sent again (the first retry would be due after 1 s).
    sock.expect_silence(Duration::from_secs(5)).await.unwrap();
    assert_eq!(bot.calls_of("setMessageReaction").len(), 1);
}

#[tokio::test]
async fn the_retry_alarm_fires_after_an_eviction() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let note = session_with_notification(&w, "s-alarm", "alarmbox").await;
    let mut sock = w.socket("alarmbox", TEST_API_KEY).await.unwrap();

    let user_message = reply(&w, 901, note, "never acked at first").await;
    let (first, _, _) = sock.next_command(T).await.unwrap();
    let before = instance(&w).await;

    // Not acked: the queue sends it again after 1, 2, 4, 8, 16, 32 s, each send woken by the
    // alarm. Between two sends nothing but the alarm wakes the object, so once the gaps are
    // long enough it is evicted, and the next send can only come from the alarm of a new
    // instance.
    let mut last = Instant::now();
    let mut seen = before.clone();
    let mut woken_by_alarm = false;
    for _ in 0..8 {
        let (id, _, _) = sock.next_command(Duration::from_secs(70)).await.unwrap();
        assert_eq!(id, first, "only the one command is in the queue");
        let gap = last.elapsed();
        last = Instant::now();
        // The object that just sent is awake: its id tells whether it was rebuilt in the gap.
        let now = instance(&w).await;
        if gap >= Duration::from_secs(10) && now != seen {
            eprintln!("a redelivery after a {gap:?} gap came from a rebuilt object");
            woken_by_alarm = true;
            break;
        }
        seen = now;
    }
    assert!(
        woken_by_alarm,
        "no redelivery came from a rebuilt object (X-CCR-Instance stayed {seen}, first {before})"
    );

    sock.send(&SocketMessage::Ack {
        command_id: first.clone(),
    })
    .await
    .unwrap();
    wait_reaction(&bot, user_message).await;
    sock.send(&SocketMessage::CommandResult {
        command_id: first,
        success: true,
        error: None,
    })
    .await
    .unwrap();
    sock.expect_silence(Duration::from_secs(5)).await.unwrap();
}
