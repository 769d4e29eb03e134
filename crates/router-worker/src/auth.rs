//! Who is calling: the admin key, a machine-scoped key, or nobody.
//!
//! Keys are compared in constant time. A machine key is hex HMAC-SHA256(admin key, machine
//! id); it acts only for its own machine, which the caller names (the `/ws` query's
//! `machineId`, or the `X-CCR-Machine-Id` header on HTTP routes).

use ccr_protocol::wire::SUBPROTOCOL;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Holds `CCR_API_KEY`: may act for every machine.
    Admin,
    /// Holds the key derived for this machine: may act only for it.
    Machine(String),
}

impl Principal {
    /// Whether this caller may act for `machine_id`.
    pub fn may_act_for(&self, machine_id: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Machine(own) => own == machine_id,
        }
    }

    /// Encodes for the Worker → Durable Object hop (`admin` or `machine:<id>`).
    pub fn encode(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Machine(id) => format!("machine:{id}"),
        }
    }

    /// Decodes what [`Principal::encode`] wrote.
    pub fn decode(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Principal::Admin),
            _ => text
                .strip_prefix("machine:")
                .filter(|id| ccr_protocol::validate::machine_id(id).is_ok())
                .map(|id| Principal::Machine(id.to_owned())),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key in `X-API-Key`, `Authorization: Bearer` or the socket subprotocol.
    #[error("missing API key: send X-API-Key or Authorization: Bearer")]
    Missing,
    /// A key was sent but matches neither the admin key nor the named machine's key.
    #[error("invalid API key")]
    Invalid,
    /// The Worker has no `CCR_API_KEY`, so nobody can be let in.
    #[error("the Worker has no CCR_API_KEY configured")]
    NotConfigured,
}

/// Whether a Telegram webhook call carries the configured secret both in its path and in
/// its `X-Telegram-Bot-Api-Secret-Token` header; nothing passes while none is configured.
pub fn webhook_allowed(configured: &str, path_secret: &str, header: &str) -> bool {
    // Evaluate both comparisons (no short circuit), so timing says nothing about which failed.
    let path_ok = ct_eq(path_secret, configured);
    let header_ok = ct_eq(header, configured);
    !configured.is_empty() && (path_ok & header_ok)
}

/// Lowercase hex HMAC-SHA256(key, message): machine keys and relay channel tokens.
pub fn derive_key(secret: &str, message: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time string equality (the length is not secret).
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The key a request presents: `X-API-Key` wins, else `Authorization: Bearer <key>`.
pub fn presented_key<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(k) = x_api_key.map(str::trim).filter(|k| !k.is_empty()) {
        return Some(k);
    }
    let auth = authorization?.trim();
    let (scheme, rest) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(rest.trim()).filter(|k| !k.is_empty())
}

/// The key in a `Sec-WebSocket-Protocol` list `ccr, <key>`.
pub fn subprotocol_key(header: Option<&str>) -> Option<&str> {
    let mut parts = header?.split(',').map(str::trim);
    if parts.next()? != SUBPROTOCOL {
        return None;
    }
    parts.next().filter(|k| !k.is_empty())
}

/// Checks `presented` against the admin key and, when a machine is named, its derived key.
pub fn authenticate(
    admin_key: &str,
    presented: Option<&str>,
    machine: Option<&str>,
) -> Result<Principal, AuthError> {
    if admin_key.is_empty() {
        return Err(AuthError::NotConfigured);
    }
    let presented = presented.ok_or(AuthError::Missing)?;
    if ct_eq(presented, admin_key) {
        return Ok(Principal::Admin);
    }
    if let Some(machine) = machine.filter(|m| ccr_protocol::validate::machine_id(m).is_ok()) {
        if ct_eq(presented, &derive_key(admin_key, machine)) {
            return Ok(Principal::Machine(machine.to_owned()));
        }
    }
    Err(AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_needs_the_secret_twice() {
        assert!(webhook_allowed("s3cret", "s3cret", "s3cret"));
        assert!(!webhook_allowed("s3cret", "s3cret", ""));
        assert!(!webhook_allowed("s3cret", "nope", "s3cret"));
        assert!(!webhook_allowed("s3cret", "s3cre", "s3cret"));
        assert!(!webhook_allowed("", "", ""), "unconfigured lets nobody in");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            derive_key("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn presented_key_sources() {
        assert_eq!(presented_key(Some("k"), None), Some("k"));
        assert_eq!(presented_key(None, Some("Bearer k")), Some("k"));
        assert_eq!(presented_key(None, Some("bearer   k ")), Some("k"));
        assert_eq!(presented_key(Some("a"), Some("Bearer b")), Some("a"));
        assert_eq!(presented_key(Some(""), Some("Bearer b")), Some("b"));
        assert_eq!(presented_key(None, Some("Basic k")), None);
        assert_eq!(presented_key(None, Some("Bearer")), None);
        assert_eq!(presented_key(None, Some("Bearer ")), None);
        assert_eq!(presented_key(None, None), None);
    }

    #[test]
    fn subprotocol_pair() {
        assert_eq!(subprotocol_key(Some("ccr, abc")), Some("abc"));
        assert_eq!(subprotocol_key(Some("ccr,abc")), Some("abc"));
        assert_eq!(subprotocol_key(Some("abc, ccr")), None);
        assert_eq!(subprotocol_key(Some("ccr")), None);
        assert_eq!(subprotocol_key(None), None);
    }

    #[test]
    fn principals() {
        let admin = "admin-secret";
        let devbox = derive_key(admin, "devbox");
        assert_eq!(authenticate(admin, Some(admin), None), Ok(Principal::Admin));
        assert_eq!(
            authenticate(admin, Some(&devbox), Some("devbox")),
            Ok(Principal::Machine("devbox".into()))
        );
        // Another machine's key, a key without a named machine, a wrong key.
        assert_eq!(
            authenticate(admin, Some(&devbox), Some("laptop")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            authenticate(admin, Some(&devbox), None),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            authenticate(admin, Some("nope"), None),
            Err(AuthError::Invalid)
        );
        assert_eq!(authenticate(admin, None, None), Err(AuthError::Missing));
        // An empty configured key never lets anyone in, not even an empty presented key.
        assert_eq!(
            authenticate("", Some(""), None),
            Err(AuthError::NotConfigured)
        );
        // Malformed machine names are not derived at all.
        assert_eq!(
            authenticate(admin, Some(&derive_key(admin, "a b")), Some("a b")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn scope() {
        let m = Principal::Machine("devbox".into());
        assert!(m.may_act_for("devbox"));
        assert!(!m.may_act_for("laptop"));
        assert!(Principal::Admin.may_act_for("laptop"));
        for p in [Principal::Admin, m] {
            assert_eq!(Principal::decode(&p.encode()), Some(p));
        }
        assert_eq!(Principal::decode("machine:bad id"), None);
        assert_eq!(Principal::decode("root"), None);
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
    }
}
