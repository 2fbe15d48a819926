//! netpath as it was at an earlier commit of this repository, built from
//! the history (`git archive`) into `target/upgrade-from/<commit>`, for
//! tests that replace a running agent of that version with this build's.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The repository this test crate is part of.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// The binary directory of netpath built at `commit` (a full hash), built
/// on first use (a few minutes: its own target directory, so that this
/// build's binaries are never replaced) and reused after.
pub fn build_at(commit: &str) -> Result<PathBuf> {
    // Tests of one binary run as threads: one builds, the others wait and
    // find its binaries.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let root = repo_root();
    let out = root.join("target").join("upgrade-from").join(commit);
    let bin = out.join("target").join("debug");
    if bin.join("netpathd").exists() && bin.join("netpathctl").exists() {
        return Ok(bin);
    }
    let src = out.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    let mut archive = Command::new("git")
        .args(["-C", &root.display().to_string(), "archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .args(["-x", "-C", &src.display().to_string()])
        .stdin(archive.stdout.take().context("git archive's output")?)
        .status()
        .context("running tar")?;
    let archived = archive.wait()?;
    if !archived.success() || !tar.success() {
        bail!("extracting commit {commit} from {} failed (is the clone shallow?)", root.display());
    }
    let built = Command::new("cargo")
        .args(["build", "--bin", "netpathd", "--bin", "netpathctl"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", out.join("target"))
        .output()
        .context("running cargo build")?;
    if !built.status.success() {
        let err = String::from_utf8_lossy(&built.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        bail!("building netpath at {commit} failed:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok(bin)
}
