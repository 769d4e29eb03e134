//! `/peek`: the text a session's pane shows, for the chat. The pane's identity is checked
//! first against the one its hook recorded, as before typing (a pane id reused by somebody's
//! shell is never captured; marking the session gone is left to its next command), then
//! captured with `capture-pane -p` (text only) and cleaned of any escape sequences left.

use ccr_protocol::MAX_PEEK_CHARS;

use super::inject::{InjectError, Injector};
use super::sessions::Sessions;

/// The screen of `session_id`'s pane, or why not (for the chat).
pub(crate) async fn screen(
    sessions: &Sessions,
    injector: &Injector,
    session_id: &str,
) -> Result<String, String> {
    let rec = match sessions.get(session_id) {
        Err(e) => return Err(format!("the agent could not read its session records: {e}")),
        Ok(None) => {
            return Err(format!(
                "session {session_id} is not known on this machine (it may have ended)"
            ))
        }
        Ok(Some(rec)) => rec,
    };
    let Some(pane) = rec.pane() else {
        return Err("the session is not running inside tmux: there is no pane to show".into());
    };
    if let Some((_, reason)) = &rec.gone {
        return Err(format!("the session's pane is gone ({reason})"));
    }
    let Some(recorded) = &rec.identity else {
        return Err(
            "the session's pane was recorded without its identity, so the agent cannot \
                    tell whether it is still Claude Code's: wait for its next notification"
                .into(),
        );
    };
    match injector.identity(&pane).await {
        Ok(now) => {
            if let Some(difference) = recorded.difference(&now) {
                return Err(format!("the session's pane is gone ({difference})"));
            }
        }
        Err(InjectError::PaneGone(p)) => {
            return Err(format!(
                "the session's pane is gone (pane {p} no longer exists)"
            ))
        }
        Err(e) => return Err(e.to_string()),
    }
    let raw = injector.capture(&pane).await.map_err(|e| e.to_string())?;
    Ok(last_chars(&strip_ansi(&raw), MAX_PEEK_CHARS))
}

/// `text` without terminal escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL/ST`, and
/// two-character escapes) and without control characters other than line breaks and tabs.
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            match chars.next() {
                Some('[') => {
                    for d in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&d) {
                            break;
                        }
                    }
                }
                // Character set designations: one more character.
                Some('(' | ')') => {
                    chars.next();
                }
                Some(']') => {
                    while let Some(d) = chars.next() {
                        if d == '\u{7}' {
                            break;
                        }
                        if d == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            }
        } else if !c.is_control() || c == '\n' || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// The screen without trailing blank lines and trailing spaces, cut to its last `max`
/// characters at a line start when one is near.
fn last_chars(screen: &str, max: usize) -> String {
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    let text = lines.get(..end).unwrap_or_default().join("\n");
    let count = text.chars().count();
    if count <= max {
        return text;
    }
    let tail: String = text.chars().skip(count - max).collect();
    match tail.find('\n') {
        Some(i) if i < max / 4 => tail.get(i + 1..).unwrap_or_default().to_owned(),
        _ => tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_controls_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[1;32mgreen\u{1b}[0m \u{1b}]0;title\u{7}x\u{1b}(By\u{8}\n\tz"),
            "green xy\n\tz"
        );
    }

    #[test]
    fn the_last_lines_are_kept() {
        assert_eq!(last_chars("a  \nb\n\n  \n", 100), "a\nb");
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let cut = last_chars(&many, 50);
        assert!(cut.ends_with("line 99"), "{cut}");
        assert!(cut.starts_with("line "), "cut at a line start: {cut}");
        assert!(cut.chars().count() <= 50);
    }
}
