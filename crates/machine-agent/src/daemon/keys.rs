//! Named keys from the chat (`/esc`, `/keys`): the allow-list `wire::keys::NAMES` mapped to
//! tmux key names here, by the agent itself. A name outside the list refuses the whole
//! command, so a frame can never make tmux press a key (or run a key binding) it was not
//! meant to: no free-form tmux key name is ever passed on.

use ccr_protocol::wire::keys::{MAX, NAMES};

/// The tmux key for an allowed name; `None` for anything else.
fn tmux_key(name: &str) -> Option<&'static str> {
    Some(match name {
        "Enter" => "Enter",
        "Escape" => "Escape",
        "Tab" => "Tab",
        "Up" => "Up",
        "Down" => "Down",
        "C-c" => "C-c",
        "0" => "0",
        "1" => "1",
        "2" => "2",
        "3" => "3",
        "4" => "4",
        "5" => "5",
        "6" => "6",
        "7" => "7",
        "8" => "8",
        "9" => "9",
        _ => return None,
    })
}

/// The tmux keys for `stored` (space-separated names, as the inbox holds them), or why they
/// are refused: none, too many, or a name not on the list.
pub(crate) fn tmux_keys(stored: &str) -> Result<Vec<&'static str>, String> {
    let names: Vec<&str> = stored.split_whitespace().collect();
    if names.is_empty() {
        return Err("nothing was pressed: the command named no keys".into());
    }
    if names.len() > MAX {
        return Err(format!("nothing was pressed: more than {MAX} keys"));
    }
    names
        .into_iter()
        .map(|n| {
            tmux_key(n).ok_or_else(|| {
                format!(
                    "nothing was pressed: {:?} is not one of the keys this agent presses ({})",
                    n.chars().take(32).collect::<String>(),
                    NAMES.join(" ")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_name_maps_and_nothing_else_does() {
        for name in NAMES {
            assert!(tmux_key(name).is_some(), "{name}");
        }
        assert_eq!(tmux_keys("Escape").unwrap(), ["Escape"]);
        assert_eq!(
            tmux_keys("Down Down Enter 3").unwrap(),
            ["Down", "Down", "Enter", "3"]
        );
        for bad in [
            "",
            "  ",
            "F1",
            "Enter M-x",
            "escape",
            "C-b",
            "send-keys",
            "10",
        ] {
            assert!(tmux_keys(bad).is_err(), "{bad:?}");
        }
        assert!(tmux_keys(&"Up ".repeat(MAX + 1)).is_err());
    }
}
