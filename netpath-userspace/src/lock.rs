//! Lock files that say who holds them: one agent per instance (and per
//! state directory).
//!
//! A lock is an exclusive `flock` on a file that holds the holder's PID. The
//! holder removes the file when it lets go, so nothing is left behind; a
//! contender that locked a file which was removed meanwhile (the holder
//! unlinks before it unlocks) sees that the path names another file now and
//! tries again, so two agents never both hold "the" lock.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

/// How often a lock file that vanished under us is tried again.
const ATTEMPTS: usize = 10;

/// An exclusive lock on a file, released and removed on drop.
#[derive(Debug)]
pub struct LockFile {
    file: Option<Flock<File>>,
    path: PathBuf,
}

impl LockFile {
    /// Takes `path` without waiting (creating its directory if needed);
    /// `what` names the locked thing in the error when another process
    /// holds it, e.g. "instance lab".
    pub fn acquire(path: &Path, what: &str) -> Result<LockFile> {
        let dir = path.parent().with_context(|| format!("lock file {} has no directory", path.display()))?;
        for _ in 0..ATTEMPTS {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // Not truncated: a holder's PID stays readable for the error.
            let file =
                match OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path) {
                    Ok(f) => f,
                    // The directory went away between the two calls (another
                    // run removed it as empty): create it again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("opening lock file {}", path.display())),
                };
            let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(f) => f,
                Err((mut f, Errno::EWOULDBLOCK)) => {
                    let holder = holder_pid(&mut f).map(|p| format!("pid {p}")).unwrap_or_else(|| "pid unknown".into());
                    bail!("{what} is in use by another netpathd ({holder}, holding {})", path.display());
                }
                Err((_, e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
            };
            // The previous holder may have removed the file after we opened
            // it: then this lock guards nothing.
            if !same_file(&file, path) {
                continue;
            }
            file.set_len(0).and_then(|()| file.rewind()).with_context(|| format!("truncating {}", path.display()))?;
            writeln!(file, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
            return Ok(LockFile { file: Some(file), path: path.to_path_buf() });
        }
        bail!("could not lock {}: it kept being removed while locking it", path.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Remove, then unlock (on close): a contender that opened the old
        // file sees it is gone and retries on a fresh one.
        if let Some(file) = self.file.take() {
            if same_file(&file, &self.path) {
                let _ = std::fs::remove_file(&self.path);
            }
            drop(file);
        }
    }
}

/// Does `path` still name the open `file`?
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The PID a holder wrote into its lock file.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The instance's, its pin directory's and its state directory's locks,
/// as the agent takes them: held by a running agent, they stop what
/// needs it stopped (`uninstall`, `--recover`).
pub fn lock_instance(cfg: &crate::config::ResolvedConfig) -> Result<Vec<LockFile>> {
    let mut locks = vec![
        LockFile::acquire(&crate::config::instance_lock(&cfg.instance), &format!("instance {}", cfg.instance))?,
        LockFile::acquire(
            &crate::config::pin_dir_lock(&cfg.pin_dir),
            &format!("pin directory {}", cfg.pin_dir.display()),
        )?,
    ];
    if cfg.state_dir.exists() {
        locks.push(LockFile::acquire(
            &cfg.state_dir.join("lock"),
            &format!("state directory {}", cfg.state_dir.display()),
        )?);
    }
    Ok(locks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("lab.lock");
        let first = LockFile::acquire(&path, "instance lab").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), std::process::id().to_string());
        // flock conflicts between open files, also within one process.
        let err = LockFile::acquire(&path, "instance lab").unwrap_err().to_string();
        assert!(err.contains("instance lab"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        assert!(!path.exists(), "the lock file goes with its holder");
        let again = LockFile::acquire(&path, "instance lab").unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn a_lock_on_a_removed_file_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        // A stale file nobody holds is simply taken over.
        std::fs::write(&path, "1\n").unwrap();
        let lock = LockFile::acquire(&path, "instance x").unwrap();
        // Someone removes the file behind the holder's back: the holder
        // does not remove the next holder's file when it lets go.
        std::fs::remove_file(&path).unwrap();
        let other = LockFile::acquire(&path, "instance x").unwrap();
        drop(lock);
        assert!(path.exists());
        drop(other);
        assert!(!path.exists());
    }
}
