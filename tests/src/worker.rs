//! The real Worker under `wrangler dev`, one per test, on its own ports and state directory.

use ccr_protocol::wire::{header, route};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::socket::{Refused, TestSocket};
use crate::telegram::Update;
use crate::{ports::free_port, wait_for, workspace_root};

/// The admin key every test Worker gets unless a test sets another.
pub const TEST_API_KEY: &str = "test-admin-key-0123456789abcdef";
/// The webhook secret every test Worker gets unless a test sets another.
pub const TEST_WEBHOOK_SECRET: &str = "test-webhook-secret_0123";
/// The relay token every test Worker gets unless a test sets another.
pub const TEST_RELAY_TOKEN: &str = "test-relay-token-0123456789";
/// The bot token every test Worker gets.
pub const TEST_BOT_TOKEN: &str = "123456:TEST-bot-token";

/// Lowercase hex HMAC-SHA256(key, message): how machine keys and channel tokens derive.
fn derive(key: &str, message: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|e| panic!("HMAC takes any key length: {e}"));
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The machine-scoped key of `machine` under [`TEST_API_KEY`].
pub fn machine_key(machine: &str) -> String {
    derive(TEST_API_KEY, machine)
}

/// The bridge token of relay channel `channel` under [`TEST_RELAY_TOKEN`].
pub fn channel_token(channel: &str) -> String {
    derive(TEST_RELAY_TOKEN, channel)
}

/// How to start a Worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Plain vars (`--var NAME:value`), e.g. `TELEGRAM_API_BASE`, `ALLOWED_CHAT_IDS`.
    pub vars: Vec<(String, String)>,
    /// Secrets, written to an env file (wrangler shows them as hidden, never their values).
    pub secrets: Vec<(String, String)>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            vars: vec![],
            secrets: vec![
                ("CCR_API_KEY".into(), TEST_API_KEY.into()),
                ("TELEGRAM_WEBHOOK_SECRET".into(), TEST_WEBHOOK_SECRET.into()),
                ("RELAY_TOKEN".into(), TEST_RELAY_TOKEN.into()),
                ("TELEGRAM_BOT_TOKEN".into(), TEST_BOT_TOKEN.into()),
            ],
        }
    }
}

impl WorkerOptions {
    /// Adds or replaces a var.
    pub fn var(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.retain(|(n, _)| n != name);
        self.vars.push((name.into(), value.into()));
        self
    }

    /// Adds or replaces a secret.
    pub fn secret(mut self, name: &str, value: impl Into<String>) -> Self {
        self.secrets.retain(|(n, _)| n != name);
        self.secrets.push((name.into(), value.into()));
        self
    }
}

/// Starts a Bot API stand-in and a Worker that sends to it and allows `chats`: how every
/// suite that involves Telegram starts its Worker.
pub async fn start_with_bot(
    opts: WorkerOptions,
    chats: &[i64],
) -> anyhow::Result<(Worker, crate::telegram::BotApi)> {
    let bot = crate::telegram::BotApi::start(TEST_BOT_TOKEN).await?;
    let chats: Vec<String> = chats.iter().map(i64::to_string).collect();
    let opts = opts
        .var("TELEGRAM_API_BASE", bot.base_url())
        .var("ALLOWED_CHAT_IDS", chats.join(","));
    Ok((Worker::start(opts).await?, bot))
}

/// What the Worker answered to a notification.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The (first) Telegram message's id: what a reply replies to.
    pub message_id: i64,
    /// The session's `/cmd` token.
    pub token: String,
}

/// A running `wrangler dev`. Dropping it kills its whole process group (wrangler, workerd).
pub struct Worker {
    child: Option<Child>,
    opts: WorkerOptions,
    port: u16,
    dir: tempfile::TempDir,
    starts: u32,
    http: reqwest::Client,
}

impl Worker {
    /// Starts a Worker with default options and waits until `/health` answers.
    pub async fn start_default() -> anyhow::Result<Worker> {
        Self::start(WorkerOptions::default()).await
    }

    /// Starts a Worker and waits until `/health` answers.
    pub async fn start(opts: WorkerOptions) -> anyhow::Result<Worker> {
        let dir = tempfile::Builder::new().prefix("ccr-worker-").tempdir()?;
        let mut w = Worker {
            child: None,
            opts,
            port: free_port(),
            dir,
            starts: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        w.spawn().await?;
        Ok(w)
    }

    /// The base URL, e.g. `http://127.0.0.1:43123`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The listening address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `base_url() + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
    }

    /// The WebSocket base, e.g. `ws://127.0.0.1:43123`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// The persisted state directory (Durable Object SQLite, KV).
    pub fn persist_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The Worker's own socket in its workerd, behind `wrangler dev`'s local proxy (wrangler
    /// runs two workerd processes: a proxy on `addr()` that forwards every request, and the
    /// Worker's own, on a port it picks). Found from `/proc`: the listening sockets of the
    /// `workerd` processes in this Worker's process group, probed for `/health`; the port
    /// changes on a restart, so ask again after one.
    ///
    /// For suites that must not go through the proxy: after the Worker answers a request
    /// before its upload has ended (an early 413), wrangler 4.86's proxy holds the next request
    /// it forwards on that connection until the request's own caller gives up, and then
    /// replays it (a GET) — shown with `/health`, no relay involved, and not seen on this
    /// socket. Production has no such proxy.
    pub async fn direct_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        let group = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("the Worker is not running")?;
        let ports = crate::ports::listening_ports_of_group(group, "workerd");
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        for port in ports.into_iter().filter(|p| *p != self.port) {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let Ok(resp) = probe
                .get(format!("http://{addr}{}", route::HEALTH))
                .send()
                .await
            else {
                continue;
            };
            if resp.status() == 200 && resp.text().await.unwrap_or_default() == "ok" {
                return Ok(addr);
            }
        }
        bail!("no workerd socket of this Worker answers {}", route::HEALTH)
    }

    /// Everything wrangler and workerd printed, across restarts.
    pub fn log(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.starts {
            if let Ok(text) = std::fs::read_to_string(self.log_path(i)) {
                all.push_str(&text);
            }
        }
        all
    }

    /// A client with no default headers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The webhook secret this Worker was started with (path and header).
    pub fn webhook_secret(&self) -> &str {
        self.opts
            .secrets
            .iter()
            .find(|(name, _)| name == "TELEGRAM_WEBHOOK_SECRET")
            .map_or("", |(_, value)| value)
    }

    /// The Telegram webhook's URL with `path_secret` in its path.
    pub fn webhook_url(&self, path_secret: &str) -> String {
        self.url(&route::webhook(path_secret))
    }

    /// A POST to the Telegram webhook with `path_secret` in the path and, when given, `header`
    /// as `X-Telegram-Bot-Api-Secret-Token`; the body is the caller's. Every webhook call
    /// goes through here, the well-formed ones ([`Worker::send_update`]) and the ones with
    /// wrong secrets or broken bodies.
    pub fn webhook_post(&self, path_secret: &str, header: Option<&str>) -> RequestBuilder {
        let req = self.http.post(self.webhook_url(path_secret));
        match header {
            Some(h) => req.header(header::TELEGRAM_SECRET, h),
            None => req,
        }
    }

    /// Posts `update` to the webhook the way Telegram does, with this Worker's secret.
    pub async fn send_update(&self, update: &Update) -> reqwest::Result<reqwest::Response> {
        let secret = self.webhook_secret();
        self.webhook_post(secret, Some(secret))
            .json(&update.json())
            .send()
            .await
    }

    /// Telegram delivers, in `chat`, update `update_id`: a text reply to message `to` (how a
    /// person answers a notification). Panics unless the webhook answers 200.
    pub async fn reply(&self, chat: i64, update_id: i64, to: i64, text: &str) {
        self.deliver(&Update::reply(update_id, chat, to, text))
            .await;
    }

    /// Telegram delivers `update` to the webhook. Panics unless the webhook answers 200.
    pub async fn deliver(&self, update: &Update) {
        let id = update.update_id();
        let resp = self
            .send_update(update)
            .await
            .unwrap_or_else(|e| panic!("posting update {id}: {e}"));
        assert_eq!(resp.status(), 200, "the webhook refused update {id}");
    }

    /// A request to the Worker's API presenting `key` (as a bearer token) and, when given,
    /// the machine it acts for (`X-CCR-Machine-Id`); no key sends no credentials.
    pub fn api_request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        machine: Option<&str>,
    ) -> RequestBuilder {
        let mut req = self.http.request(method, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(m) = machine {
            req = req.header(header::MACHINE_ID, m);
        }
        req
    }

    /// A request to the Worker's API with the admin key ([`TEST_API_KEY`]).
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.api_request(method, path, Some(TEST_API_KEY), None)
    }

    /// POSTs `body` to `path` with `key`; returns the status and the JSON answer.
    pub async fn post_api(
        &self,
        path: &str,
        key: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .api_request(Method::POST, path, Some(key), None)
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        Ok((status, body))
    }

    /// Registers `session` on `machine` (with `label`, if any) with the admin key; fails
    /// unless the Worker answers 200.
    pub async fn register(
        &self,
        session: &str,
        machine: &str,
        label: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut body = json!({"sessionId": session, "machineId": machine});
        if let Some(l) = label {
            body["label"] = json!(l);
        }
        let (status, answer) = self
            .post_api(route::SESSIONS_REGISTER, TEST_API_KEY, &body)
            .await?;
        if status != 200 {
            bail!("registering {session} on {machine}: {status} {answer}");
        }
        Ok(())
    }

    /// Sends a notification for `session` with the admin key; fails unless the Worker
    /// answers 200.
    pub async fn notify(&self, session: &str, text: &str) -> anyhow::Result<Notification> {
        let (status, answer) = self
            .post_api(
                route::NOTIFICATIONS_SEND,
                TEST_API_KEY,
                &json!({"sessionId": session, "text": text}),
            )
            .await?;
        if status != 200 {
            bail!("notifying {session}: {status} {answer}");
        }
        Ok(Notification {
            message_id: answer["messageId"]
                .as_i64()
                .with_context(|| format!("no messageId in {answer}"))?,
            token: answer["token"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// `GET /sessions` with the admin key: the JSON answer.
    pub async fn sessions(&self) -> anyhow::Result<Value> {
        let resp = self.admin(Method::GET, route::SESSIONS).send().await?;
        Ok(resp.json().await?)
    }

    /// Opens the machine socket for `machine` with `key`.
    pub async fn socket(&self, machine: &str, key: &str) -> Result<TestSocket, Refused> {
        TestSocket::connect(&self.ws_url(""), machine, key).await
    }

    /// Stops the Worker (SIGKILL to its process group, like a crash) and starts it again on
    /// the same port and state directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// Kills the process group and waits for the leader to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&child);
            let _ = child.wait().await;
        }
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("wrangler-{start}.log"))
    }

    /// Starts wrangler and waits for `/health`. A port picked free can be taken before
    /// workerd binds it (the kernel hands the same range out for outgoing connections, and
    /// other suites run alongside): then it starts again, on new ports the first time, on the
    /// same port after a pause for a restart (agents know its URL).
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let first = self.starts == 0;
        for attempt in 1..=3 {
            match self.spawn_once().await? {
                Spawned::Ready => return Ok(()),
                Spawned::PortTaken if attempt < 3 => {
                    self.kill().await;
                    if first {
                        self.port = free_port();
                    } else {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Spawned::PortTaken => {}
            }
        }
        let log = self.log();
        self.kill().await;
        bail!(
            "wrangler could not bind its ports in 3 attempts:\n{}",
            tail(&log, 40)
        )
    }

    async fn spawn_once(&mut self) -> anyhow::Result<Spawned> {
        self.starts += 1;
        let root = workspace_root();
        let env_file = self.dir.path().join("secrets.env");
        write_env_file(&env_file, &self.opts.secrets)?;
        let config = self.dir.path().join("wrangler.toml");
        let build = self.dir.path().join("build");
        if !build.exists() {
            copy_dir(&root.join(BUILD_DIR), &build)
                .context("copying the Worker build (run scripts/build-worker.sh first)")?;
        }
        write_test_config(&root, &config, &build)?;
        let log = File::create(self.log_path(self.starts))?;
        let mut cmd = Command::new(root.join("node_modules/.bin/wrangler"));
        cmd.current_dir(&root)
            .arg("dev")
            .arg("--config")
            .arg(&config)
            .args(["--ip", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--inspector-port", &free_port().to_string()])
            .arg("--persist-to")
            .arg(self.persist_dir())
            .arg("--env-file")
            .arg(&env_file)
            .args(["--log-level", "log", "--show-interactive-dev-session=false"])
            .env("CCR_SKIP_BUILD", "1")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("CI", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        for (name, value) in &self.opts.vars {
            cmd.arg("--var").arg(format!("{name}:{value}"));
        }
        let child = cmd
            .spawn()
            .context("starting wrangler dev (run scripts/setup.sh first)")?;
        self.child = Some(child);
        let health = self.url(route::HEALTH);
        let this_log = self.log_path(self.starts);
        let ready = wait_for("the Worker's /health", Duration::from_secs(90), || {
            let http = self.http.clone();
            let health = health.clone();
            let this_log = this_log.clone();
            async move {
                let said = std::fs::read_to_string(&this_log).unwrap_or_default();
                if said.contains("Address already in use") {
                    return Some(Spawned::PortTaken);
                }
                match http
                    .get(&health)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => Some(Spawned::Ready),
                    _ => None,
                }
            }
        })
        .await;
        match ready {
            Ok(spawned) => Ok(spawned),
            Err(e) => {
                let log = self.log();
                self.kill().await;
                bail!("{e}; wrangler said:\n{}", tail(&log, 40));
            }
        }
    }
}

/// How one start of wrangler ended.
enum Spawned {
    /// `/health` answers.
    Ready,
    /// A port it was given was taken before it could bind it.
    PortTaken,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_group(&child);
        }
    }
}

fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        // The child leads its own process group (process_group(0)), so -pid reaches
        // wrangler and the workerd it started. `kill(1)` rather than libc: no unsafe here.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// Where scripts/build-worker.sh leaves the Worker.
const BUILD_DIR: &str = "crates/router-worker/build";

/// Copies a directory tree (the Worker build: a few files).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The project's wrangler.toml without its `[build]` section and with `main` pointing at this
/// Worker's own copy of the build. Tests run the build made before them: a build section
/// would make wrangler watch sources, and a shared build directory would let a rebuild
/// elsewhere reload (or break) a running test's Worker mid-test.
fn write_test_config(root: &Path, path: &Path, build: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(root.join("wrangler.toml")).context("reading wrangler.toml")?;
    let mut out = String::new();
    let mut in_build = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_build = trimmed == "[build]";
        }
        if in_build {
            continue;
        }
        match trimmed.strip_prefix("main = \"") {
            Some(rest) => {
                let rel = rest.trim_end_matches('"');
                let inside = rel
                    .strip_prefix(BUILD_DIR)
                    .map(|r| r.trim_start_matches('/'))
                    .with_context(|| {
                        format!("wrangler.toml's main {rel:?} is not under {BUILD_DIR}")
                    })?;
                out.push_str(&format!("main = \"{}\"\n", build.join(inside).display()));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn write_env_file(path: &Path, secrets: &[(String, String)]) -> anyhow::Result<()> {
    let mut text = String::new();
    for (name, value) in secrets {
        text.push_str(&format!("{name}={value}\n"));
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
