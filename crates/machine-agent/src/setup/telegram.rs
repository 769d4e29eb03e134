//! `ccr-agent telegram setup`: points the bot's webhook at the Worker (`setWebhook`) and sets
//! the bot's command menu (`setMyCommands`), so a new installation needs no hand-made curl.
//!
//! The bot token and the webhook secret are [`Secret`]s: they are sent to Telegram and never
//! printed. The token is part of every Bot API URL, so transport errors are printed without
//! their URL, and anything Telegram answers is scrubbed of both values before it is shown.

use ccr_protocol::wire::bot;
use std::time::Duration;

use ccr_native::{error_chain, Secret};
use serde_json::{json, Value};
use url::Url;

use crate::settings::{parse_worker_url, ConfigError, RawSettings};

pub(crate) use ccr_protocol::wire::bot::DEFAULT_API_BASE;
/// Each Bot API call gives up after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The set-up's own settings as given (the Worker URL is the shared one).
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    /// The bot's token from @BotFather.
    pub(crate) bot_token: Option<Secret>,
    /// The Worker's TELEGRAM_WEBHOOK_SECRET.
    pub(crate) webhook_secret: Option<Secret>,
    /// The Bot API server.
    pub(crate) api_base: String,
}

/// Validated settings for the set-up.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// The Worker's base URL.
    pub(crate) worker_url: Url,
    /// The bot token.
    pub(crate) bot_token: Secret,
    /// The webhook secret (path segment and `secret_token`).
    pub(crate) webhook_secret: Secret,
    /// The Bot API base URL.
    pub(crate) api_base: Url,
}

impl Setup {
    /// Checks every setting; the error names the one to fix (exit code 2).
    pub(crate) fn from_args(common: &RawSettings, args: &Inputs) -> Result<Setup, ConfigError> {
        let raw_url = common.worker_url.as_deref().map(str::trim).unwrap_or("");
        if raw_url.is_empty() {
            return Err(ConfigError(
                "the Worker URL is not set: pass --worker-url (or set CCR_WORKER_URL) to the \
                 Worker's base URL, e.g. https://ccr.example.workers.dev"
                    .into(),
            ));
        }
        let worker_url = parse_worker_url(raw_url)?;
        let bot_token = match &args.bot_token {
            Some(t) if !t.expose().trim().is_empty() => Secret::new(t.expose().trim()),
            _ => {
                return Err(ConfigError(
                    "TELEGRAM_BOT_TOKEN is not set: set it (or pass --bot-token) to the token \
                     @BotFather gave you"
                        .into(),
                ))
            }
        };
        if !valid_bot_token(bot_token.expose()) {
            return Err(ConfigError(
                "TELEGRAM_BOT_TOKEN does not look like a bot token (digits, ':', then letters, \
                 digits, '_' or '-'): copy it again from @BotFather"
                    .into(),
            ));
        }
        let webhook_secret = match &args.webhook_secret {
            Some(s) if !s.expose().trim().is_empty() => Secret::new(s.expose().trim()),
            _ => {
                return Err(ConfigError(
                    "TELEGRAM_WEBHOOK_SECRET is not set: set it (or pass --webhook-secret) to \
                     the value you gave the Worker with `wrangler secret put \
                     TELEGRAM_WEBHOOK_SECRET`"
                        .into(),
                ))
            }
        };
        if !valid_webhook_secret(webhook_secret.expose()) {
            return Err(ConfigError(
                "TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, '_' and '-' \
                 (Telegram's rule for secret_token): generate one with `openssl rand -hex 32` \
                 and put it in the Worker too"
                    .into(),
            ));
        }
        let api_base = Url::parse(args.api_base.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                ConfigError(format!(
                    "TELEGRAM_API_BASE {:?} must be an http(s) URL, e.g. {DEFAULT_API_BASE}",
                    args.api_base
                ))
            })?;
        Ok(Setup {
            worker_url,
            bot_token,
            webhook_secret,
            api_base,
        })
    }

    /// `<worker>/webhook/telegram/<secret>`.
    pub(crate) fn webhook_url(&self) -> Url {
        webhook_url(&self.worker_url, self.webhook_secret.expose())
    }

    /// The webhook URL with the secret replaced, for printing.
    pub(crate) fn webhook_url_shown(&self) -> String {
        webhook_url(&self.worker_url, "SECRET")
            .as_str()
            .replace("/SECRET", "/<TELEGRAM_WEBHOOK_SECRET>")
    }

    fn method_url(&self, method: &str) -> Url {
        let mut url = self.api_base.clone();
        let path = format!(
            "{}/bot{}/{method}",
            url.path().trim_end_matches('/'),
            self.bot_token.expose()
        );
        url.set_path(&path);
        url
    }

    /// Replaces the token and the secret wherever they appear in `text`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        text.replace(self.bot_token.expose(), "<TELEGRAM_BOT_TOKEN>")
            .replace(self.webhook_secret.expose(), "<TELEGRAM_WEBHOOK_SECRET>")
    }
}

/// `<worker base>/webhook/telegram/<secret>`.
pub(crate) fn webhook_url(worker: &Url, secret: &str) -> Url {
    let mut url = worker.clone();
    let path = format!(
        "{}/webhook/telegram/{secret}",
        url.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// Telegram's shape of a bot token: `<bot id>:<secret part>`.
fn valid_bot_token(token: &str) -> bool {
    let Some((id, rest)) = token.split_once(':') else {
        return false;
    };
    !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Telegram's rule for `secret_token`; it also keeps the path segment URL-safe.
fn valid_webhook_secret(secret: &str) -> bool {
    (1..=256).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `setWebhook` parameters.
pub(crate) fn set_webhook_params(setup: &Setup) -> Value {
    json!({
        "url": setup.webhook_url().as_str(),
        "secret_token": setup.webhook_secret.expose(),
        "allowed_updates": bot::ALLOWED_UPDATES,
        "drop_pending_updates": false,
    })
}

/// The `setMyCommands` parameters.
pub(crate) fn set_my_commands_params() -> Value {
    let commands: Vec<Value> = bot::COMMANDS
        .iter()
        .map(|(command, description)| json!({"command": command, "description": description}))
        .collect();
    json!({ "commands": commands })
}

/// Telegram refused a call, or could not be reached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// Telegram answered `ok: false`.
    #[error("Telegram refused {method} (HTTP {status}): {description}{hint}")]
    Refused {
        /// The Bot API method.
        method: &'static str,
        /// The HTTP status.
        status: u16,
        /// Telegram's `description`, scrubbed of secrets.
        description: String,
        /// What to do about it, when we know.
        hint: String,
    },
    /// No usable answer.
    #[error("calling Telegram's {method}: {why}")]
    Transport {
        /// The Bot API method.
        method: &'static str,
        /// What went wrong, without the URL (it carries the token).
        why: String,
    },
}

/// Calls `setWebhook` then `setMyCommands`; returns the lines to print.
pub(crate) async fn run(setup: &Setup) -> Result<Vec<String>, SetupError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(CALL_TIMEOUT)
        .build()
        .map_err(|e| SetupError::Transport {
            method: "setWebhook",
            why: format!("building the HTTP client: {}", e.without_url()),
        })?;
    let mut lines = Vec::new();
    let said = call(&http, setup, "setWebhook", &set_webhook_params(setup)).await?;
    lines.push(format!(
        "setWebhook: Telegram now sends {} updates to {} with the webhook secret in \
         X-Telegram-Bot-Api-Secret-Token; pending updates kept{}",
        bot::ALLOWED_UPDATES.join(", "),
        setup.webhook_url_shown(),
        said.map(|d| format!(" (Telegram: {d})"))
            .unwrap_or_default()
    ));
    let said = call(&http, setup, "setMyCommands", &set_my_commands_params()).await?;
    let names: Vec<String> = bot::COMMANDS.iter().map(|(c, _)| format!("/{c}")).collect();
    lines.push(format!(
        "setMyCommands: the bot's menu is {}{}",
        names.join(", "),
        said.map(|d| format!(" (Telegram: {d})"))
            .unwrap_or_default()
    ));
    Ok(lines)
}

/// One Bot API call; `Ok` carries Telegram's `description`, if any.
async fn call(
    http: &reqwest::Client,
    setup: &Setup,
    method: &'static str,
    params: &Value,
) -> Result<Option<String>, SetupError> {
    let transport = |why: String| SetupError::Transport {
        method,
        why: setup.scrub(&why),
    };
    let resp = http
        .post(setup.method_url(method))
        .json(params)
        .send()
        .await
        .map_err(|e| transport(transport_error(e)))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| transport(format!("reading the answer: {}", transport_error(e))))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let description = body
        .get("description")
        .and_then(Value::as_str)
        .map(|d| setup.scrub(d));
    if body.get("ok") == Some(&Value::Bool(true)) && (200..300).contains(&status) {
        return Ok(description);
    }
    let description = description.unwrap_or_else(|| {
        let shown: String = text.chars().take(200).collect();
        setup.scrub(&format!("no description; the answer was {shown:?}"))
    });
    let hint = match status {
        401 | 404 => "; TELEGRAM_BOT_TOKEN is wrong: copy it again from @BotFather".to_owned(),
        _ if method == "setWebhook" && description.contains("HTTPS") => {
            "; Telegram only calls https:// webhooks: pass the deployed Worker's URL".to_owned()
        }
        _ => String::new(),
    };
    Err(SetupError::Refused {
        method,
        status,
        description,
        hint,
    })
}

/// A reqwest error and its causes, without the URL (it carries the bot token).
fn transport_error(e: reqwest::Error) -> String {
    error_chain(&e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(worker: &str, token: &str, secret: &str) -> Result<Setup, ConfigError> {
        let common = RawSettings {
            worker_url: Some(worker.into()),
            ..Default::default()
        };
        let args = Inputs {
            bot_token: Some(Secret::new(token)),
            webhook_secret: Some(Secret::new(secret)),
            api_base: DEFAULT_API_BASE.into(),
        };
        Setup::from_args(&common, &args)
    }

    #[test]
    fn webhook_url_and_params() {
        let s = setup("https://ccr.example.workers.dev/", "123:AB-c_d", "s3cr_t-X").unwrap();
        assert_eq!(
            s.webhook_url().as_str(),
            "https://ccr.example.workers.dev/webhook/telegram/s3cr_t-X"
        );
        assert_eq!(
            s.webhook_url_shown(),
            "https://ccr.example.workers.dev/webhook/telegram/<TELEGRAM_WEBHOOK_SECRET>"
        );
        assert_eq!(
            set_webhook_params(&s),
            json!({
                "url": "https://ccr.example.workers.dev/webhook/telegram/s3cr_t-X",
                "secret_token": "s3cr_t-X",
                "allowed_updates": ["message", "edited_message", "callback_query"],
                "drop_pending_updates": false,
            })
        );
        assert_eq!(
            s.method_url("setWebhook").as_str(),
            "https://api.telegram.org/bot123:AB-c_d/setWebhook"
        );
        let s = setup("http://127.0.0.1:9/base", "1:x", "y").unwrap();
        assert_eq!(
            s.webhook_url().as_str(),
            "http://127.0.0.1:9/base/webhook/telegram/y"
        );
        let cmds = set_my_commands_params();
        assert_eq!(
            cmds["commands"].as_array().unwrap().len(),
            bot::COMMANDS.len()
        );
        for c in cmds["commands"].as_array().unwrap() {
            let d = c["description"].as_str().unwrap();
            // Telegram's limits: command 1-32 of a-z0-9_, description 1-256 characters.
            assert!((1..=256).contains(&d.chars().count()));
            let name = c["command"].as_str().unwrap();
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
    }

    #[test]
    fn bad_settings_name_the_variable_and_never_echo_it() {
        let e = setup("https://w", "not a token", "ok").unwrap_err();
        assert!(e.0.contains("TELEGRAM_BOT_TOKEN") && !e.0.contains("not a token"));
        let e = setup("https://w", "1:x", "has space").unwrap_err();
        assert!(e.0.contains("TELEGRAM_WEBHOOK_SECRET") && !e.0.contains("has space"));
        let e = setup("https://w", "1:x", &"a".repeat(257)).unwrap_err();
        assert!(e.0.contains("TELEGRAM_WEBHOOK_SECRET"));
        let e = setup("", "1:x", "y").unwrap_err();
        assert!(e.0.contains("--worker-url"));
        let e = setup("ftp://w", "1:x", "y").unwrap_err();
        assert!(e.0.contains("http"));
    }

    #[test]
    fn scrub_hides_both_secrets() {
        let s = setup("https://w", "42:tok", "sec").unwrap();
        assert_eq!(
            s.scrub("url /bot42:tok/x?sec"),
            "url /bot<TELEGRAM_BOT_TOKEN>/x?<TELEGRAM_WEBHOOK_SECRET>"
        );
    }
}
