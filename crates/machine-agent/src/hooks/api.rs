//! The Worker's HTTP routes the hooks call, with the key as a Bearer token and the machine in
//! `X-CCR-Machine-Id` (a machine key acts only for its machine).

use ccr_protocol::wire::{header, route};
use std::time::Duration;

use anyhow::{bail, Context};
use ccr_protocol::api::{
    ApprovalOpened, CloseApprovals, ErrorBody, NotificationAnswer, OpenApproval, RegisterSession,
    SendNotification, UnregisterSession,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::settings::WorkerConfig;

/// A client for the Worker's API.
pub(super) struct WorkerApi {
    worker: WorkerConfig,
    http: reqwest::Client,
}

impl WorkerApi {
    /// A client whose every request gives up after `timeout`.
    pub(super) fn new(worker: WorkerConfig, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .timeout(timeout)
            .build()
            .context("building the HTTP client")?;
        Ok(Self { worker, http })
    }

    /// `POST /sessions/register`.
    pub(super) async fn register(
        &self,
        session_id: &str,
        label: Option<&str>,
    ) -> anyhow::Result<()> {
        let body = RegisterSession {
            session_id: session_id.to_owned(),
            machine_id: self.worker.machine_id.clone(),
            label: label.map(str::to_owned),
        };
        self.post::<_, serde_json::Value>(route::SESSIONS_REGISTER, &body)
            .await
            .map(drop)
    }

    /// `POST /sessions/unregister`.
    pub(super) async fn unregister(&self, session_id: &str) -> anyhow::Result<()> {
        let body = UnregisterSession {
            session_id: session_id.to_owned(),
        };
        self.post::<_, serde_json::Value>(route::SESSIONS_UNREGISTER, &body)
            .await
            .map(drop)
    }

    /// `POST /notifications/send`: sent at once, or queued in the Worker's outbox (202) while
    /// Telegram cannot take it.
    pub(super) async fn notify(
        &self,
        session_id: &str,
        text: &str,
    ) -> anyhow::Result<NotificationAnswer> {
        let body = SendNotification {
            session_id: session_id.to_owned(),
            text: text.to_owned(),
            chat_id: None,
            buttons: None,
            reply_markup: None,
        };
        self.post(route::NOTIFICATIONS_SEND, &body).await
    }

    /// `POST /approvals`: the chat gets a card for this permission request.
    pub(super) async fn open_approval(
        &self,
        body: &OpenApproval,
    ) -> anyhow::Result<ApprovalOpened> {
        self.post(route::APPROVALS, body).await
    }

    /// `POST /approvals/close`: the session moved on without the chat's decision.
    pub(super) async fn close_approvals(
        &self,
        ids: Vec<String>,
        reason: &str,
    ) -> anyhow::Result<()> {
        let body = CloseApprovals {
            request_ids: ids,
            reason: reason.to_owned(),
        };
        self.post::<_, serde_json::Value>(route::APPROVALS_CLOSE, &body)
            .await
            .map(drop)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        route: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let url = self.worker.http_url(route);
        let resp = self
            .http
            .post(url.clone())
            .bearer_auth(self.worker.api_key.expose())
            .header(header::MACHINE_ID, &self.worker.machine_id)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading the answer of POST {url}"))?;
        if !status.is_success() {
            let why = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| text.chars().take(200).collect());
            bail!("POST {url} answered {status}: {why}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("POST {url} answered something that is not the expected JSON"))
    }
}
