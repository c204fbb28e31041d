//! The local filesystem backend: objects as files, locks as `flock(2)`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

use super::{ObjectMeta, Storage, TooShort, check_key};
use crate::os::{sync_dir, user_name};
use crate::repo::lock::{LockGuard, LockMode, LockService};

/// A repository on a local (or mounted) filesystem.
///
/// Crash safety: every object is written to a temporary file in its final directory,
/// fsynced, then renamed (or hard-linked, for `put_new`) into place, and the directory is
/// fsynced, the same sequence as PostgreSQL's `durable_rename`. A reader therefore sees
/// either no object or the whole object, never a prefix.
pub struct LocalStorage {
    root: PathBuf,
}

/// Temporary files start with this so listings skip them and cleanup can find them.
const TEMP_PREFIX: &str = ".tmp.";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> LocalStorage {
        LocalStorage { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    /// The error for a write that failed in `path`: permission problems name the fix.
    fn write_error(&self, e: std::io::Error, what: &str, path: &Path) -> anyhow::Error {
        if e.kind() != ErrorKind::PermissionDenied {
            return anyhow::Error::new(e).context(format!("cannot {what} {}", path.display()));
        }
        let user = user_name(unsafe { libc::geteuid() });
        anyhow::anyhow!(
            "cannot write to the repository {}: {user} may not write in {}; the repository directory must belong \
             to the user pgkeep runs as: `install -d -o {user} -m 700 {}` (or chown -R it)",
            self.root.display(),
            path.parent().unwrap_or(path).display(),
            self.root.display()
        )
    }

    /// Writes `data` to a fresh temporary file beside `target` and fsyncs it.
    fn write_temp(&self, target: &Path, data: &[u8]) -> Result<PathBuf> {
        let dir = target.parent().expect("keys have a parent");
        create_dir_durably(dir).map_err(|e| self.write_error(e, "create directory", dir))?;
        let name = format!(
            "{TEMP_PREFIX}{}.{}.{}",
            target.file_name().unwrap().to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let temp = dir.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| self.write_error(e, "write", target))?;
        let written = file.write_all(data).and_then(|_| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(self.write_error(e, "write", target));
        }
        Ok(temp)
    }
}

/// Creates a directory and any missing parents, fsyncing each parent after adding an
/// entry to it, so a new directory survives a crash (PostgreSQL's `fsync_parent_path`).
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let Some(parent) = dir.parent() else {
        return Err(ErrorKind::NotFound.into());
    };
    create_dir_durably(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => File::open(parent).and_then(|d| d.sync_all()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl Storage for LocalStorage {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let target = self.path(key)?;
        let temp = self.write_temp(&target, data)?;
        fs::rename(&temp, &target)
            .with_context(|| format!("cannot rename into {}", target.display()))?;
        sync_dir(target.parent().unwrap())
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        let target = self.path(key)?;
        if target.exists() {
            // Another writer may not have made its entry durable yet.
            sync_dir(target.parent().unwrap())?;
            return Ok(false);
        }
        let temp = self.write_temp(&target, data)?;
        // link(2) fails if the target exists, so two writers racing can never overwrite
        // each other: exactly one wins, the other is told the object exists.
        let linked = fs::hard_link(&temp, &target);
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => {
                sync_dir(target.parent().unwrap())?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                sync_dir(target.parent().unwrap())?;
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("cannot link into {}", target.display())),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let mut file =
            File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; len];
        file.read_exact(&mut buf).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => anyhow::Error::new(TooShort {
                key: key.to_string(),
            }),
            _ => anyhow::Error::new(e).context(format!("cannot read {}", path.display())),
        })?;
        Ok(buf)
    }

    fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        let base = self.path(prefix)?;
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                    continue;
                }
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else {
                    use std::os::unix::fs::MetadataExt;
                    let key = path.strip_prefix(&self.root).unwrap().to_string_lossy();
                    // Skipped before its metadata is read: the cost of a long folder.
                    if *key <= *after {
                        continue;
                    }
                    let meta = entry.metadata()?;
                    out.push(ObjectMeta {
                        key: key.into_owned(),
                        size: meta.len(),
                        modified: meta.mtime(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.path(key)?.exists())
    }

    /// Durable before it returns: removals happen in an order (a manifest before the
    /// data it refers to, an index before its pack) that a crash must not undo.
    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn remove_interrupted_writes(
        &self,
        prefix: &str,
        min_age: std::time::Duration,
    ) -> Result<usize> {
        let base = self.path(prefix)?;
        let mut removed = 0;
        let mut stack = vec![base];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                    && meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age >= min_age)
                    && fs::remove_file(&path).is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Locks of a repository on a local filesystem: `flock(2)` on files under its root,
/// released by the system when the process dies.
pub struct LocalLocks {
    storage: LocalStorage,
}

impl LocalLocks {
    pub fn new(root: impl Into<PathBuf>) -> LocalLocks {
        LocalLocks {
            storage: LocalStorage::new(root),
        }
    }
}

impl LockService for LocalLocks {
    fn lock(&self, key: &str, mode: LockMode, wait: bool) -> Result<Option<LockGuard>> {
        use std::os::fd::AsRawFd;
        let path = self.storage.path(key)?;
        let dir = path.parent().unwrap();
        create_dir_durably(dir)
            .map_err(|e| self.storage.write_error(e, "create directory", dir))?;
        // A shared lock needs no write access, so a reader of a read-only repository
        // can still take one on a lock file that exists.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .or_else(|e| match mode {
                LockMode::Shared => File::open(&path).map_err(|_| e),
                LockMode::Exclusive => Err(e),
            })
            .map_err(|e| self.storage.write_error(e, "open lock file", &path))?;
        let mode = match mode {
            LockMode::Exclusive => libc::LOCK_EX,
            LockMode::Shared => libc::LOCK_SH,
        };
        let flags = if wait { mode } else { mode | libc::LOCK_NB };
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), flags) } == 0 {
                return Ok(Some(LockGuard::new(file)));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
                _ => return Err(err).with_context(|| format!("cannot lock {}", path.display())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        assert!(s.put_new("a/b", b"one").unwrap());
        assert!(!s.put_new("a/b", b"two").unwrap());
        assert_eq!(s.get("a/b").unwrap().unwrap(), b"one");
        assert_eq!(s.list("a").unwrap()[0].key, "a/b");
        assert_eq!(s.get_range("a/b", 1, 2).unwrap(), b"ne");
        assert!(s.get_range("a/b", 1, 5).is_err());
        assert!(s.get("a/none").unwrap().is_none());
    }

    #[test]
    fn keys_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        for key in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(s.put(key, b"x").is_err(), "{key}");
        }
    }
}
