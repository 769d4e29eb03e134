//! What `/new` may start on this machine: the named project roots its owner configured, the
//! command to run in them, and the tmux server the new windows go to.
//!
//! Only names travel: the chat asks for `api`, the agent looks `api` up here. A directory
//! never comes from the chat or the Worker, so nothing outside these roots can be started.

use std::path::{Path, PathBuf};

use super::resolve::ConfigError;

/// The command `/new` runs when none is configured.
pub const DEFAULT_NEW_SESSION_COMMAND: &str = "claude";

/// One named project root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// Its name in the chat (`validate::project_name`).
    pub name: String,
    /// Its directory: absolute, existing when the daemon started.
    pub dir: PathBuf,
}

/// The validated `/new` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The project roots, in the order given.
    pub projects: Vec<Project>,
    /// The program and its arguments (the first prompt is appended as one more argument).
    pub command: Vec<String>,
    /// The tmux server's socket (`tmux -S`); `None`: tmux's default server.
    pub tmux_socket: Option<PathBuf>,
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            projects: Vec::new(),
            command: vec![DEFAULT_NEW_SESSION_COMMAND.to_owned()],
            tmux_socket: None,
        }
    }
}

impl Launch {
    /// Validates the settings as given: each project `NAME=/absolute/dir` (a valid name, each
    /// once; an absolute path to an existing directory), and the command split on whitespace
    /// (no shell; empty means the default).
    pub(crate) fn parse(
        projects: &[String],
        command: Option<&str>,
        tmux_socket: Option<&Path>,
    ) -> Result<Launch, ConfigError> {
        let mut parsed: Vec<Project> = Vec::new();
        for raw in projects.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let project = parse_project(raw)?;
            if parsed.iter().any(|p| p.name == project.name) {
                return Err(ConfigError(format!(
                    "CCR_PROJECTS names the project {:?} twice: give each project root its own \
                     name",
                    project.name
                )));
            }
            parsed.push(project);
        }
        if parsed.len() > ccr_protocol::MAX_PROJECTS {
            return Err(ConfigError(format!(
                "CCR_PROJECTS has {} projects; at most {} are allowed",
                parsed.len(),
                ccr_protocol::MAX_PROJECTS
            )));
        }
        let words: Vec<String> = command
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(Launch {
            projects: parsed,
            command: if words.is_empty() {
                vec![DEFAULT_NEW_SESSION_COMMAND.to_owned()]
            } else {
                words
            },
            tmux_socket: tmux_socket
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_owned),
        })
    }

    /// The project of that name, if the owner configured one.
    pub(crate) fn project(&self, name: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.name == name)
    }

    /// The names, for the Worker.
    pub(crate) fn names(&self) -> Vec<String> {
        self.projects.iter().map(|p| p.name.clone()).collect()
    }

    /// The projects as the settings file keeps them (`NAME=/dir`).
    pub(crate) fn saved_projects(&self) -> Vec<String> {
        self.projects
            .iter()
            .map(|p| format!("{}={}", p.name, p.dir.display()))
            .collect()
    }
}

fn parse_project(raw: &str) -> Result<Project, ConfigError> {
    let Some((name, dir)) = raw.split_once('=') else {
        return Err(ConfigError(format!(
            "project {raw:?} is not NAME=/absolute/path: pass --project api=/home/me/api (or \
             CCR_PROJECTS=\"api=/home/me/api,web=/home/me/web\")"
        )));
    };
    let name = name.trim();
    ccr_protocol::validate::project_name(name)
        .map_err(|e| ConfigError(format!("project {raw:?}: {e}")))?;
    let dir = PathBuf::from(dir.trim());
    if !dir.is_absolute() {
        return Err(ConfigError(format!(
            "project {name:?}: {} is not an absolute path",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        return Err(ConfigError(format!(
            "project {name:?}: {} is not an existing directory",
            dir.display()
        )));
    }
    Ok(Project {
        name: name.to_owned(),
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_are_named_absolute_existing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let ok = Launch::parse(
            &[format!("api={d}"), format!(" web.v2 = {d} "), String::new()],
            Some("  claude   --model x "),
            None,
        )
        .unwrap();
        assert_eq!(ok.names(), vec!["api".to_owned(), "web.v2".to_owned()]);
        assert_eq!(ok.project("api").unwrap().dir, dir.path());
        assert!(ok.project("nosuch").is_none());
        assert_eq!(ok.command, vec!["claude", "--model", "x"]);
        assert_eq!(ok.saved_projects()[0], format!("api={d}"));
        assert_eq!(Launch::parse(&[], None, None).unwrap(), Launch::default());

        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        for (bad, needle) in [
            ("api".to_owned(), "NAME=/absolute/path"),
            (format!("a b={d}"), "may contain only"),
            (format!("..={d}"), "cannot be"),
            ("api=relative/dir".to_owned(), "not an absolute path"),
            (
                "api=/nonexistent/ccr-dir".to_owned(),
                "not an existing directory",
            ),
            (
                format!("api={}", file.display()),
                "not an existing directory",
            ),
        ] {
            let e = Launch::parse(std::slice::from_ref(&bad), None, None).unwrap_err();
            assert!(e.0.contains(needle), "{bad}: {e}");
        }
        let e = Launch::parse(&[format!("api={d}"), format!("api={d}")], None, None).unwrap_err();
        assert!(e.0.contains("twice"), "{e}");
    }
}
