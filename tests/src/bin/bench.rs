//! `make bench`: latency, throughput and footprint of the whole system on local workerd,
//! measured side by side so the figures read as ratios rather than absolutes.
//!
//! Everything runs on 127.0.0.1: the release Worker under `wrangler dev`, the Bot API
//! stand-in, a local HTTP target, release `relay-bridge` and `ccr-agent`, and a private tmux
//! server. Prints one table and writes it to `target/bench/bench.md` and `bench.json`.
//!
//! Knobs (environment): `BENCH_SECS` (measured seconds per relay cell, default 5),
//! `BENCH_WARMUP_SECS` (1), `BENCH_REPLIES` (200), `BENCH_ROUNDS` (5 reconnect rounds),
//! `BENCH_QUEUED` (10 commands queued per round).

use ccr_protocol::wire::route;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::routing::get;
use axum::Router;
use ccr_e2e::agent::Agent;
use ccr_e2e::bridge::Bridge;
use ccr_e2e::telegram::Update;
use ccr_e2e::tmux::Tmux;
use ccr_e2e::worker::{start_with_bot, Worker, WorkerOptions, TEST_API_KEY};
use ccr_e2e::{wait_for, workspace_root};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const CHAT: i64 = 4242;
/// Caller counts for the relay comparison.
const CALLERS: [usize; 3] = [1, 16, 64];
/// Every wait in the bench is bounded, so it always stops by itself.
const T: Duration = Duration::from_secs(60);
/// The body the target answers (small: this measures the path, not the bandwidth).
const TARGET_BODY: &str = r#"{"ok":true,"bench":"0123456789abcdef0123456789abcdef"}"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Load generation.

/// What one load cell measured: latencies in microseconds of the requests that started and
/// ended inside the measured window.
struct Cell {
    hist: Histogram<u64>,
    errors: u64,
    secs: f64,
}

impl Cell {
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    fn rps(&self) -> f64 {
        self.hist.len() as f64 / self.secs
    }
    fn json(&self) -> Value {
        json!({
            "n": self.hist.len(), "errors": self.errors,
            "p50_ms": self.ms(0.5), "p90_ms": self.ms(0.9), "p99_ms": self.ms(0.99),
            "max_ms": self.hist.max() as f64 / 1000.0, "rps": self.rps(),
        })
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 120 s at 3 significant digits; cannot fail for these bounds.
    Histogram::new_with_bounds(1, 120_000_000, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

/// One GET as a caller makes it; the body is read to the end.
async fn one(req: reqwest::RequestBuilder) -> bool {
    match req.send().await {
        Ok(r) => {
            let ok = r.status().is_success();
            r.bytes().await.is_ok() && ok
        }
        Err(_) => false,
    }
}

/// `callers` closed-loop callers GET `url` for `warmup` (not recorded) and then `measure`.
async fn load(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    callers: usize,
    warmup: Duration,
    measure: Duration,
) -> Cell {
    let start = Instant::now() + warmup;
    let end = start + measure;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let http = http.clone();
        let url = url.to_owned();
        let bearer = bearer.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let mut errors = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let mut req = http.get(&url);
                if let Some(b) = &bearer {
                    req = req.bearer_auth(b);
                }
                let ok = one(req).await;
                let t1 = Instant::now();
                if t0 >= start && t1 <= end {
                    if ok {
                        let us = (t1 - t0).as_micros().max(1);
                        let _ = hist.record(u64::try_from(us).unwrap_or(u64::MAX));
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = new_hist();
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = hist.add(h);
            errors += e;
        }
    }
    Cell {
        hist,
        errors,
        secs: measure.as_secs_f64(),
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: the target, the bridge, resident memory.

async fn start_target() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = Router::new().route(
        "/bench",
        get(|| async { ([("content-type", "application/json")], TARGET_BODY) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), task))
}

/// Resident memory of `pid` in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples the RSS of `pid` every 20 ms until dropped; [`RssPeak::peak`] is the highest seen.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssPeak { peak, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// The router's side: webhook updates and the pane's recording.

/// Telegram delivers a reply to message `to`.
async fn reply(w: &Worker, update_id: i64, to: i64, text: &str) -> anyhow::Result<()> {
    let status = w
        .send_update(&Update::reply(update_id, CHAT, to, text))
        .await?
        .status();
    if !status.is_success() {
        bail!("webhook answered {status}");
    }
    Ok(())
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// Spins (250 µs steps, off the runtime) until `path` holds `n` lines; returns when it did.
async fn until_lines(path: &Path, n: usize, timeout: Duration) -> anyhow::Result<Instant> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        loop {
            if line_count(&path) >= n {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {n} lines in the pane");
            }
            std::thread::sleep(Duration::from_micros(250));
        }
    })
    .await?
}

/// Spins until the agent's log shows its `n`th connection; returns when it did.
async fn until_connected(agent: &Agent, n: usize, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if agent.log().matches("connected to the Worker").count() >= n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("agent connection #{n} not seen; log:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

// ---------------------------------------------------------------------------------------------

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn gzip_len(path: &Path) -> anyhow::Result<u64> {
    let out = std::process::Command::new("gzip")
        .args(["-9", "-c"])
        .arg(path)
        .output()
        .context("running gzip")?;
    Ok(out.stdout.len() as u64)
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

struct Row {
    what: String,
    callers: String,
    p50: String,
    p90: String,
    p99: String,
    rps: String,
    n: String,
}

fn cell_row(what: &str, callers: usize, c: &Cell) -> Row {
    Row {
        what: what.into(),
        callers: callers.to_string(),
        p50: format!("{:.2}", c.ms(0.5)),
        p90: format!("{:.2}", c.ms(0.9)),
        p99: format!("{:.2}", c.ms(0.99)),
        rps: format!("{:.0}", c.rps()),
        n: if c.errors > 0 {
            format!("{} ({} err)", c.hist.len(), c.errors)
        } else {
            c.hist.len().to_string()
        },
    }
}

fn main() -> anyhow::Result<()> {
    // The binaries under test are release builds; the harness reads this when it builds them.
    if !ccr_e2e::bins::release() {
        eprintln!("bench: CCR_E2E_RELEASE=1 is not set: using debug binaries (run `make bench`)");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let secs = Duration::from_secs(env_u64("BENCH_SECS", 5));
    let warmup = Duration::from_secs(env_u64("BENCH_WARMUP_SECS", 1));
    let replies = env_u64("BENCH_REPLIES", 200) as usize;
    let rounds = env_u64("BENCH_ROUNDS", 5) as usize;
    let queued = env_u64("BENCH_QUEUED", 10) as usize;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let started = Instant::now();
    // Others' processes share the cores: the load average says how quiet the machine was.
    let load_before = loadavg();

    let wasm = root.join("crates/router-worker/build/index_bg.wasm");
    if !wasm.exists() {
        bail!("no Worker build at {} (run `make build`)", wasm.display());
    }
    // Build (or find) the release binaries before anything is timed.
    let bridge_bin = tokio::task::spawn_blocking(ccr_e2e::bins::relay_bridge).await?;
    let agent_bin = tokio::task::spawn_blocking(ccr_e2e::agent::binary).await?;
    eprintln!(
        "bench: {} and {}",
        bridge_bin.display(),
        agent_bin.display()
    );

    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT]).await?;
    let (target, _target_task) = start_target().await?;
    let max_callers = CALLERS.iter().copied().max().unwrap_or(1);
    let concurrency = max_callers.to_string();
    let mut bridge = Bridge::start_with_env(
        &w,
        &target,
        None,
        &["--concurrency", &concurrency],
        &[("RUST_LOG", "warn")],
    )
    .await?;
    let bridge_pid = bridge.pid().context("bridge pid")?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let relay_url = w.url("/proxy/bench");
    let direct_url = format!("{target}/bench");
    let worker_url = w.url(route::SESSIONS);
    wait_for("the relay to answer", T, || async {
        one(http.get(&relay_url)).await.then_some(())
    })
    .await
    .with_context(|| bridge.log())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bridge_idle = rss_kib(bridge_pid).unwrap_or(0);

    // Relay vs direct vs one Worker hop, at each caller count.
    let mut rows = Vec::new();
    let mut relay_json = Vec::new();
    let mut bridge_load = 0;
    let mut relay_p50_1 = f64::NAN;
    let mut hop_p50_1 = f64::NAN;
    let mut tput_ratio_64 = f64::NAN;
    for &c in &CALLERS {
        eprintln!("bench: relay cells at {c} caller(s)");
        let direct = load(&http, &direct_url, None, c, warmup, secs).await;
        let hop = load(&http, &worker_url, Some(TEST_API_KEY), c, warmup, secs).await;
        let peak = RssPeak::start(bridge_pid);
        let relay = load(&http, &relay_url, None, c, warmup, secs).await;
        bridge_load = bridge_load.max(peak.finish().await);
        rows.push(cell_row("direct to the target", c, &direct));
        rows.push(cell_row("Worker → RouterDO (GET /sessions)", c, &hop));
        rows.push(cell_row("relay: /proxy → bridge → target", c, &relay));
        let r_direct = relay.ms(0.5) / direct.ms(0.5);
        let r_hop = relay.ms(0.5) / hop.ms(0.5);
        let r_tput = relay.rps() / hop.rps();
        rows.push(Row {
            what: "ratio relay ÷ direct, relay ÷ Worker hop (p50); relay ÷ hop (req/s)".into(),
            callers: c.to_string(),
            p50: format!("{r_direct:.1}× / {r_hop:.1}×"),
            p90: format!(
                "{:.1}× / {:.1}×",
                relay.ms(0.9) / direct.ms(0.9),
                relay.ms(0.9) / hop.ms(0.9)
            ),
            p99: format!(
                "{:.1}× / {:.1}×",
                relay.ms(0.99) / direct.ms(0.99),
                relay.ms(0.99) / hop.ms(0.99)
            ),
            rps: format!("{:.0} %", r_tput * 100.0),
            n: String::new(),
        });
        if c == 1 {
            relay_p50_1 = relay.ms(0.5);
            hop_p50_1 = hop.ms(0.5);
        }
        if c == max_callers {
            tput_ratio_64 = r_tput;
        }
        relay_json.push(json!({
            "callers": c, "direct": direct.json(), "workerHop": hop.json(), "relay": relay.json(),
            "relayOverDirectP50": r_direct, "relayOverHopP50": r_hop, "relayOverHopRps": r_tput,
        }));
    }
    bridge.kill().await;
    rows.extend(relay_transports(&w, warmup, secs).await?);
    rows.extend(long_poll_download_target().await?);
    rows.extend(upload_streaming(&w).await);

    // The router: webhook POST → the line in the pane, with no pause before Enter.
    eprintln!("bench: router, {replies} replies");
    let tmux = Tmux::start()?;
    let mut agent = Agent::start_with(
        &w.base_url(),
        TEST_API_KEY,
        "benchbox",
        vec![("CCR_INJECT_DELAY_MS".into(), "0".into())],
    )?;
    agent.wait_connected(1, T).await?;
    agent
        .start_session(&tmux, &tmux.pane_id, "bench-sess", "/home/ada/bench")
        .await?;
    let msg = w.notify("bench-sess", "bench").await?.message_id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let agent_pid = agent.pid().context("agent pid")?;
    let agent_idle = rss_kib(agent_pid).unwrap_or(0);
    let record = tmux.record_path();
    let mut update_id = 1_000_i64;
    let warm_replies = 20;
    let mut pane = new_hist();
    let mut hook_only = new_hist();
    let peak = RssPeak::start(agent_pid);
    for i in 0..warm_replies + replies {
        update_id += 1;
        let before = line_count(&record);
        let t0 = Instant::now();
        reply(&w, update_id, msg, &format!("bench reply {i}")).await?;
        let t_hook = Instant::now();
        let t_pane = until_lines(&record, before + 1, T).await?;
        if i >= warm_replies {
            let _ = pane.record(micros(t_pane - t0));
            let _ = hook_only.record(micros(t_hook - t0));
        }
    }
    let agent_load = peak.finish().await;
    // The floor under the agent's part: one `tmux` client call, as it makes two per command.
    let mut tmux_call = new_hist();
    for i in 0..60 {
        let t0 = Instant::now();
        tmux.tmux(&["display-message", "-p", "-t", &tmux.pane_id, "#{pane_id}"])?;
        if i >= 10 {
            let _ = tmux_call.record(micros(t0.elapsed()));
        }
    }
    let lines = tmux.lines();
    let want = format!("bench reply {}", warm_replies + replies - 1);
    if lines.last() != Some(&want) {
        bail!("the pane's last line is {:?}, not {want:?}", lines.last());
    }

    // Commands queued while the agent was away, delivered when it reconnects.
    eprintln!("bench: reconnect, {rounds} rounds of {queued} queued commands");
    let mut connect_to_all = new_hist();
    let mut spawn_to_all = new_hist();
    for round in 0..rounds {
        agent.kill9().await;
        // Let the Worker see the socket close, so these are queued, not pushed to a dead socket.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = line_count(&record);
        for k in 0..queued {
            update_id += 1;
            reply(&w, update_id, msg, &format!("queued {round}.{k}")).await?;
        }
        let t_spawn = Instant::now();
        agent.restart()?;
        let t_conn = until_connected(&agent, round + 2, T).await?;
        let t_all = until_lines(&record, before + queued, T).await?;
        let _ = connect_to_all.record(micros(t_all - t_conn));
        let _ = spawn_to_all.record(micros(t_all - t_spawn));
    }
    let approvals = approvals(&w, &bot, &agent, hop_p50_1).await?;
    rows.extend(previews(&w, &bot, msg, &target).await?);
    drop(agent);
    drop(tmux);
    drop(w);

    // Footprint of the Worker's code.
    let wasm_raw = std::fs::metadata(&wasm)?.len();
    let wasm_gz = gzip_len(&wasm)?;

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let webhook_p50 = ms(&pane, 0.5);
    let redeliver_max = connect_to_all.max() as f64 / 1000.0;
    rows.push(Row {
        what: "router: webhook POST → line in the tmux pane (inject delay 0)".into(),
        callers: "1".into(),
        p50: format!("{webhook_p50:.2}"),
        p90: format!("{:.2}", ms(&pane, 0.9)),
        p99: format!("{:.2}", ms(&pane, 0.99)),
        rps: String::new(),
        n: pane.len().to_string(),
    });
    rows.push(Row {
        what: "router: webhook POST → its 200 (part of the above)".into(),
        callers: "1".into(),
        p50: format!("{:.2}", ms(&hook_only, 0.5)),
        p90: format!("{:.2}", ms(&hook_only, 0.9)),
        p99: format!("{:.2}", ms(&hook_only, 0.99)),
        rps: String::new(),
        n: hook_only.len().to_string(),
    });
    rows.push(Row {
        what: "floor: one `tmux display-message` client call (the agent makes 3 per command: identity check, text, Enter)"
            .into(),
        callers: "1".into(),
        p50: format!("{:.2}", ms(&tmux_call, 0.5)),
        p90: format!("{:.2}", ms(&tmux_call, 0.9)),
        p99: format!("{:.2}", ms(&tmux_call, 0.99)),
        rps: String::new(),
        n: tmux_call.len().to_string(),
    });
    rows.push(Row {
        what: format!("router: agent connected → all {queued} queued commands in the pane"),
        callers: "-".into(),
        p50: format!("{:.2}", ms(&connect_to_all, 0.5)),
        p90: String::new(),
        p99: format!("max {redeliver_max:.2}"),
        rps: String::new(),
        n: format!("{} rounds", connect_to_all.len()),
    });
    rows.push(Row {
        what: format!("router: agent process start → all {queued} queued commands in the pane"),
        callers: "-".into(),
        p50: format!("{:.2}", ms(&spawn_to_all, 0.5)),
        p90: String::new(),
        p99: format!("max {:.2}", spawn_to_all.max() as f64 / 1000.0),
        rps: String::new(),
        n: format!("{} rounds", spawn_to_all.len()),
    });
    rows.extend(paste_and_photo_rows(replies).await?);

    rows.extend(approvals.rows);
    let mut targets = vec![
        (
            "relay p50 at 1 caller ≤ 8 ms",
            format!("{relay_p50_1:.2} ms"),
            relay_p50_1 <= 8.0,
        ),
        (
            "relay req/s at 64 callers ≥ 40 % of the Worker hop's",
            format!("{:.0} %", tput_ratio_64 * 100.0),
            tput_ratio_64 >= 0.4,
        ),
        (
            "webhook → pane p50 ≤ 20 ms",
            format!("{webhook_p50:.2} ms"),
            webhook_p50 <= 20.0,
        ),
        (
            "redelivery after reconnect ≤ 1 s (max over rounds)",
            format!("{redeliver_max:.0} ms"),
            redeliver_max <= 1000.0,
        ),
        (
            "ccr-agent RSS idle ≤ 10 MB",
            format!("{:.1} MiB", agent_idle as f64 / 1024.0),
            agent_idle <= 10 * 1024,
        ),
        (
            "wasm ≤ 300 KB gzipped",
            format!("{:.1} KB", wasm_gz as f64 / 1000.0),
            wasm_gz <= 300_000,
        ),
    ];
    targets.extend(approvals.targets);

    // The report.
    let commit = sh("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let cpu = sh(
        "sh",
        &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
    );
    let mut md = String::new();
    let _ = writeln!(
        md,
        "CCR bench — {date}, commit {commit}{}, {cores} cores ({cpu}), local workerd, release builds\n",
        if dirty { " (+ uncommitted changes)" } else { "" }
    );
    let _ = writeln!(
        md,
        "| Measure | Callers | p50 ms | p90 ms | p99 ms | req/s | n |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.what, r.callers, r.p50, r.p90, r.p99, r.rps, r.n
        );
    }
    let _ = writeln!(md, "\n| Footprint | Idle | Under load |");
    let _ = writeln!(md, "|---|---:|---:|");
    let _ = writeln!(
        md,
        "| ccr-agent RSS | {:.1} MiB | {:.1} MiB (peak over the replies) |",
        agent_idle as f64 / 1024.0,
        agent_load as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "| relay-bridge RSS | {:.1} MiB | {:.1} MiB (peak over the relay cells) |",
        bridge_idle as f64 / 1024.0,
        bridge_load as f64 / 1024.0
    );
    let _ = writeln!(
        md,
        "| Worker wasm (index_bg.wasm) | {wasm_raw} B raw | {wasm_gz} B gzip -9 |"
    );
    let _ = writeln!(md, "\n| Target | Measured | |");
    let _ = writeln!(md, "|---|---:|---|");
    for (what, got, ok) in &targets {
        let _ = writeln!(md, "| {what} | {got} | {} |", mark(*ok));
    }
    let _ = writeln!(
        md,
        "\nRelay cells: {}s measured after {}s warm-up each, closed-loop callers, bridge \
         --concurrency {max_callers}. Bench took {:.0} s; 1-min load average {load_before} at \
         the start, {} at the end.",
        secs.as_secs(),
        warmup.as_secs(),
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    print!("{md}");
    std::fs::write(out_dir.join("bench.md"), &md)?;

    let report = json!({
        "loadAvgStart": load_before, "loadAvgEnd": loadavg(),
        "date": date, "commit": commit, "dirty": dirty, "cores": cores, "cpu": cpu,
        "measureSecs": secs.as_secs(), "warmupSecs": warmup.as_secs(),
        "relay": relay_json,
        "router": {
            "injectDelayMs": 0,
            "webhookToPane": hist_json(&pane),
            "webhookResponse": hist_json(&hook_only),
            "tmuxClientCall": hist_json(&tmux_call),
            "reconnectToAllDelivered": hist_json(&connect_to_all),
            "processStartToAllDelivered": hist_json(&spawn_to_all),
            "queuedPerRound": queued,
        },
        "approvals": approvals.json,
        "footprint": {
            "agentRssKib": {"idle": agent_idle, "load": agent_load},
            "bridgeRssKib": {"idle": bridge_idle, "load": bridge_load},
            "wasmBytes": {"raw": wasm_raw, "gzip": wasm_gz},
        },
        "targets": targets.iter().map(|(w, g, ok)| json!({"target": w, "measured": g, "met": ok}))
            .collect::<Vec<_>>(),
    });
    std::fs::write(
        out_dir.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!("bench: written to {}", display(&out_dir));
    Ok(())
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

fn hist_json(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"n": h.len(), "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
           "max_ms": h.max() as f64 / 1000.0})
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn display(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .map(PathBuf::from)
        .unwrap_or_else(|_| p.to_owned())
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Permission requests: the PermissionRequest hook run as Claude Code runs it.

/// What [`approvals`] measured: its table rows, its targets and its JSON.
struct Measured {
    rows: Vec<Row>,
    targets: Vec<(&'static str, String, bool)>,
    json: Value,
}

/// `BENCH_APPROVALS` rounds (default 40, after 5 unrecorded): the configured hook starts with
/// Claude Code's input → its card reaches the Bot API; ✅ Allow is tapped → the hook has
/// printed the decision and exited. Both as multiples of one Worker → RouterDO hop (`hop_ms`,
/// the p50 of GET /sessions at 1 caller in this run).
async fn approvals(
    w: &Worker,
    bot: &ccr_e2e::telegram::BotApi,
    agent: &Agent,
    hop_ms: f64,
) -> anyhow::Result<Measured> {
    use tokio::io::AsyncWriteExt;
    let rounds = env_u64("BENCH_APPROVALS", 40) as usize;
    let warm = 5;
    eprintln!("bench: approvals, {rounds} cards");
    let mut card = new_hist();
    let mut decided = new_hist();
    for i in 0..warm + rounds {
        let marker = format!("bench-approval-{i}");
        let input = json!({
            "session_id": "bench-sess", "transcript_path": "/nonexistent.jsonl",
            "cwd": "/home/ada/bench", "permission_mode": "default",
            "hook_event_name": "PermissionRequest", "tool_name": "Bash",
            "tool_input": {"command": format!("echo {marker}"), "description": "bench"},
        });
        let seen = bot.calls().len();
        let t0 = Instant::now();
        let mut hook = tokio::process::Command::new(ccr_e2e::agent::binary())
            .arg("--data-dir")
            .arg(agent.data_dir())
            .args(["hook", "permission-request"])
            .env_remove("TMUX")
            .env_remove("TMUX_PANE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the hook")?;
        let mut stdin = hook.stdin.take().context("hook stdin")?;
        stdin.write_all(input.to_string().as_bytes()).await?;
        drop(stdin);
        let deadline = Instant::now() + T;
        let (message_id, allow) = loop {
            let found = bot.calls_since(seen).into_iter().find(|c| {
                c.ok && c.method == "sendMessage"
                    && c.params["text"]
                        .as_str()
                        .is_some_and(|t| t.contains(&marker))
            });
            if let Some(c) = found {
                let data = c.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
                    .as_str()
                    .context("the card has no first button")?
                    .to_owned();
                break (c.message_id.context("card without id")?, data);
            }
            if Instant::now() > deadline {
                bail!("no card for {marker}");
            }
            tokio::time::sleep(Duration::from_micros(250)).await;
        };
        let t_card = Instant::now();
        let update = Update::callback(50_000 + i as i64, CHAT, &format!("bq{i}"), &allow)
            .message_id(message_id);
        let t1 = Instant::now();
        // The tap's webhook and the hook run side by side: the hook may print before the
        // webhook answers (it still sends the card's edit and the toast), and it is the
        // hook's output that Claude Code waits for.
        let (answer, exited) = tokio::join!(w.send_update(&update), async {
            let out = tokio::time::timeout(T, hook.wait_with_output()).await;
            (out, Instant::now())
        });
        let status = answer?.status();
        if !status.is_success() {
            bail!("the tap's webhook answered {status}");
        }
        let (out, t2) = exited;
        let out = out.context("the hook did not print a decision")??;
        let printed = String::from_utf8_lossy(&out.stdout);
        if !printed.contains(r#""behavior":"allow""#) {
            bail!("the hook printed {printed:?}");
        }
        if i >= warm {
            let _ = card.record(micros(t_card - t0));
            let _ = decided.record(micros(t2 - t1));
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let hops = |h: &Histogram<u64>, q: f64| ms(h, q) / hop_ms;
    let row = |what: &str, h: &Histogram<u64>| Row {
        what: what.into(),
        callers: "1".into(),
        p50: format!("{:.2} ({:.1} hops)", ms(h, 0.5), hops(h, 0.5)),
        p90: format!("{:.2}", ms(h, 0.9)),
        p99: format!("{:.2} ({:.1} hops)", ms(h, 0.99), hops(h, 0.99)),
        rps: String::new(),
        n: h.len().to_string(),
    };
    Ok(Measured {
        rows: vec![
            row(
                "approvals: PermissionRequest hook started → its card sent to the Bot API",
                &card,
            ),
            row(
                "approvals: ✅ tapped (webhook POST) → the hook printed the decision and exited",
                &decided,
            ),
        ],
        targets: vec![
            (
                "hook start → card sent ≤ 4 Worker hops (p50)",
                format!("{:.1} hops", hops(&card, 0.5)),
                hops(&card, 0.5) <= 4.0,
            ),
            (
                "tap → decision printed ≤ 4 Worker hops (p50)",
                format!("{:.1} hops", hops(&decided, 0.5)),
                hops(&decided, 0.5) <= 4.0,
            ),
        ],
        json: json!({
            "hopP50Ms": hop_ms,
            "hookStartToCardSent": hist_json(&card),
            "tapToDecisionPrinted": hist_json(&decided),
        }),
    })
}

/// The router's row for a 3-line reply (one bracketed paste, then Enter) and for a photo
/// (the agent fetches it through the Worker from the Bot API stand-in, saves it in the
/// session's `.ccr/files/`, then types caption + path), measured like the one-line row:
/// webhook POST → the whole prompt in the pane, inject delay 0. `n` of each (`replies` / 2).
async fn paste_and_photo_rows(replies: usize) -> anyhow::Result<Vec<Row>> {
    /// Spins (250 µs steps, off the runtime) until `path` holds at least `len` bytes.
    async fn until_len(path: &Path, len: u64) -> anyhow::Result<Instant> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + T;
            loop {
                if std::fs::metadata(&path).map_or(0, |m| m.len()) >= len {
                    return Ok(Instant::now());
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for {len} bytes in the pane");
                }
                std::thread::sleep(Duration::from_micros(250));
            }
        })
        .await?
    }
    let n = (replies / 2).max(10);
    let warm = 10;
    eprintln!("bench: router, {n} 3-line replies and {n} photos");
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT]).await?;
    let tmux = Tmux::start()?;
    let (pane_id, record) = tmux.add_raw_pane("claude").await?;
    let agent = Agent::start_with(
        &w.base_url(),
        TEST_API_KEY,
        "benchbox",
        vec![("CCR_INJECT_DELAY_MS".into(), "0".into())],
    )?;
    agent.wait_connected(1, T).await?;
    let cwd = tempfile::tempdir()?;
    agent
        .start_session(
            &tmux,
            &pane_id,
            "bench-files",
            &cwd.path().to_string_lossy(),
        )
        .await?;
    let msg = w.notify("bench-files", "bench").await?.message_id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut update_id = 5_000_i64;
    let post = |update: Update| {
        let w = &w;
        async move {
            let status = w.send_update(&update).await?.status();
            if !status.is_success() {
                bail!("webhook answered {status}");
            }
            anyhow::Ok(())
        }
    };

    let mut paste = new_hist();
    for i in 0..warm + n {
        update_id += 1;
        let text = format!("bench paste {i}\nsecond line\nthird line");
        let want = format!("\x1b[200~{}\x1b[201~\r", text.replace('\n', "\r"));
        let before = std::fs::metadata(&record)?.len();
        let t0 = Instant::now();
        post(Update::reply(update_id, CHAT, msg, &text)).await?;
        let t = until_len(&record, before + want.len() as u64).await?;
        let raw = std::fs::read(&record)?;
        if !raw.ends_with(want.as_bytes()) {
            bail!("the pane did not get the paste {want:?}");
        }
        if i >= warm {
            let _ = paste.record(micros(t - t0));
        }
    }

    // A 100 KB photo each time (its own file id, as Telegram gives every upload).
    let photo: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    let mut fetched = new_hist();
    for i in 0..warm + n {
        update_id += 1;
        let file_id = format!("bench-photo-{i}");
        bot.add_file(&file_id, &format!("photos/file_{i}.jpg"), photo.clone());
        let saved = cwd
            .path()
            .join(format!(".ccr/files/photo-tg-{update_id}.jpg"));
        let want = format!("see {}\r", saved.display());
        let before = std::fs::metadata(&record)?.len();
        let update = Update::message(update_id, CHAT)
            .photo_sizes(&[(&file_id, photo.len() as u64, 1280, 960)])
            .caption("see")
            .reply_to(msg);
        let t0 = Instant::now();
        post(update).await?;
        let t = until_len(&record, before + want.len() as u64).await?;
        if !std::fs::read(&record)?.ends_with(want.as_bytes()) {
            bail!("the pane did not get {want:?}");
        }
        if std::fs::read(&saved)? != photo {
            bail!("{} is not the photo sent", saved.display());
        }
        if i >= warm {
            let _ = fetched.record(micros(t - t0));
        }
    }
    drop(agent);
    drop(tmux);
    drop(w);

    let ms = |h: &Histogram<u64>, q: f64| format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0);
    let row = |what: &str, h: &Histogram<u64>| Row {
        what: what.into(),
        callers: "1".into(),
        p50: ms(h, 0.5),
        p90: ms(h, 0.9),
        p99: ms(h, 0.99),
        rps: String::new(),
        n: h.len().to_string(),
    };
    Ok(vec![
        row(
            "router: webhook POST → 3-line reply in the pane (one bracketed paste + Enter)",
            &paste,
        ),
        row(
            "router: webhook POST → 100 KB photo on disk and caption + path in the pane",
            &fetched,
        ),
    ])
}

// ---------------------------------------------------------------------------------------------
// The relay's two transports, side by side in one run (issue #15 items 3–4).

/// Relay over the WebSocket transport and over long-poll, each against one Worker → Durable
/// Object hop measured in the same run: p50 at 1 caller and req/s at 64 as ratios to the hop,
/// time to first byte and per-event delay of a server-sent event stream (an event every
/// 200 ms), and the bridge's peak RSS during a large download (`BENCH_DOWNLOAD_MB`, 300).
/// Rows for the table; the figures also go to `target/bench/relay-transports.json`.
async fn relay_transports(
    w: &Worker,
    warmup: Duration,
    secs: Duration,
) -> anyhow::Result<Vec<Row>> {
    use axum::body::{Body, Bytes};
    use axum::extract::Query;
    use futures_util::StreamExt as _;
    const EVENTS: u64 = 10;
    let download_mb = env_u64("BENCH_DOWNLOAD_MB", 300);
    let since_epoch_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    };
    let app = Router::new()
        .route(
            "/bench",
            get(|| async { ([("content-type", "application/json")], TARGET_BODY) }),
        )
        .route(
            "/sse",
            get(move || async move {
                // Each event carries the time it was written (µs since the epoch).
                let events = futures_util::stream::unfold(0u64, move |i| async move {
                    if i == EVENTS {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let line = format!("data: {}\n\n", since_epoch_us());
                    Some((Ok::<_, std::io::Error>(Bytes::from(line)), i + 1))
                });
                (
                    [("content-type", "text/event-stream")],
                    Body::from_stream(events),
                )
            }),
        )
        .route(
            "/big",
            get(|Query(q): Query<Vec<(String, String)>>| async move {
                let mb: u64 = q
                    .iter()
                    .find(|(k, _)| k == "mb")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(1);
                let chunk = Bytes::from(vec![0x5au8; 1024 * 1024]);
                let body = futures_util::stream::iter(0..mb)
                    .map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
                (
                    [
                        ("content-type", "application/octet-stream".to_owned()),
                        ("content-length", (mb * 1024 * 1024).to_string()),
                    ],
                    Body::from_stream(body),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(600))
        .build()?;
    let worker_url = w.url(route::SESSIONS);
    let mut rows = Vec::new();
    let mut report = Vec::new();
    let mut targets = Vec::new();
    for transport in ["ws", "poll"] {
        eprintln!("bench: relay over {transport}");
        let channel = format!("bench-{transport}");
        let mut bridge = Bridge::start_with_env(
            w,
            &target,
            Some(&channel),
            &["--concurrency", "64", "--transport", transport],
            &[("RUST_LOG", "warn")],
        )
        .await?;
        let pid = bridge.pid().context("bridge pid")?;
        let relay_url = w.url(&format!("/relay/{channel}/bench"));
        wait_for("the relay to answer", T, || async {
            one(http.get(&relay_url)).await.then_some(())
        })
        .await
        .with_context(|| bridge.log())?;
        let mut cells = Vec::new();
        for c in [1usize, 64] {
            let hop = load(&http, &worker_url, Some(TEST_API_KEY), c, warmup, secs).await;
            let relay = load(&http, &relay_url, None, c, warmup, secs).await;
            rows.push(cell_row(&format!("relay over {transport}"), c, &relay));
            rows.push(cell_row("  the Worker → DO hop, same moment", c, &hop));
            cells.push((c, relay, hop));
        }
        let p50_ratio = cells
            .first()
            .map_or(f64::NAN, |(_, r, h)| r.ms(0.5) / h.ms(0.5));
        let rps_share = cells.last().map_or(f64::NAN, |(_, r, h)| r.rps() / h.rps());

        // Streaming: time to the first byte, and how late each event is.
        let sent = Instant::now();
        let mut resp = http
            .get(w.url(&format!("/relay/{channel}/sse")))
            .send()
            .await?;
        let mut ttfb = None;
        let mut late_ms: Vec<f64> = Vec::new();
        let mut buf = String::new();
        while let Some(chunk) = resp.chunk().await? {
            let now = since_epoch_us();
            ttfb.get_or_insert_with(|| sent.elapsed());
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                if let Some(at) = event
                    .trim()
                    .strip_prefix("data: ")
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    late_ms.push(now.saturating_sub(at) as f64 / 1000.0);
                }
            }
        }
        let ttfb_ms = ttfb.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        let late_max = late_ms.iter().copied().fold(0.0f64, f64::max);
        let late_p50 = {
            let mut v = late_ms.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };

        // A large download, sampling the bridge's RSS.
        let peak = RssPeak::start(pid);
        let t0 = Instant::now();
        let mut got = 0u64;
        let mut status = 0;
        if let Ok(mut r) = http
            .get(w.url(&format!("/relay/{channel}/big?mb={download_mb}")))
            .send()
            .await
        {
            status = r.status().as_u16();
            while let Ok(Some(c)) = r.chunk().await {
                got += c.len() as u64;
            }
        }
        let took = t0.elapsed().as_secs_f64();
        let rss_peak = peak.finish().await;
        let complete = got == download_mb * 1024 * 1024 && status == 200;
        bridge.kill().await;

        rows.push(Row {
            what: format!(
                "relay over {transport}: p50 ÷ hop p50 (1 caller); req/s ÷ hop req/s (64)"
            ),
            callers: "1 / 64".into(),
            p50: format!("{p50_ratio:.2}×"),
            p90: String::new(),
            p99: String::new(),
            rps: format!("{:.0} %", rps_share * 100.0),
            n: String::new(),
        });
        rows.push(Row {
            what: format!(
                "relay over {transport}: SSE first byte; event delay p50 / max ({} events, 200 ms apart)",
                late_ms.len()
            ),
            callers: "1".into(),
            p50: format!("{ttfb_ms:.1} / {late_p50:.1} / {late_max:.1}"),
            p90: String::new(),
            p99: String::new(),
            rps: String::new(),
            n: String::new(),
        });
        rows.push(Row {
            what: format!(
                "relay over {transport}: {download_mb} MB download — bridge peak RSS, MB/s{}",
                if complete {
                    String::new()
                } else {
                    format!(" (answer {status}, {got} B: not streamed)")
                }
            ),
            callers: "1".into(),
            p50: format!("{:.1} MiB", rss_peak as f64 / 1024.0),
            p90: String::new(),
            p99: String::new(),
            rps: if complete {
                format!("{:.0} MB/s", got as f64 / 1e6 / took)
            } else {
                "—".into()
            },
            n: String::new(),
        });
        match transport {
            "ws" => {
                targets.push((
                    "WebSocket relay p50 ≤ 1.5× the hop's (1 caller)".to_owned(),
                    p50_ratio <= 1.5,
                ));
                targets.push((
                    "WebSocket relay req/s ≥ 80 % of the hop's (64 callers)".to_owned(),
                    rps_share >= 0.8,
                ));
                targets.push((
                    format!("WebSocket: bridge RSS < 64 MiB during {download_mb} MB"),
                    complete && rss_peak < 64 * 1024,
                ));
            }
            _ => targets.push((
                "long-poll relay req/s ≥ 50 % of the hop's (64 callers)".to_owned(),
                rps_share >= 0.5,
            )),
        }
        report.push(json!({
            "transport": transport,
            "cells": cells.iter().map(|(c, r, h)| json!({"callers": c, "relay": r.json(), "hop": h.json()})).collect::<Vec<_>>(),
            "p50OverHop1": p50_ratio, "rpsShareOfHop64": rps_share,
            "sseTtfbMs": ttfb_ms, "sseEventDelayMs": late_ms,
            "download": {"mb": download_mb, "status": status, "bytes": got, "secs": took, "bridgePeakRssKib": rss_peak},
        }));
    }
    for (what, ok) in targets {
        rows.push(Row {
            what: format!("target: {what}"),
            callers: String::new(),
            p50: mark(ok).into(),
            p90: String::new(),
            p99: String::new(),
            rps: String::new(),
            n: String::new(),
        });
    }
    server.abort();
    let out = workspace_root().join("target/bench/relay-transports.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Previews: `/preview PORT` served by the agent's built-in bridge.

/// `BENCH_PREVIEWS` rounds (default 10, after 2 unrecorded) of `/preview PORT` → the link in
/// the chat, each then stopped; and 200 GETs (after 20 unrecorded) at 1 caller through one
/// open preview's link.
async fn previews(
    w: &Worker,
    bot: &ccr_e2e::telegram::BotApi,
    msg: i64,
    target: &str,
) -> anyhow::Result<Vec<Row>> {
    let rounds = env_u64("BENCH_PREVIEWS", 10) as usize;
    let warm = 2;
    let port = target
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .context("the bench target's port")?;
    eprintln!("bench: previews, {rounds} links");
    let mut open = new_hist();
    let mut update_id = 2_000_000_i64;
    let mut link = String::new();
    for i in 0..warm + rounds {
        let seen = bot.calls().len();
        update_id += 1;
        let t0 = Instant::now();
        reply(w, update_id, msg, &format!("/preview {port}")).await?;
        let text = wait_for("the preview's link", T, || async {
            bot.calls_since(seen).into_iter().find_map(|c| {
                c.params["text"]
                    .as_str()
                    .filter(|t| t.contains("Preview of port"))
                    .map(str::to_owned)
            })
        })
        .await?;
        if i >= warm {
            let _ = open.record(micros(t0.elapsed()));
        }
        link = text
            .lines()
            .find(|l| l.starts_with("http"))
            .context("no link in the answer")?
            .to_owned();
        if i + 1 < warm + rounds {
            update_id += 1;
            reply(w, update_id, msg, "/preview stop").await?;
        }
    }
    let client = reqwest::Client::builder().no_proxy().timeout(T).build()?;
    let mut get = Cell {
        hist: new_hist(),
        errors: 0,
        secs: 0.0,
    };
    let mut window = Instant::now();
    for i in 0..220 {
        if i == 20 {
            window = Instant::now();
        }
        let t0 = Instant::now();
        let ok = one(client.get(format!("{link}bench"))).await;
        if i >= 20 {
            if ok {
                let _ = get.hist.record(micros(t0.elapsed()));
            } else {
                get.errors += 1;
            }
        }
    }
    get.secs = window.elapsed().as_secs_f64();
    update_id += 1;
    reply(w, update_id, msg, "/preview stop").await?;
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(vec![
        Row {
            what: "preview: /preview PORT → the link in the chat".into(),
            callers: "-".into(),
            p50: format!("{:.2}", q(&open, 0.5)),
            p90: format!("{:.2}", q(&open, 0.9)),
            p99: format!("max {:.2}", open.max() as f64 / 1000.0),
            rps: String::new(),
            n: format!("{} rounds", open.len()),
        },
        cell_row(
            "preview: GET through the link (agent's built-in bridge)",
            1,
            &get,
        ),
    ])
}

// ---------------------------------------------------------------------------------------------
// Long-poll streaming: the target its large download is held to.

/// A target row for the long-poll transport's large download, from the figures
/// `relay_transports` wrote (`target/bench/relay-transports.json`): complete (streamed as
/// `_stream` calls, no longer buffered whole and refused past 10 MiB) with the bridge's peak
/// RSS under 64 MiB, the WebSocket transport's target.
async fn long_poll_download_target() -> anyhow::Result<Vec<Row>> {
    let path = workspace_root().join("target/bench/relay-transports.json");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let poll = report
        .as_array()
        .and_then(|all| all.iter().find(|t| t["transport"] == "poll"))
        .context("no long-poll figures in relay-transports.json")?;
    let download = &poll["download"];
    let mb = download["mb"].as_u64().unwrap_or(0);
    let complete =
        download["status"] == 200 && download["bytes"].as_u64() == Some(mb * 1024 * 1024);
    let peak = download["bridgePeakRssKib"].as_u64().unwrap_or(u64::MAX);
    Ok(vec![Row {
        what: format!("target: long-poll: bridge RSS < 64 MiB during {mb} MB"),
        callers: String::new(),
        p50: mark(complete && peak < 64 * 1024).into(),
        p90: String::new(),
        p99: String::new(),
        rps: String::new(),
        n: String::new(),
    }])
}

// Uploads: request bodies through the relay, streamed (WebSocket) or read whole (long-poll).

/// For each transport, 3 chunked 8 MiB uploads (after 1 unrecorded), sent as fast as the
/// relay takes them: how long after the caller starts sending the target reads the first
/// byte, and how long the whole upload takes (medians). Over the WebSocket the first byte
/// crosses at once; over long-poll only once the Worker has the whole body. A failure is a
/// row saying so, never the end of the bench run.
async fn upload_streaming(w: &Worker) -> Vec<Row> {
    const MIB: usize = 1024 * 1024;
    const UPLOAD: usize = 8 * MIB;
    let row = |what: String, p50: String, rps: String| Row {
        what,
        callers: "1".into(),
        p50,
        p90: String::new(),
        p99: String::new(),
        rps,
        n: String::new(),
    };
    let first_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let seen = first_at.clone();
    let app = Router::new()
        .route(
            "/up",
            axum::routing::post(move |body: axum::body::Body| {
                let seen = seen.clone();
                async move {
                    use futures_util::StreamExt as _;
                    let mut stream = body.into_data_stream();
                    let mut n = 0usize;
                    while let Some(Ok(chunk)) = stream.next().await {
                        if n == 0 && !chunk.is_empty() {
                            if let Ok(mut at) = seen.lock() {
                                *at = Some(Instant::now());
                            }
                        }
                        n += chunk.len();
                    }
                    n.to_string()
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        return vec![row(
            "uploads: no loopback port".into(),
            "—".into(),
            String::new(),
        )];
    };
    let Ok(addr) = listener.local_addr() else {
        return vec![row(
            "uploads: no loopback port".into(),
            "—".into(),
            String::new(),
        )];
    };
    let target = format!("http://{addr}");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let http = ccr_e2e::ports::client(Duration::from_secs(120));
    let mut rows = Vec::new();
    for transport in ["ws", "poll"] {
        eprintln!("bench: uploads over {transport}");
        let channel = format!("bench-up-{transport}");
        let what = format!(
            "relay over {transport}: 8 MiB chunked upload — target's first byte / whole (ms), MB/s"
        );
        let bridge = Bridge::start_with_env(
            w,
            &target,
            Some(&channel),
            &["--transport", transport],
            &[("RUST_LOG", "warn")],
        )
        .await;
        let Ok(mut bridge) = bridge else {
            rows.push(row(what, "no bridge".into(), String::new()));
            continue;
        };
        let url = w.url(&format!("/relay/{channel}/up"));
        // Answered once the bridge serves the channel (over `ws`: its socket is open).
        let ready = wait_for("the relay to take uploads", T, || async {
            one(http.post(&url).body("x")).await.then_some(())
        })
        .await;
        let mut firsts = Vec::new();
        let mut wholes = Vec::new();
        let mut failed = None;
        for i in 0..4 {
            if ready.is_err() {
                failed = Some("the relay never answered".to_owned());
                break;
            }
            if let Ok(mut at) = first_at.lock() {
                *at = None;
            }
            let pieces: Vec<Result<Vec<u8>, std::io::Error>> = (0..UPLOAD / (64 * 1024))
                .map(|_| Ok(vec![0x5au8; 64 * 1024]))
                .collect();
            let t0 = Instant::now();
            let sent = http
                .post(&url)
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    pieces,
                )))
                .send()
                .await;
            let answer = match sent {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            };
            let whole = t0.elapsed();
            if answer != (200, UPLOAD.to_string()) {
                failed = Some(format!("answer {} {}", answer.0, answer.1));
                break;
            }
            let first = first_at.lock().ok().and_then(|at| *at);
            if i > 0 {
                if let Some(first) = first {
                    firsts.push(first.saturating_duration_since(t0).as_secs_f64() * 1000.0);
                }
                wholes.push(whole.as_secs_f64() * 1000.0);
            }
        }
        bridge.kill().await;
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        match (failed, median(&mut firsts), median(&mut wholes)) {
            (None, Some(first), Some(whole)) => rows.push(row(
                what,
                format!("{first:.1} / {whole:.1}"),
                format!("{:.0} MB/s", UPLOAD as f64 / 1e6 / (whole / 1000.0)),
            )),
            (why, _, _) => rows.push(row(
                what,
                format!("failed: {}", why.unwrap_or_else(|| "no figure".into())),
                String::new(),
            )),
        }
    }
    server.abort();
    rows
}
