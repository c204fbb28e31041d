//! A local copy of the objects that never change once written (pack indexes, whose
//! pack is named by its content's hash), so that a command on object storage lists the
//! packs and fetches only the indexes it has not seen, instead of every index each time.
//!
//! Invariants:
//! - An entry is the object's bytes as stored (ciphertext in an encrypted repository)
//!   followed by their BLAKE3 hash, written under a temporary name and renamed. An entry
//!   whose hash does not match is ignored and replaced, so a damaged cache costs a
//!   fetch, never a wrong read.
//! - The cache answers only reads its caller marked immutable, and forgets an object
//!   pgkeep deletes. A failure to read or write it is never a command's failure.

use std::fs;
use std::path::{Path, PathBuf};

/// The cache of one repository: a directory of its own, named by the repository's URL.
pub struct ObjectCache {
    dir: PathBuf,
}

impl ObjectCache {
    /// The cache of the repository at `url` under `root` (`cache_path`, else
    /// `$XDG_CACHE_HOME/pgkeep`, else `.cache/pgkeep` in the home directory of the user
    /// pgkeep runs as); `None` when there is nowhere.
    pub fn for_repository(root: Option<&Path>, url: &str) -> Option<ObjectCache> {
        let root = match root {
            Some(r) => r.to_path_buf(),
            None => default_root()?,
        };
        let id = blake3::hash(url.as_bytes()).to_hex();
        Some(ObjectCache {
            dir: root.join(&id.as_str()[..16]),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The cached bytes of `key`, if an intact entry is there.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut entry = fs::read(self.path(key)).ok()?;
        let split = entry.len().checked_sub(blake3::OUT_LEN)?;
        let (data, hash) = entry.split_at(split);
        if blake3::hash(data).as_bytes() != hash {
            tracing::debug!("cached {key} is damaged; fetching it again");
            return None;
        }
        entry.truncate(split);
        Some(entry)
    }

    /// Keeps a copy of `data`, the bytes of `key`.
    pub fn put(&self, key: &str, data: &[u8]) {
        let path = self.path(key);
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(path.parent().unwrap_or(&self.dir))?;
            let mut entry = Vec::with_capacity(data.len() + blake3::OUT_LEN);
            entry.extend_from_slice(data);
            entry.extend_from_slice(blake3::hash(data).as_bytes());
            fs::write(&temp, entry)?;
            fs::rename(&temp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&temp);
            tracing::debug!("cannot cache {key} in {}: {e}", self.dir.display());
        }
    }

    /// Forgets `key` (deleted from the repository).
    pub fn forget(&self, key: &str) {
        let _ = fs::remove_file(self.path(key));
    }
}

fn default_root() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => crate::os::home_dir()?.join(".cache"),
    };
    Some(base.join("pgkeep"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_a_miss() {
        let root = tempfile::tempdir().unwrap();
        let cache = ObjectCache::for_repository(Some(root.path()), "s3://b/p").unwrap();
        let other = ObjectCache::for_repository(Some(root.path()), "s3://b/q").unwrap();
        assert_eq!(cache.get("c/packs/ab/x.idx"), None);
        cache.put("c/packs/ab/x.idx", b"index bytes");
        assert_eq!(
            cache.get("c/packs/ab/x.idx").as_deref(),
            Some(&b"index bytes"[..])
        );
        assert_eq!(
            other.get("c/packs/ab/x.idx"),
            None,
            "one cache per repository"
        );

        let path = cache.path("c/packs/ab/x.idx");
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(
            cache.get("c/packs/ab/x.idx"),
            None,
            "a damaged entry is a miss"
        );
        fs::write(&path, b"short").unwrap();
        assert_eq!(cache.get("c/packs/ab/x.idx"), None);

        cache.put("c/packs/ab/x.idx", b"index bytes");
        cache.forget("c/packs/ab/x.idx");
        assert_eq!(cache.get("c/packs/ab/x.idx"), None);
    }
}
