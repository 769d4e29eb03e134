//! Finding the last assistant text in a Claude Code transcript (JSONL), reading from the end:
//! transcripts reach hundreds of MB and the answer is in the last few lines.
//!
//! Claude Code writes one line per content block of a streamed assistant message, each with
//! the same `message.id`; the answer is the text blocks of the last assistant message that has
//! any, in order. Thinking and tool_use blocks, tool results (user lines) and sidechain
//! (sub-agent) lines are skipped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

/// Bytes read per step backwards.
const CHUNK: usize = 64 * 1024;
/// Give up after scanning this much from the end without an answer.
pub(super) const MAX_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// Lines longer than this (a huge tool result or image) are skipped unread.
pub(super) const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// The last assistant message's text, or `None` if the scanned part has none.
pub(super) fn last_assistant_text(path: &Path) -> std::io::Result<Option<String>> {
    let mut file = File::open(path)?;
    let len = file.seek(SeekFrom::End(0))?;
    let mut finder = Finder::default();
    let mut pos = len;
    // Bytes from `pos` up to the first unprocessed line end (a partial line's start).
    let mut carry: Vec<u8> = Vec::new();
    // True while the line being assembled is over MAX_LINE_BYTES and is being skipped.
    let mut skipping = false;
    while pos > 0 && len - pos < MAX_SCAN_BYTES {
        let n = CHUNK.min(pos as usize);
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        let mut buf = vec![0u8; n];
        file.read_exact(&mut buf)?;
        buf.extend_from_slice(&carry);
        carry = buf;
        // The old carry holds no line end, so only the new bytes need searching.
        let mut search_end = n;
        while let Some(i) = carry[..search_end].iter().rposition(|&b| b == b'\n') {
            if !skipping && finder.line(&carry[i + 1..]) {
                return Ok(finder.finish());
            }
            skipping = false;
            carry.truncate(i);
            search_end = i;
        }
        if carry.len() > MAX_LINE_BYTES {
            skipping = true;
            carry.clear();
        }
    }
    if pos == 0 && !skipping {
        finder.line(&carry);
    }
    Ok(finder.finish())
}

/// Text blocks of one assistant message, collected from its last line backwards.
#[derive(Default)]
struct Finder {
    message_id: Option<String>,
    found: bool,
    parts: Vec<String>,
}

impl Finder {
    /// Feeds one line (last first). Returns `true` once the answer is complete.
    fn line(&mut self, raw: &[u8]) -> bool {
        let raw = raw.trim_ascii();
        if raw.is_empty() || raw[0] != b'{' {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<Value>(raw) else {
            return false;
        };
        if v.get("isSidechain").and_then(Value::as_bool) == Some(true) {
            return false;
        }
        match v.get("type").and_then(Value::as_str) {
            Some("assistant") => {}
            // A user line (prompt or tool result) ends the assistant message we collect.
            Some("user") => return self.found,
            _ => return false,
        }
        let message = v.get("message").unwrap_or(&Value::Null);
        let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
        if self.found && id != self.message_id {
            return true;
        }
        let texts = texts(message.get("content").unwrap_or(&Value::Null));
        if texts.is_empty() {
            return false;
        }
        if !self.found {
            self.found = true;
            self.message_id = id.clone();
        }
        for t in texts.into_iter().rev() {
            self.parts.push(t);
        }
        // Without an id the message cannot span lines: done.
        id.is_none()
    }

    fn finish(mut self) -> Option<String> {
        if !self.found {
            return None;
        }
        self.parts.reverse();
        let text = self.parts.join("\n\n").trim().to_owned();
        (!text.is_empty()).then_some(text)
    }
}

/// The text blocks of a message's content (a string or a list of blocks).
fn texts(content: &Value) -> Vec<String> {
    match content {
        Value::String(s) if !s.trim().is_empty() => vec![s.clone()],
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .filter(|t| !t.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    fn user_prompt(text: &str) -> Value {
        json!({"type":"user","isSidechain":false,"sessionId":"s","uuid":"u1",
               "message":{"role":"user","content":text}})
    }

    fn assistant(id: &str, content: Value) -> Value {
        json!({"parentUuid":"p","isSidechain":false,"userType":"external","cwd":"/w",
               "sessionId":"s","version":"2.0.0","type":"assistant","uuid":"a",
               "message":{"id":id,"type":"message","role":"assistant","model":"claude",
                          "content":content,"stop_reason":null,
                          "usage":{"input_tokens":3,"output_tokens":10}}})
    }

    fn tool_result(text: &str) -> Value {
        json!({"type":"user","isSidechain":false,
               "message":{"role":"user","content":[{"tool_use_id":"toolu_1","type":"tool_result",
                          "content":text,"is_error":false}]},
               "toolUseResult":{"stdout":text,"stderr":"","interrupted":false}})
    }

    fn write(lines: &[Value], tail: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f.write_all(tail.as_bytes()).unwrap();
        f
    }

    /// A realistic turn: thinking, text + tool_use, tool result, final text split over lines.
    fn realistic() -> Vec<Value> {
        vec![
            json!({"type":"summary","summary":"Fix tests","leafUuid":"x"}),
            user_prompt("please fix the tests"),
            assistant(
                "msg_1",
                json!([{"type":"thinking","thinking":"Let me look","signature":"sig"}]),
            ),
            assistant(
                "msg_1",
                json!([{"type":"text","text":"I'll run the tests first."}]),
            ),
            assistant(
                "msg_1",
                json!([{"type":"tool_use","id":"toolu_1","name":"Bash",
                        "input":{"command":"cargo test"}}]),
            ),
            tool_result("test result: ok. 3 passed"),
            assistant(
                "msg_2",
                json!([{"type":"thinking","thinking":"All good","signature":"sig"}]),
            ),
            assistant(
                "msg_2",
                json!([{"type":"text","text":"All 3 tests pass now."}]),
            ),
            assistant("msg_2", json!([{"type":"text","text":"Anything else?"}])),
            json!({"type":"system","subtype":"stop_hook_summary","content":"hooks ran"}),
        ]
    }

    #[test]
    fn finds_the_last_message_text_across_lines() {
        let f = write(&realistic(), "");
        assert_eq!(
            last_assistant_text(f.path()).unwrap().as_deref(),
            Some("All 3 tests pass now.\n\nAnything else?")
        );
    }

    #[test]
    fn skips_tool_use_only_messages_and_sidechains() {
        let mut lines = realistic();
        lines.push(assistant(
            "msg_3",
            json!([{"type":"tool_use","id":"t","name":"Read","input":{}}]),
        ));
        let mut side = assistant("msg_4", json!([{"type":"text","text":"subagent says"}]));
        side["isSidechain"] = json!(true);
        lines.push(side);
        let f = write(&lines, "");
        assert_eq!(
            last_assistant_text(f.path()).unwrap().as_deref(),
            Some("All 3 tests pass now.\n\nAnything else?")
        );
    }

    #[test]
    fn multi_part_content_in_one_line_and_string_content() {
        let lines = vec![
            user_prompt("hi"),
            assistant(
                "m",
                json!([{"type":"thinking","thinking":"hmm"},
                       {"type":"text","text":"part one"},
                       {"type":"tool_use","id":"t","name":"X","input":{}},
                       {"type":"text","text":"part two"}]),
            ),
        ];
        let f = write(&lines, "");
        assert_eq!(
            last_assistant_text(f.path()).unwrap().as_deref(),
            Some("part one\n\npart two")
        );
        let f = write(
            &[json!({"type":"assistant","message":{"role":"assistant","content":"plain"}})],
            "",
        );
        assert_eq!(
            last_assistant_text(f.path()).unwrap().as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn no_text_gives_none_and_partial_last_line_is_ignored() {
        let f = write(&[user_prompt("hi"), tool_result("x")], "");
        assert_eq!(last_assistant_text(f.path()).unwrap(), None);
        let empty = write(&[], "");
        assert_eq!(last_assistant_text(empty.path()).unwrap(), None);
        // Claude is mid-write: the last line is cut off.
        let f = write(
            &realistic(),
            r#"{"type":"assistant","message":{"id":"msg_9","con"#,
        );
        assert_eq!(
            last_assistant_text(f.path()).unwrap().as_deref(),
            Some("All 3 tests pass now.\n\nAnything else?")
        );
    }

    #[test]
    fn reads_from_the_end_of_a_large_file_with_huge_lines() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        // 20 MB of history that must not be parsed, then a line larger than MAX_LINE_BYTES.
        let filler = tool_result(&"x".repeat(100_000)).to_string();
        for _ in 0..200 {
            writeln!(f, "{filler}").unwrap();
        }
        writeln!(
            f,
            "{}",
            assistant("old", json!([{"type":"text","text":"old answer"}]))
        )
        .unwrap();
        writeln!(f, "{}", tool_result(&"y".repeat(MAX_LINE_BYTES + 10))).unwrap();
        writeln!(
            f,
            "{}",
            assistant("new", json!([{"type":"text","text":"new answer"}]))
        )
        .unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            last_assistant_text(f.path()).unwrap().as_deref(),
            Some("new answer")
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));

        // The huge line sits between the end and the only answer: it is skipped, and the
        // answer before it is still found.
        let mut g = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            g,
            "{}",
            assistant("a", json!([{"type":"text","text":"before huge"}]))
        )
        .unwrap();
        writeln!(g, "{}", tool_result(&"z".repeat(MAX_LINE_BYTES + 10))).unwrap();
        assert_eq!(
            last_assistant_text(g.path()).unwrap().as_deref(),
            Some("before huge")
        );
    }
}
