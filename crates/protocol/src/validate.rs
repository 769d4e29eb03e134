//! Input rules shared by the Worker (which enforces them) and the agent (which checks its
//! own settings before it ever connects).

/// Checks a machine id: `^[A-Za-z0-9-]{1,64}$`.
pub fn machine_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("machineId must be 1 to 64 characters".into());
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("machineId may contain only letters, digits and '-'".into());
    }
    Ok(())
}

/// Checks a project name (`/new <project>`, `ccr-agent --project name=/path`):
/// `^[A-Za-z0-9_.-]{1,32}$`, and not `.` or `..`. Only names travel on the wire; each agent
/// maps them to its own directories.
pub fn project_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 32 {
        return Err("a project name must be 1 to 32 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("a project name may contain only letters, digits, '_', '.' and '-'".into());
    }
    if name == "." || name == ".." {
        return Err("a project name cannot be '.' or '..'".into());
    }
    Ok(())
}

/// Checks a session id: 1..=128 characters, none of them control characters.
pub fn session_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > 128 {
        return Err("sessionId must be 1 to 128 characters".into());
    }
    if id.chars().any(char::is_control) {
        return Err("sessionId must not contain control characters".into());
    }
    Ok(())
}

/// Checks a session label: at most 100 characters, no control characters.
pub fn label(label: &str) -> Result<(), String> {
    if label.chars().count() > 100 {
        return Err("label must be at most 100 characters".into());
    }
    if label.chars().any(char::is_control) {
        return Err("label must not contain control characters".into());
    }
    Ok(())
}

/// Checks a relay channel name: `^[a-z0-9-]{1,64}$` (lowercase, so tokens derive one way).
pub fn channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("channel must be 1 to 64 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("channel may contain only lowercase letters, digits and '-'".into());
    }
    Ok(())
}

/// Checks a Telegram `file_id` as the file route takes it in its path: 1..=256 characters of
/// `A-Z a-z 0-9 - _` (Telegram's ids are URL-safe base64), so it can never be a path or a
/// query of the Bot API URL it is put in.
pub fn file_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 {
        return Err("file id must be 1 to 256 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("file id may contain only letters, digits, '-' and '_'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        for good in ["api", "web.v2", "my_proj-2", &"a".repeat(32)] {
            assert!(project_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "../x",
            "é",
            "x\n",
            &"a".repeat(33),
            "$(x)",
        ] {
            assert!(project_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn machine_ids() {
        assert!(machine_id("devbox").is_ok());
        assert!(machine_id("mac-book-2").is_ok());
        assert!(machine_id(&"a".repeat(64)).is_ok());
        for bad in ["", "dev box", "dev_box", "dévbox", "a/b", "x\n"] {
            assert!(machine_id(bad).is_err(), "{bad:?}");
        }
        assert!(machine_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn session_ids() {
        assert!(session_id("0b7c-4e1f").is_ok());
        assert!(session_id("ünïcødé session").is_ok());
        assert!(session_id(&"é".repeat(128)).is_ok());
        assert!(session_id(&"é".repeat(129)).is_err());
        assert!(session_id("").is_err());
        assert!(session_id("a\u{0}b").is_err());
        assert!(session_id("a\tb").is_err());
    }

    #[test]
    fn labels() {
        assert!(label("").is_ok());
        assert!(label(&"x".repeat(100)).is_ok());
        assert!(label(&"x".repeat(101)).is_err());
        assert!(label("a\u{1b}[31m").is_err());
    }

    #[test]
    fn channels() {
        assert!(channel("default").is_ok());
        assert!(channel("team-2").is_ok());
        for bad in ["", "Team", "a_b", "a/b"] {
            assert!(channel(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_ids() {
        assert!(file_id("AgACAgQAAxkBAAIB-2_x").is_ok());
        assert!(file_id(&"a".repeat(256)).is_ok());
        for bad in ["", "a/b", "a.b", "../x", "a b", "a?b", "a%2Fb", "é"] {
            assert!(file_id(bad).is_err(), "{bad:?}");
        }
        assert!(file_id(&"a".repeat(257)).is_err());
    }
}
