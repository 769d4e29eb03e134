//! A secret string (an API key, a bot token, a relay token) that cannot leak through a log
//! line or a `{:?}` of the struct holding it.

use std::fmt;

/// A secret string: `Debug` and `Display` print `MASKED`, so it never reaches a log.
///
/// It parses from any string (`FromStr`, so clap takes it as a flag or environment value) and
/// serializes as the plain string (the agent's 0600 settings file stores it).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "MASKED MASKED");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            key: Secret,
        }
        assert!(!format!("{:?}", Holder { key: s.clone() }).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn parses_and_serializes_as_the_plain_string() {
        let s: Secret = "k3y".parse().unwrap();
        assert_eq!(s, Secret::new("k3y"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"k3y\"");
        let back: Secret = serde_json::from_str("\"k3y\"").unwrap();
        assert_eq!(back.expose(), "k3y");
    }
}
