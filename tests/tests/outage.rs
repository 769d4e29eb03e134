//! Telegram down: nothing the router sends is lost. The real Worker on workerd, the Bot API
//! stand-in made unreachable (connections refused), then failing (every call 500), then back;
//! a test socket plays the machine.
//!
//! Every wait is on a condition (`wait_for`); the pauses between notifications only spread
//! them over the outage, and the checks never depend on their length.

use std::time::{Duration, Instant};

use ccr_e2e::socket::TestSocket;
use ccr_e2e::telegram::{BotApi, Update};
use ccr_e2e::wait_for;
use ccr_e2e::worker::{
    machine_key, start_with_bot, Worker, WorkerOptions, TEST_API_KEY, TEST_BOT_TOKEN,
};
use ccr_protocol::socket::SocketMessage;
use ccr_protocol::wire::route;
use reqwest::Method;
use serde_json::{json, Value};

const CHAT: i64 = 4242;
const T: Duration = Duration::from_secs(20);
/// How many notifications are sent while Telegram is down.
const NOTES: usize = 20;
/// How long Telegram is down in all (half refusing connections, half answering 500).
const OUTAGE: Duration = Duration::from_secs(30);
/// Telegram back → everything delivered: the outbox retries at least every 30 s.
const DRAIN: Duration = Duration::from_secs(150);

fn note_text(i: usize) -> String {
    format!("note {i:02} of the outage")
}

async fn notify(w: &Worker, text: &str) -> (u16, Value) {
    w.post_api(
        route::NOTIFICATIONS_SEND,
        TEST_API_KEY,
        &json!({"sessionId": "s1", "text": text, "buttons": false}),
    )
    .await
    .unwrap()
}

async fn outbox(w: &Worker) -> Value {
    let resp = w.admin(Method::GET, route::OUTBOX).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

/// The numbers of the outage's notes Telegram accepted, in the order it accepted them.
fn delivered_notes(bot: &BotApi) -> Vec<usize> {
    bot.calls_of("sendMessage")
        .into_iter()
        .filter(|c| c.ok)
        .filter_map(|c| {
            let text = c.params["text"].as_str()?.to_owned();
            let n = text.split("note ").nth(1)?.get(..2)?.parse().ok()?;
            Some(n)
        })
        .collect()
}

#[tokio::test]
async fn nothing_is_lost_while_telegram_is_down() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    w.register("s1", "devbox", Some("api")).await.unwrap();
    let mut sock: TestSocket = w.socket("devbox", TEST_API_KEY).await.unwrap();

    // Telegram up: the answer is the usual 200, unchanged.
    let (s, before) = notify(&w, "before the outage").await;
    assert_eq!(s, 200, "{before}");
    assert!(before["messageIds"].is_array() && before.get("queued").is_none());
    let before_id = before["messageId"].as_i64().unwrap();
    // A reply whose ack and result will come back during the outage.
    assert_eq!(
        w.send_update(&Update::reply(1, CHAT, before_id, "make test"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let (cid, _, command) = sock.next_command(T).await.unwrap();
    assert_eq!(command, "make test");

    // Down: connections refused for the first half, 500s for the second.
    let down_at = Instant::now();
    bot.stop_listening().await;
    let pace = OUTAGE / NOTES as u32;
    let mut ids = Vec::new();
    for i in 1..=NOTES {
        if i == NOTES / 2 + 1 {
            bot.answer_500s().await.unwrap();
        }
        if i == NOTES / 2 {
            // The agent reports back meanwhile: the ack (a 👍 reaction) and a failure notice.
            sock.send(&SocketMessage::Ack {
                command_id: cid.clone(),
            })
            .await
            .unwrap();
            sock.send(&SocketMessage::CommandResult {
                command_id: cid.clone(),
                success: false,
                error: Some("pane %7 is gone".into()),
            })
            .await
            .unwrap();
        }
        let (s, b) = notify(&w, &note_text(i)).await;
        assert_eq!(s, 202, "note {i}: {b}");
        assert_eq!(b["ok"], true);
        assert_eq!(b["queued"], true);
        let id = b["id"].as_str().unwrap().to_owned();
        assert!(!id.is_empty());
        ids.push(id);
        tokio::time::sleep(pace).await;
    }
    let status = outbox(&w).await;
    assert!(
        status["pending"].as_i64().unwrap() >= NOTES as i64,
        "{status}"
    );
    assert!(status["nextAttemptAt"].is_i64(), "{status}");
    assert!(delivered_notes(&bot).is_empty(), "nothing got through");
    let refused_or_failed = bot.calls().len();

    // Back.
    bot.come_back().await.unwrap();
    let back_at = Instant::now();
    let outage = back_at - down_at;
    let delivered = wait_for("all 20 notes delivered", DRAIN, || async {
        let d = delivered_notes(&bot);
        (d.len() >= NOTES).then_some(d)
    })
    .await
    .unwrap();
    let drained = back_at.elapsed();
    assert_eq!(
        delivered,
        (1..=NOTES).collect::<Vec<_>>(),
        "every note once, in order"
    );
    // The reaction and the failure notice were not lost either.
    bot.wait_message("pane %7 is gone", T).await.unwrap();
    wait_for("the 👍 reaction", T, || async {
        bot.calls_of("setMessageReaction")
            .into_iter()
            .find(|c| c.ok)
    })
    .await
    .unwrap();
    let status = wait_for("an empty outbox", T, || async {
        let s = outbox(&w).await;
        (s["pending"] == 0).then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(status["dropped"], 0, "{status}");
    assert!(status["nextAttemptAt"].is_null(), "{status}");

    // The 20th note's reply mapping was recorded when it was sent: a reply to it routes.
    let twentieth = bot
        .calls_of("sendMessage")
        .into_iter()
        .find(|c| {
            c.ok && c.params["text"]
                .as_str()
                .unwrap_or("")
                .contains(&note_text(NOTES))
        })
        .and_then(|c| c.message_id)
        .unwrap();
    assert_eq!(
        w.send_update(&Update::reply(2, CHAT, twentieth, "after the outage"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // (Skipping redeliveries of the first command, pushed again until its ack came.)
    let next_new = async |sock: &mut TestSocket| loop {
        let (id, session, command) = sock.next_command(T).await.unwrap();
        if id != cid {
            break (session, command);
        }
    };
    let (session, command) = next_new(&mut sock).await;
    assert_eq!(
        (session.as_str(), command.as_str()),
        ("s1", "after the outage")
    );
    // The /cmd token of a queued notification is its id.
    let cmd = Update::message(3, CHAT).text(&format!("/cmd {} pwd", ids[NOTES - 1]));
    w.send_update(&cmd).await.unwrap();
    let (_, command) = next_new(&mut sock).await;
    assert_eq!(command, "pwd");

    // Failed calls were logged, and never with the bot token (a runtime's fetch error may
    // quote the URL).
    let log = w.log();
    assert!(log.contains("not sent yet"), "the failures are logged");
    assert!(
        !log.contains(TEST_BOT_TOKEN),
        "the bot token leaked into the log"
    );

    println!(
        "outage figures: {NOTES} notifications sent during a {:.1} s outage ({} calls the stand-in answered 500 \
         while it listened), all answered 202; {} delivered, in order, {:.1} s after Telegram \
         came back; outbox: {status}",
        outage.as_secs_f64(),
        refused_or_failed,
        delivered.len(),
        drained.as_secs_f64()
    );
}

#[tokio::test]
async fn the_outbox_status_is_for_the_admin_key_only() {
    let (w, _bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let s = outbox(&w).await;
    assert_eq!(
        s,
        json!({"ok": true, "pending": 0, "sent": 0, "dropped": 0, "nextAttemptAt": null})
    );
    let key = machine_key("devbox");
    let resp = w
        .api_request(Method::GET, route::OUTBOX, Some(&key), Some("devbox"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = w
        .api_request(Method::GET, route::OUTBOX, None, None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

/// A Bot API call that never answers (a half-open connection in an outage) is given up after
/// the Worker's call timeout: the notification's request still answers, the lane is not held,
/// and the outbox sends the message on a later try — once.
#[tokio::test]
async fn a_bot_api_call_that_hangs_is_given_up_and_sent_again() {
    use ccr_e2e::telegram::Fault;
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    w.register("s1", "devbox", Some("api")).await.unwrap();
    bot.fail_next("sendMessage", Fault::Hang);
    // Answered (queued) instead of hanging with the call: within the client's 60 s timeout.
    let (s, b) = notify(&w, "sent through a hung connection").await;
    assert!(s == 202 || s == 200, "{s} {b}");
    let delivered = || {
        bot.calls_of("sendMessage")
            .into_iter()
            .filter(|c| {
                c.ok && c.params["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("sent through a hung connection"))
            })
            .count()
    };
    wait_for("the message sent on a later try", DRAIN, || async {
        (delivered() > 0).then_some(())
    })
    .await
    .unwrap();
    // The lane moves on: the next message goes out at once.
    let (s, b) = notify(&w, "after the hang").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(delivered(), 1);
    assert_eq!(
        bot.calls_of("sendMessage").iter().filter(|c| !c.ok).count(),
        1,
        "the hung call is the one that failed"
    );
}
