//! A real small file system to fill up, for tests of what happens when the disk is full.

use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A tmpfs mounted on a directory, unmounted on drop. Mounting needs root
/// ([`crate::Need::tmpfs`]).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` (as `mount -o size=` takes it) on `dir`; `None` if it cannot be
    /// mounted.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status();
        status
            .is_ok_and(|s| s.success())
            .then(|| Tmpfs(dir.to_owned()))
    }

    pub(crate) fn can_mount() -> bool {
        let Ok(dir) = tempfile::tempdir() else {
            return false;
        };
        Tmpfs::mount(dir.path(), "64k").is_some()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a test failed with a file on it open): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes `path` until the file system has no space left; returns the bytes written.
pub fn fill_file_system(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [64 * 1024, 4096, 1] {
        let block = vec![0xA5u8; chunk];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    written
}
