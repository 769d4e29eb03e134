//! The workspace's binaries, built once per test process (`cargo build`, debug profile) so a
//! test always runs the code of this checkout.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::workspace_root;

/// Builds `bin` of `package` and returns its path under the target directory.
fn build(package: &str, bin: &str) -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .status()
        .unwrap_or_else(|e| panic!("running cargo build -p {package}: {e}"));
    assert!(status.success(), "cargo build -p {package} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug").join(bin)
}

/// The `relay-bridge` binary.
pub fn relay_bridge() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build("relay-bridge", "relay-bridge"))
        .clone()
}
