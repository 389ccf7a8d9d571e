//! Where Switchboard's binaries are: the cargo target dir of the running test.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub const COORDINATOR: &str = "switchboard-coordinator";
pub const SIDECAR: &str = "switchboard-sidecar";
pub const SBCTL: &str = "sbctl";
pub const LOADTEST: &str = "switchboard-loadtest";

/// Overrides the directory the binaries are taken from (for example `target/release`).
pub const BIN_DIR_ENV: &str = "SWITCHBOARD_TEST_BIN_DIR";

/// The path of our binary `name`. Looked for in `$SWITCHBOARD_TEST_BIN_DIR` if set; else in
/// `$CARGO_TARGET_DIR/<profile>/` if `CARGO_TARGET_DIR` is set (absolute); else next to the running test:
/// the test is `<target>/<profile>/deps/<test>-<hash>`, the binaries are in `<target>/<profile>/`.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "binary {name} not found at {}: build the binaries first with \
             `cargo build --workspace --bins` (make test does this)",
            path.display()
        );
    }
    Ok(path)
}

/// The directory [`bin_path`] looks in.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("finding the path of the running test binary")?;
    let profile_dir = profile_dir_of(&exe).with_context(|| {
        format!(
            "the test binary {} is not in <target>/<profile>/deps/; set {BIN_DIR_ENV}",
            exe.display()
        )
    })?;
    // A relative CARGO_TARGET_DIR is relative to where cargo ran, which the test cannot know; the
    // test binary's own location says the same thing then.
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && target.is_absolute()
        && let Some(profile) = profile_dir.file_name()
    {
        return Ok(target.join(profile));
    }
    Ok(profile_dir)
}

fn profile_dir_of(exe: &Path) -> Option<PathBuf> {
    let parent = exe.parent()?;
    if parent.file_name()? == "deps" {
        Some(parent.parent()?.to_path_buf())
    } else {
        // An example or a binary run directly from <target>/<profile>/.
        Some(parent.to_path_buf())
    }
}
