//! Delivery under faults: three real `ccr-agent`s with real tmux panes, a stream of distinct
//! commands sent as Telegram replies through the webhook, while agents are SIGKILLed, the
//! Worker is restarted on the same state, and sockets are cut without a close frame. At the
//! end it counts, from what the panes actually received: sent, delivered, lost, executed
//! twice, and delivery latency. `make test` runs about 100 commands; `make chaos` runs 1,000
//! (`CCR_CHAOS_COMMANDS`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccr_e2e::agent::Agent;
use ccr_e2e::proxy::CutProxy;
use ccr_e2e::telegram::Update;
use ccr_e2e::tmux::Tmux;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};

const CHAT: i64 = 4242;
const MACHINES: usize = 3;

/// A small deterministic PRNG (xorshift64*), seeded and printed, so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn token(i: usize) -> String {
    format!("chaos-{i:05}")
}

/// Every `chaos-NNNNN` token in a line (a line would hold two if the text of a command a
/// kill interrupted stayed in the input line and the next command was typed after it).
fn tokens(line: &str) -> Vec<usize> {
    let mut out = vec![];
    let mut rest = line;
    while let Some(pos) = rest.find("chaos-") {
        let digits: String = rest[pos + 6..].chars().take(5).collect();
        if digits.len() == 5 && digits.chars().all(|c| c.is_ascii_digit()) {
            if let Ok(n) = digits.parse() {
                out.push(n);
            }
        }
        rest = &rest[pos + 6..];
    }
    out
}

/// A reply to message `to`; its own message id is `update_id + 100_000`, which is how a
/// report in the chat (replying to it) names the command.
fn reply(update_id: i64, to: i64, text: &str) -> Update {
    Update::reply(update_id, CHAT, to, text).message_id(update_id + 100_000)
}

/// Posts an update until the Worker answers 200, as Telegram retries (the Worker may be down).
async fn deliver(w: &Worker, update: &Update) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let secret = w.webhook_secret();
    let body = update.json();
    loop {
        let sent = w
            .webhook_post(secret, Some(secret))
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await;
        if let Ok(r) = sent {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the webhook never accepted {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_under_faults() {
    let n: usize = std::env::var("CCR_CHAOS_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("CCR_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = Rng(seed);
    // A person replies a few times a second at most; sending faster only measures the agents'
    // backlog (each command is typed, then a 100 ms pause, then Enter, one at a time per pane).
    let interval = Duration::from_millis(
        std::env::var("CCR_CHAOS_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(150),
    );
    let kills_wanted = 30usize.max(n / 30);
    let restarts_wanted = 3usize;
    let cuts_wanted = 10usize.max(n / 50);
    println!("chaos: {n} commands, one every {interval:?}, seed {seed}");

    // Build the agent off the runtime's threads before any connection exists.
    tokio::task::spawn_blocking(ccr_e2e::agent::binary)
        .await
        .unwrap();
    let (mut w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let proxy = CutProxy::start(w.addr()).await.unwrap();

    let mut panes = vec![];
    let mut agents = vec![];
    let mut notes = vec![];
    for m in 0..MACHINES {
        let tmux = Tmux::start().unwrap();
        let machine = format!("chaos-m{m}");
        let agent = Agent::start(&proxy.url(), TEST_API_KEY, &machine).unwrap();
        agent
            .wait_connected(1, Duration::from_secs(60))
            .await
            .unwrap();
        let session = format!("sess-{m}");
        agent
            .start_session(&tmux, &tmux.pane_id, &session, &format!("/work/chaos-{m}"))
            .await
            .unwrap();
        let note = w.notify(&session, "chaos run").await;
        notes.push(
            note.unwrap_or_else(|e| panic!("notify failed: {e}"))
                .message_id,
        );
        panes.push(tmux);
        agents.push(agent);
    }

    // Watch the panes: first time each token is seen, and how many times in total.
    let first_seen: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let first_seen = first_seen.clone();
        let stop = stop.clone();
        let files: Vec<std::path::PathBuf> = panes.iter().map(|t| t.record_path()).collect();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for f in &files {
                    let text = std::fs::read_to_string(f).unwrap_or_default();
                    let now = Instant::now();
                    let mut seen = first_seen.lock().unwrap();
                    for line in text.lines() {
                        for t in tokens(line) {
                            seen.entry(t).or_insert(now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut sent_at: BTreeMap<usize, Instant> = BTreeMap::new();
    let (mut kills, mut restarts, mut replays) = (0usize, 0usize, 0usize);
    let kill_every = (n / kills_wanted).max(1);
    let cut_every = (n / cuts_wanted).max(1);
    for i in 0..n {
        let m = i % MACHINES;
        let update = reply(i as i64 + 1, notes[m], &token(i));
        let paced = tokio::time::sleep(interval);
        deliver(&w, &update).await;
        sent_at.insert(i, Instant::now());

        if i % kill_every == kill_every / 2 || (n - i) <= kills_wanted.saturating_sub(kills) {
            // SIGKILL a random agent at a random moment (0-300 ms from now), then restart it.
            let victim = rng.below(MACHINES as u64) as usize;
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            agents[victim].kill9().await;
            agents[victim].restart().unwrap();
            kills += 1;
        }
        if i % cut_every == cut_every / 3 {
            proxy.cut_all();
        }
        if restarts < restarts_wanted && i + 1 == (restarts + 1) * n / (restarts_wanted + 1) {
            w.restart().await.unwrap();
            restarts += 1;
        }
        if rng.below(10) == 0 && i > 0 {
            // Telegram retrying an update whose answer it did not see.
            let j = rng.below(i as u64) as usize;
            deliver(&w, &reply(j as i64 + 1, notes[j % MACHINES], &token(j))).await;
            replays += 1;
        }
        paced.await;
    }
    assert!(kills >= kills_wanted, "only {kills} kills");
    assert_eq!(restarts, restarts_wanted);

    // Interrupted typing is reported to the chat (the agent never types a command twice, so
    // a command killed mid-typing is finished as failed): those are accounted, not lost.
    let reported = || -> Vec<usize> {
        bot.calls_of("sendMessage")
            .into_iter()
            .filter(|c| {
                c.params["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("Could not type"))
            })
            .filter_map(|c| c.params["reply_parameters"]["message_id"].as_i64())
            .map(|id| (id - 100_000 - 1) as usize)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let seen = first_seen.lock().unwrap().len();
        let rep = reported();
        let accounted = (0..n)
            .filter(|i| first_seen.lock().unwrap().contains_key(i) || rep.contains(i))
            .count();
        if accounted == n || Instant::now() > deadline {
            println!("waited for the tail: {seen} seen, {} reported", rep.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything typed twice would show up within a few more seconds of retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.await;

    let mut counts: HashMap<usize, usize> = HashMap::new();
    for t in &panes {
        for line in t.lines() {
            for tok in tokens(&line) {
                *counts.entry(tok).or_default() += 1;
            }
        }
    }
    let seen = first_seen.lock().unwrap().clone();
    let rep = reported();
    let delivered = (0..n).filter(|i| counts.contains_key(i)).count();
    let twice = counts.values().filter(|c| **c > 1).count();
    let interrupted = (0..n)
        .filter(|i| !counts.contains_key(i) && rep.contains(i))
        .count();
    let lost: Vec<usize> = (0..n)
        .filter(|i| !counts.contains_key(i) && !rep.contains(i))
        .collect();
    let merged = panes
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| tokens(l).len() > 1)
        .count();
    let reasons: std::collections::BTreeSet<String> = bot
        .calls_of("sendMessage")
        .into_iter()
        .filter_map(|c| c.params["text"].as_str().map(str::to_owned))
        .filter(|t| t.contains("Could not type"))
        .map(|t| t.split(": ").last().unwrap_or_default().to_owned())
        .collect();
    println!("failure reasons reported: {reasons:?}; lines holding two commands: {merged}");
    let mut lat: Vec<Duration> = sent_at
        .iter()
        .filter_map(|(i, at)| seen.get(i).map(|s| s.saturating_duration_since(*at)))
        .collect();
    lat.sort();
    let table = format!(
        "\n| chaos ({n} commands, seed {seed}) | value |\n|---|---|\n\
         | sent | {n} |\n| delivered (seen in a pane) | {delivered} |\n\
         | interrupted mid-typing, reported in chat | {interrupted} |\n\
         | lost (neither seen nor reported) | {} |\n| executed twice | {twice} |\n\
         | lines holding two commands (a kill while the text was being typed) | {merged} |\n\
         | latency p50 | {:?} |\n| latency p99 | {:?} |\n\
         | agent SIGKILLs | {kills} |\n| Worker restarts | {restarts} |\n\
         | socket cuts (no close frame) | {} |\n| webhook replays | {replays} |\n",
        lost.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        proxy.cuts()
    );
    println!("{table}");
    if let Ok(dir) = std::env::var("CCR_CHAOS_REPORT") {
        let _ = std::fs::write(dir, &table);
    }
    for a in &agents {
        let log = a.log();
        assert!(!log.contains(TEST_API_KEY), "the agent logged the API key");
    }
    assert!(
        lost.is_empty() && twice == 0,
        "lost {:?}, twice {twice}{table}",
        lost
    );
    // The text of a command a kill interrupted is cleared from the input line before the
    // next command (the agent's dirty-line Ctrl-U), so no line holds two commands.
    assert_eq!(merged, 0, "lines holding two commands{table}");
}
