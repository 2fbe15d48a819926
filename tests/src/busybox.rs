//! A container root filesystem without a registry: a static busybox with
//! its applets, `/www/index.html` for `busybox httpd -h /www`, and
//! `/www/cgi-bin/ip`, which answers with the client's address as the
//! container sees it (`REMOTE_ADDR`).

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::topology::cmd;

/// Builds the rootfs at `root`, its web page saying `greeting`.
pub fn rootfs(root: &Path, greeting: &str) -> Result<()> {
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    // Copied by `cp`, not std::fs::copy: a write descriptor held by this
    // multi-threaded process leaks into children other test threads fork
    // meanwhile, and exec of the copy then fails with "Text file busy".
    cmd("cp", &["/bin/busybox", &root.join("bin/busybox").display().to_string()])
        .context("copying /bin/busybox (package busybox-static; run `cargo xtask setup`)")?;
    cmd("chroot", &[&root.display().to_string(), "/bin/busybox", "--install", "-s"])?;
    std::fs::write(root.join("www/index.html"), format!("{greeting}\n"))?;
    std::fs::create_dir_all(root.join("www/cgi-bin"))?;
    let cgi = root.join("www/cgi-bin/ip");
    std::fs::write(&cgi, "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n")?;
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

/// The address `/cgi-bin/ip` answered with, as IPv4 text: busybox httpd
/// listens on a dual-stack socket, so it sees `[::ffff:198.18.0.2]`.
pub fn remote_addr(answer: &str) -> String {
    let addr = answer.trim().trim_start_matches('[').trim_end_matches(']');
    addr.strip_prefix("::ffff:").unwrap_or(addr).to_string()
}
