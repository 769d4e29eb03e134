//! From zero to a working bot, end to end: `ccr-agent telegram setup` against the Bot API
//! stand-in, `install-service` for both platforms (and the daemon it describes really
//! running), and `doctor` on a healthy set-up and on broken ones.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use ccr_e2e::agent::binary;
use ccr_e2e::ports::free_port;
use ccr_e2e::telegram::{Fault, Update};
use ccr_e2e::wait_for;
use ccr_e2e::worker::{
    machine_key, start_with_bot, Worker, WorkerOptions, TEST_API_KEY, TEST_BOT_TOKEN,
    TEST_WEBHOOK_SECRET,
};
use serde_json::{json, Value};
use tokio::process::Command;

const CHAT: i64 = 4242;
const T: Duration = Duration::from_secs(30);
/// What the tests give the service as its PATH (tmux lives in /usr/bin).
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `ccr-agent` with a clean environment: no `CCR_*` or `TELEGRAM_*` of the test's own, `HOME`
/// set to `home`.
fn agent(home: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| PATH.into()),
        )
        .env("HOME", home)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn output(cmd: &mut Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("ccr-agent ran longer than 60 s")
        .expect("running ccr-agent")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn telegram_setup_sets_the_webhook_and_the_commands_and_never_prints_secrets() {
    let (w, bot) = start_with_bot(WorkerOptions::default(), &[CHAT])
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    let api_base = bot.base_url();
    let setup = |token: &str, secret: Option<&str>| {
        let mut cmd = agent(home.path());
        cmd.args(["telegram", "setup", "--worker-url"])
            .arg(format!("{}/", w.base_url()))
            .env("TELEGRAM_BOT_TOKEN", token)
            .env("TELEGRAM_API_BASE", &api_base);
        if let Some(s) = secret {
            cmd.env("TELEGRAM_WEBHOOK_SECRET", s);
        }
        cmd
    };
    let never_echoed = |out: &Output, token: &str| {
        let (stdout, stderr) = text(out);
        for secret in [token, TEST_WEBHOOK_SECRET] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "a secret was printed:\n{stdout}\n{stderr}"
            );
        }
    };

    let out = output(&mut setup(TEST_BOT_TOKEN, Some(TEST_WEBHOOK_SECRET))).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    never_echoed(&out, TEST_BOT_TOKEN);
    let calls = bot.calls();
    let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(methods, ["setWebhook", "setMyCommands"]);
    assert!(calls.iter().all(|c| c.token_ok));
    let webhook_url = w.webhook_url(TEST_WEBHOOK_SECRET);
    assert_eq!(
        calls[0].params,
        json!({
            "url": webhook_url,
            "secret_token": TEST_WEBHOOK_SECRET,
            "allowed_updates": ["message", "edited_message", "callback_query"],
            "drop_pending_updates": false,
        })
    );
    let commands = &calls[1].params["commands"];
    let names: Vec<&str> = commands
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "start", "help", "sessions", "cmd", "pending", "esc", "keys", "peek", "new", "end",
            "preview", "previews"
        ]
    );
    assert!(commands
        .as_array()
        .unwrap()
        .iter()
        .all(|c| !c["description"].as_str().unwrap().is_empty()));
    assert_eq!(calls[1].params.as_object().unwrap().len(), 1);
    assert!(
        stdout.contains(&format!(
            "{}/webhook/telegram/<TELEGRAM_WEBHOOK_SECRET>",
            w.base_url()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("/start, /help, /sessions, /cmd"),
        "{stdout}"
    );

    // The webhook it registered is the Worker's (its URL and secret, asserted above): an
    // update sent there the way Telegram would send it is accepted and answered.
    let resp = w
        .send_update(&Update::message(1, CHAT).text("/start"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_for("the /start answer", T, || async {
        bot.calls_of("sendMessage")
            .iter()
            .any(|c| c.params["chat_id"].to_string().contains(&CHAT.to_string()))
            .then_some(())
    })
    .await
    .unwrap();

    // Telegram refuses: its description is shown, the exit code is 1, nothing else is called.
    let before = bot.calls().len();
    bot.fail_next(
        "setWebhook",
        Fault::BadRequest(
            "Bad Request: bad webhook: An HTTPS URL must be provided for webhook".into(),
        ),
    );
    let out = output(&mut setup(TEST_BOT_TOKEN, Some(TEST_WEBHOOK_SECRET))).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Telegram refused setWebhook (HTTP 400): Bad Request: bad webhook: An HTTPS URL must be provided for webhook"),
        "{stderr}"
    );
    assert!(stderr.contains("https://"), "{stderr}");
    never_echoed(&out, TEST_BOT_TOKEN);
    assert_eq!(bot.calls().len(), before + 1);

    // A wrong token: Telegram's 401, named as the token's fault, the token not echoed.
    let wrong = "999999:wrong-token";
    let out = output(&mut setup(wrong, Some(TEST_WEBHOOK_SECRET))).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Unauthorized"), "{stderr}");
    assert!(stderr.contains("TELEGRAM_BOT_TOKEN is wrong"), "{stderr}");
    never_echoed(&out, wrong);

    // A missing secret: one line naming it, exit 2, no call made.
    let before = bot.calls().len();
    let out = output(&mut setup(TEST_BOT_TOKEN, None)).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TELEGRAM_WEBHOOK_SECRET"), "{stderr}");
    assert_eq!(bot.calls().len(), before);

    // Telegram down: a transport error without the URL (which carries the token).
    drop(bot);
    let out = output(&mut setup(TEST_BOT_TOKEN, Some(TEST_WEBHOOK_SECRET))).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("calling Telegram's setWebhook"), "{stderr}");
    never_echoed(&out, TEST_BOT_TOKEN);
}

/// The environment `install-service` runs with in these tests.
fn service_cmd(home: &Path, data: &Path, key: Option<&str>) -> Command {
    let mut cmd = agent(home);
    cmd.env("PATH", PATH)
        .env("CCR_DATA_DIR", data)
        .arg("install-service");
    if let Some(key) = key {
        cmd.env("CCR_WORKER_URL", "https://ccr.example.workers.dev")
            .env("CCR_API_KEY", key)
            .env("CCR_MACHINE_ID", "devbox");
    }
    cmd
}

/// `install-service --platform <platform> --home <home>`.
async fn install(home: &Path, data: &Path, key: Option<&str>, platform: &str) -> Output {
    output(
        service_cmd(home, data, key)
            .args(["--platform", platform, "--home"])
            .arg(home),
    )
    .await
}

#[tokio::test]
async fn install_service_writes_a_unit_or_a_plist_idempotently_without_the_key() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("state/ccr-agent");
    let exe = binary();
    let key = "key-that-must-stay-private-42";

    // Linux: the systemd user unit.
    let out = install(home.path(), &data, Some(key), "linux").await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let unit_path = home.path().join(".config/systemd/user/ccr-agent.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let expected = format!(
        "# Written by `ccr-agent install-service`; running it again rewrites this file.\n\
         [Unit]\n\
         Description=CCR agent: Telegram replies into Claude Code tmux panes\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         # The Worker URL, API key and machine id are in {data}/agent.json (mode 0600), not here.\n\
         ExecStart={exe} --data-dir {data} run\n\
         Environment=PATH={PATH}\n\
         Restart=always\n\
         RestartSec=5\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        data = data.display(),
        exe = exe.display(),
    );
    assert_eq!(unit, expected);
    assert_eq!(mode(&unit_path), 0o644);
    let settings = data.join("agent.json");
    assert_eq!(mode(&settings), 0o600);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(
        saved,
        json!({"workerUrl": "https://ccr.example.workers.dev/", "apiKey": key, "machineId": "devbox"})
    );
    assert!(!stdout.contains(key) && !stderr.contains(key));
    assert!(
        stdout.contains(&format!("wrote {}", unit_path.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("systemctl --user daemon-reload"),
        "{stdout}"
    );
    assert!(
        stdout.contains("systemctl --user enable --now ccr-agent.service"),
        "{stdout}"
    );

    // Again, with the settings now coming from the saved file alone: nothing changes.
    let modified = std::fs::metadata(&unit_path).unwrap().modified().unwrap();
    for key in [Some(key), None] {
        let out = install(home.path(), &data, key, "linux").await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("already installed, unchanged"), "{stdout}");
        assert!(stdout.contains("settings unchanged"), "{stdout}");
        assert_eq!(std::fs::read_to_string(&unit_path).unwrap(), expected);
        assert_eq!(
            std::fs::metadata(&unit_path).unwrap().modified().unwrap(),
            modified
        );
    }

    // macOS: the launchd agent.
    let out = install(home.path(), &data, Some(key), "macos").await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let plist_path = home.path().join("Library/LaunchAgents/dev.ccr.agent.plist");
    let plist = std::fs::read_to_string(&plist_path).unwrap();
    let log = data.join("agent.log");
    let expected_plist = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <!-- Written by `ccr-agent install-service`; running it again rewrites this file. The Worker URL, API key and machine id are in agent.json (mode 0600) in the data directory, not here. -->\n\
         <plist version=\"1.0\">\n\
         <dict>\n  \
         <key>Label</key>\n  <string>dev.ccr.agent</string>\n  \
         <key>ProgramArguments</key>\n  <array>\n    \
         <string>{exe}</string>\n    <string>--data-dir</string>\n    <string>{data}</string>\n    <string>run</string>\n  \
         </array>\n  \
         <key>EnvironmentVariables</key>\n  <dict>\n    <key>PATH</key>\n    <string>{PATH}</string>\n  </dict>\n  \
         <key>RunAtLoad</key>\n  <true/>\n  \
         <key>KeepAlive</key>\n  <true/>\n  \
         <key>ThrottleInterval</key>\n  <integer>5</integer>\n  \
         <key>Umask</key>\n  <integer>63</integer>\n  \
         <key>StandardOutPath</key>\n  <string>{log}</string>\n  \
         <key>StandardErrorPath</key>\n  <string>{log}</string>\n\
         </dict>\n\
         </plist>\n",
        exe = exe.display(),
        data = data.display(),
        log = log.display(),
    );
    assert_eq!(plist, expected_plist);
    assert_eq!(mode(&plist_path), 0o644);
    assert!(!plist.contains(key));
    assert!(
        stdout.contains(&format!(
            "launchctl bootstrap gui/$(id -u) {}",
            plist_path.display()
        )),
        "{stdout}"
    );
    // The plist is one Apple's own parser reads (Python's plistlib, when Python is here).
    if let Ok(py) = std::process::Command::new("python3")
        .args([
            "-c",
            "import plistlib,sys; p=plistlib.load(open(sys.argv[1],'rb')); \
             assert p['Label']=='dev.ccr.agent' and p['ProgramArguments'][-1]=='run' and p['KeepAlive']",
        ])
        .arg(&plist_path)
        .output()
    {
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    }
    let out = install(home.path(), &data, Some(key), "macos").await;
    assert!(text(&out).0.contains("already installed, unchanged"));
    assert_eq!(
        std::fs::read_to_string(&plist_path).unwrap(),
        expected_plist
    );

    // --path puts it anywhere.
    let elsewhere = home.path().join("elsewhere/my.service");
    let out = output(
        service_cmd(home.path(), &data, Some(key))
            .args(["--platform", "linux", "--path"])
            .arg(&elsewhere),
    )
    .await;
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), expected);

    // No settings anywhere: one line naming the setting, exit 2, nothing written.
    let empty = home.path().join("fresh");
    let out = output(
        service_cmd(home.path(), &empty.join("data"), None)
            .args(["--platform", "linux", "--home"])
            .arg(&empty),
    )
    .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("CCR_WORKER_URL"), "{stderr}");
    assert!(!empty.join(".config").exists());
}

/// A machine set up by the book: hooks installed, settings in the environment.
struct Machine {
    home: tempfile::TempDir,
}

impl Machine {
    async fn new() -> Machine {
        let m = Machine {
            home: tempfile::tempdir().unwrap(),
        };
        let out = output(
            agent(m.home.path())
                .args(["install-hooks", "--settings"])
                .arg(m.settings()),
        )
        .await;
        assert!(out.status.success(), "{:?}", text(&out));
        m
    }

    fn settings(&self) -> PathBuf {
        self.home.path().join(".claude/settings.json")
    }

    fn data(&self) -> PathBuf {
        self.home.path().join("state")
    }

    /// `ccr-agent doctor` against `url` with `key`; returns (exit code, stdout, elapsed).
    async fn doctor(&self, url: &str, key: &str, settings: &Path) -> (i32, String, Duration) {
        let started = Instant::now();
        let out = output(
            agent(self.home.path())
                .env("CCR_WORKER_URL", url)
                .env("CCR_API_KEY", key)
                .env("CCR_MACHINE_ID", "devbox")
                .env("CCR_DATA_DIR", self.data())
                .args(["doctor", "--timeout", "5", "--settings"])
                .arg(settings),
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert!(stderr.is_empty(), "doctor wrote to stderr: {stderr}");
        assert!(!stdout.contains(key), "doctor printed the key:\n{stdout}");
        (out.status.code().unwrap_or(-1), stdout, started.elapsed())
    }
}

const CHECKS: [&str; 8] = [
    "settings",
    "data dir",
    "Worker reachable",
    "API key",
    "socket",
    "clock",
    "tmux",
    "Claude Code hooks",
];

/// The lines of `report` that start with `mark`, by check name.
fn marked<'a>(report: &'a str, mark: &str) -> Vec<&'a str> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix(mark))
        .filter_map(|l| l.split_once(':').map(|(name, _)| name))
        .collect()
}

#[tokio::test]
async fn doctor_passes_a_healthy_set_up_and_names_each_broken_link() {
    let mut w = Worker::start_default().await.unwrap();
    let m = Machine::new().await;
    let url = w.base_url();

    // Healthy, admin key: every check passes, and the socket was opened and closed by doctor.
    let (code, report, _) = m.doctor(&url, TEST_API_KEY, &m.settings()).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(marked(&report, "✓ "), CHECKS, "{report}");
    assert!(
        report.contains("✓ API key: accepted; it is the admin key"),
        "{report}"
    );
    assert!(
        report.contains("(101, subprotocol ccr) and closed with 1000"),
        "{report}"
    );
    assert!(report.ends_with("all checks passed\n"), "{report}");

    // Healthy, machine-scoped key.
    let (code, report, _) = m.doctor(&url, &machine_key("devbox"), &m.settings()).await;
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("✓ API key: accepted; it is the machine-scoped key of devbox"),
        "{report}"
    );

    // Wrong key: the key is the problem (the socket is not tried), the rest is fine.
    let (code, report, _) = m.doctor(&url, "not-the-key", &m.settings()).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(marked(&report, "✗ "), ["API key"], "{report}");
    assert!(report.contains("HTTP 401"), "{report}");
    assert!(report.contains("fix: set CCR_API_KEY"), "{report}");
    assert!(report.contains("- socket: skipped"), "{report}");
    assert!(report.contains("✓ Claude Code hooks"), "{report}");
    // A machine key made for another machine is refused the same way.
    let (code, report, _) = m.doctor(&url, &machine_key("laptop"), &m.settings()).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(marked(&report, "✗ "), ["API key"], "{report}");

    // Hooks missing: a settings file without them.
    let bare = m.home.path().join("bare-settings.json");
    std::fs::write(&bare, r#"{"model": "opus"}"#).unwrap();
    let (code, report, _) = m.doctor(&url, TEST_API_KEY, &bare).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(marked(&report, "✗ "), ["Claude Code hooks"], "{report}");
    assert!(
        report.contains("has no ccr-agent hook for SessionStart, Stop, Notification, SessionEnd"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "fix: run `ccr-agent install-hooks --settings {}`",
            bare.display()
        )),
        "{report}"
    );

    // The daemon as `install-service` describes it: its command line, no environment but
    // PATH and HOME, settings from the saved file only.
    let out = output(
        agent(m.home.path())
            .env("CCR_WORKER_URL", &url)
            .env("CCR_API_KEY", TEST_API_KEY)
            .env("CCR_MACHINE_ID", "devbox")
            .env("CCR_DATA_DIR", m.data())
            .args(["install-service", "--platform", "linux", "--home"])
            .arg(m.home.path()),
    )
    .await;
    assert!(out.status.success(), "{:?}", text(&out));
    let unit =
        std::fs::read_to_string(m.home.path().join(".config/systemd/user/ccr-agent.service"))
            .unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .split(' ')
        .collect();
    let log_path = m.home.path().join("service.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = Command::new(exec[0])
        .args(&exec[1..])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", m.home.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let daemon_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("the service's daemon to connect", T, || async {
        daemon_log()
            .contains("connected to the Worker")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log()));

    // With the daemon connected, doctor trusts its connection instead of replacing it.
    let (code, report, _) = m.doctor(&url, TEST_API_KEY, &m.settings()).await;
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("✓ socket: the running daemon is connected"),
        "{report}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !daemon_log().contains("another agent took over"),
        "{}",
        daemon_log()
    );
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;

    // Worker down: the Worker is the problem, the checks that need it are skipped, and the
    // answer comes quickly.
    w.kill().await;
    for down in [url.clone(), format!("http://127.0.0.1:{}", free_port())] {
        let (code, report, took) = m.doctor(&down, TEST_API_KEY, &m.settings()).await;
        assert_eq!(code, 1, "{report}");
        assert_eq!(marked(&report, "✗ "), ["Worker reachable"], "{report}");
        assert!(report.contains("fix: check CCR_WORKER_URL"), "{report}");
        for skipped in ["API key", "socket", "clock"] {
            assert!(
                report.contains(&format!(
                    "- {skipped}: skipped, the Worker is not reachable"
                )),
                "{report}"
            );
        }
        assert!(took < Duration::from_secs(15), "doctor took {took:?}");
    }
}

/// An IMF-fixdate `offset_secs` from now, from date(1).
fn http_date(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = std::process::Command::new("date")
        .env("LC_ALL", "C")
        .args(["-u", "-d", &format!("@{}", now + offset_secs)])
        .arg("+%a, %d %b %Y %H:%M:%S GMT")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn doctor_flags_a_skewed_clock_and_gives_up_on_a_silent_worker() {
    use axum::routing::get;
    let m = Machine::new().await;

    // A Worker whose clock is ten minutes behind this machine's.
    let date = http_date(-600);
    let app = axum::Router::new()
        .route(
            "/health",
            get(move || {
                let date = date.clone();
                async move { ([("date", date)], "ok") }
            }),
        )
        .route(
            "/sessions",
            get(|| async { r#"{"ok":true,"sessions":[]}"# }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let skewed = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (code, report, _) = m.doctor(&skewed, TEST_API_KEY, &m.settings()).await;
    assert_eq!(code, 1, "{report}");
    assert!(
        report.lines().any(|l| l
            .starts_with("✗ clock: this machine's clock is 600s ahead of the Worker's")
            || l.starts_with("✗ clock: this machine's clock is 601s ahead of the Worker's")),
        "{report}"
    );
    assert!(report.contains("timedatectl set-ntp true"), "{report}");
    server.abort();

    // A Worker that accepts connections and never answers: the check gives up on time.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let (code, report, took) = m.doctor(&silent_url, TEST_API_KEY, &m.settings()).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(marked(&report, "✗ "), ["Worker reachable"], "{report}");
    assert!(report.contains("timed out"), "{report}");
    assert!(took < Duration::from_secs(12), "doctor took {took:?}");
    holder.abort();
}
