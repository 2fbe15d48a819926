//! A container root filesystem without a registry: a static busybox with
//! its applets, and `/www/index.html` for `busybox httpd -h /www`.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::topology::cmd;

/// Builds the rootfs at `root`, its web page saying `greeting`.
pub fn rootfs(root: &Path, greeting: &str) -> Result<()> {
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (package busybox-static; run `cargo xtask setup`)")?;
    cmd("chroot", &[&root.display().to_string(), "/bin/busybox", "--install", "-s"])?;
    std::fs::write(root.join("www/index.html"), format!("{greeting}\n"))?;
    Ok(())
}
