//! The workspace's binaries, built once per test process (`cargo build`, debug profile) so a
//! test always runs the code of this checkout. With `CCR_E2E_RELEASE=1` (the benchmark) they
//! are built and run from the release profile instead.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::workspace_root;

/// Builds `bin` of `package` and returns its path under the target directory.
pub(crate) fn build(package: &str, bin: &str) -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .args(release().then_some("--release"))
        .status()
        .unwrap_or_else(|e| panic!("running cargo build -p {package}: {e}"));
    assert!(status.success(), "cargo build -p {package} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join(profile_dir()).join(bin)
}

/// Whether `CCR_E2E_RELEASE=1` asks for release builds of the binaries.
pub fn release() -> bool {
    std::env::var("CCR_E2E_RELEASE").is_ok_and(|v| v == "1")
}

/// The target subdirectory the binaries are built into: `debug` or `release`.
pub fn profile_dir() -> &'static str {
    if release() {
        "release"
    } else {
        "debug"
    }
}

/// The `relay-bridge` binary.
pub fn relay_bridge() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build("relay-bridge", "relay-bridge"))
        .clone()
}
