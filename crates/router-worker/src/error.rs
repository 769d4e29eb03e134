//! [`ApiError`]: the one error type of every request path, so handlers can use `?`.
//!
//! Pure (tested natively): the decisions that refuse a request build an [`ApiError::Answer`]
//! with the status and message the client sees; the Worker shell (`http`) turns it into
//! `{"ok":false,"error":...}`. Failures underneath (storage, the runtime) are not the caller's
//! fault: they travel as errors to the runtime, which the Worker reports as its 500.

use serde::de::DeserializeOwned;

use crate::auth::AuthError;
use crate::relay::TokenError;
use crate::store::StoreError;

/// Why a request did not succeed.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// Told to the caller: `status`, `{"ok":false,"error":message}`, and `Retry-After` (in
    /// seconds) when set.
    Answer {
        /// The HTTP status.
        status: u16,
        /// What went wrong, for a person.
        message: String,
        /// When to try again (seconds), for the `Retry-After` header.
        retry_after: Option<u32>,
    },
    /// The Durable Object's storage failed.
    Store(StoreError),
    /// The runtime failed (a binding, a header, a fetch).
    #[cfg(target_arch = "wasm32")]
    Runtime(worker::Error),
}

impl ApiError {
    /// A refusal with `status` and `message`.
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError::Answer {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A refusal that tells the client to try again in `secs` seconds.
    pub(crate) fn busy(status: u16, message: impl Into<String>, secs: u32) -> Self {
        ApiError::Answer {
            status,
            message: message.into(),
            retry_after: Some(secs),
        }
    }

    /// 404 for a method and path nothing answers.
    pub(crate) fn no_route(method: &str, path: &str) -> Self {
        Self::new(404, format!("no route for {method} {path}"))
    }

    /// 405 naming the method that `path` takes.
    pub(crate) fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self::new(
            405,
            format!("{method} is not allowed on {path}; use {allowed}"),
        )
    }

    /// 413 for a body over `limit` bytes.
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(413, format!("body over {limit} bytes"))
    }
}

#[cfg(test)]
impl ApiError {
    /// The status and JSON body of an answer; `None` for a failure underneath.
    pub(crate) fn answer(&self) -> Option<(u16, ccr_protocol::api::ErrorBody)> {
        match self {
            ApiError::Answer {
                status, message, ..
            } => Some((*status, ccr_protocol::api::ErrorBody::new(message.clone()))),
            _ => None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

/// A caller without a valid API key: 503 while the Worker has none, else 401.
impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::NotConfigured => 503,
            AuthError::Missing | AuthError::Invalid => 401,
        };
        Self::new(status, e.to_string())
    }
}

/// A bridge without its channel's token: 503 while the Worker has no `RELAY_TOKEN`, else 401.
impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let status = match e {
            TokenError::NotConfigured => 503,
            TokenError::Missing | TokenError::Invalid => 401,
        };
        Self::new(status, e.to_string())
    }
}

/// Reads a JSON request body (already UTF-8 text) into `T`; the 400 says what is wrong.
pub(crate) fn json_body<T: DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::new(400, "empty body; expected a JSON object"));
    }
    serde_json::from_str::<T>(text)
        .map_err(|e| ApiError::new(400, format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccr_protocol::api::RegisterSession;
    use serde_json::json;

    fn answer(e: &ApiError) -> (u16, serde_json::Value) {
        let (status, body) = e.answer().expect("an answer");
        (status, serde_json::to_value(body).unwrap())
    }

    #[test]
    fn answers_are_the_json_error_body() {
        assert_eq!(
            answer(&ApiError::new(403, "nope")),
            (403, json!({"ok": false, "error": "nope"}))
        );
        assert_eq!(
            answer(&ApiError::no_route("GET", "/x")),
            (404, json!({"ok": false, "error": "no route for GET /x"}))
        );
        assert_eq!(
            answer(&ApiError::method_not_allowed("PUT", "/sessions", "GET")),
            (
                405,
                json!({"ok": false, "error": "PUT is not allowed on /sessions; use GET"})
            )
        );
        assert_eq!(
            answer(&ApiError::too_large(10)),
            (413, json!({"ok": false, "error": "body over 10 bytes"}))
        );
        assert!(matches!(
            ApiError::busy(429, "later", 1),
            ApiError::Answer {
                status: 429,
                retry_after: Some(1),
                ..
            }
        ));
        assert!(ApiError::from(StoreError("disk".into())).answer().is_none());
    }

    #[test]
    fn credential_refusals() {
        assert_eq!(answer(&AuthError::NotConfigured.into()).0, 503);
        assert_eq!(answer(&AuthError::Missing.into()).0, 401);
        assert_eq!(
            answer(&AuthError::Invalid.into()),
            (401, json!({"ok": false, "error": "invalid API key"}))
        );
        assert_eq!(answer(&TokenError::NotConfigured.into()).0, 503);
        assert_eq!(answer(&TokenError::Missing.into()).0, 401);
        assert_eq!(
            answer(&TokenError::Invalid.into()),
            (
                401,
                json!({"ok": false, "error": "invalid relay token for this channel"})
            )
        );
    }

    #[test]
    fn json_bodies() {
        let ok: RegisterSession =
            json_body(r#"{"sessionId":"s","machineId":"m"}"#).expect("parses");
        assert_eq!(ok.session_id, "s");
        let empty = json_body::<RegisterSession>("  \n").unwrap_err();
        assert_eq!(
            answer(&empty),
            (
                400,
                json!({"ok": false, "error": "empty body; expected a JSON object"})
            )
        );
        let bad = json_body::<RegisterSession>("{").unwrap_err();
        let (status, body) = answer(&bad);
        assert_eq!(status, 400);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body: "));
    }
}
