//! Storage backends: where repository objects live. Everything above this module sees
//! only keys (`a/b/c`) and whole objects, so object storage can slot in beside the local
//! filesystem without touching the engine. Locks are a service of their own
//! ([`crate::repo::lock`]).

mod aws_files;
mod cache;
mod cloud;
mod encrypted;
mod local;
mod windows;

pub use cache::ObjectCache;
pub use cloud::ObjectStorage;
pub use encrypted::EncryptedStorage;
pub use local::{LocalLocks, LocalStorage};
pub use windows::RangeWindows;

use anyhow::{Result, bail};

/// A place that stores objects durably.
pub trait Storage: Send + Sync {
    /// Stores `data` under `key`, replacing any earlier object; durable when it returns.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Stores `data` under `key` only if no object is there; `Ok(false)` (and nothing
    /// written) if one is. Durable when it returns `Ok(true)`.
    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool>;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// `get` of an object that never changes once written (a pack index): the backend
    /// may answer from a local copy.
    fn get_immutable(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get(key)
    }
    /// `get_immutable` that replaces any local copy: for when that copy was damaged.
    fn refresh_immutable(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get(key)
    }
    /// `len` bytes from `offset`; [`TooShort`] if the object is shorter.
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// All objects under `prefix` (a folder), recursively, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.list_after(prefix, "")
    }
    /// The objects under `prefix` whose keys sort after `after`: the new end of a
    /// folder too long to list whole each time (the archived WAL).
    fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>>;
    fn exists(&self, key: &str) -> Result<bool>;
    fn delete(&self, key: &str) -> Result<()>;
    /// Where this storage is, for messages.
    fn describe(&self) -> String;
    /// How many large objects (packs) may be stored at once: one on a local disk, a few
    /// on object storage, where each PUT waits on the network more than on the machine.
    fn parallel_puts(&self) -> usize {
        1
    }
    /// How many small objects (indexes) are best fetched at once.
    fn parallel_gets(&self) -> usize {
        1
    }
    /// Removes what writes that never finished left under `prefix` (temporary files on
    /// a local disk, incomplete uploads on object storage), if older than `min_age`;
    /// returns how many. Such leftovers are never listed or read as objects.
    fn remove_interrupted_writes(
        &self,
        prefix: &str,
        min_age: std::time::Duration,
    ) -> Result<usize>;
}

/// The error of [`Storage::get_range`] for an object shorter than the range asked for:
/// damage (a truncated object), not a failure to read.
#[derive(Debug, thiserror::Error)]
#[error("{key} is shorter than the repository index says")]
pub struct TooShort {
    pub key: String,
}

/// A listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// When the object was stored, as seconds since the epoch.
    pub modified: i64,
}

/// Rejects keys that could escape the repository (`..`, absolute paths, empty parts).
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        bail!("refusing repository key '{key}': it is not a plain relative path");
    }
    Ok(())
}
