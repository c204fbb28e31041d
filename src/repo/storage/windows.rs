//! Range reads of object storage served from aligned windows of the object, each fetched
//! once. A restore reads packs chunk by chunk; on object storage every request costs a
//! round trip and the service's own work per request, so fetching a pack a window at a
//! time (the chunks of one file lie next to each other in its packs) takes a fraction of
//! the requests. Sits below the encryption layer, so a window is ciphertext.
//!
//! Invariants:
//! - Only objects whose size a listing gave (packs, listed when the index is loaded)
//!   are read in windows, and a write or delete of a key forgets it, so a window never
//!   holds bytes an object no longer has (packs are never rewritten in place anyway).
//! - A range is served from the (at most [`SPAN`]) windows it touches; a longer one, or
//!   one a window cannot be fetched for, is read directly: every error a caller sees (a
//!   short object is damage) is the direct read's own.
//! - At most [`KEPT`] windows are held; the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Result;

use super::{ObjectMeta, Storage};

/// The window size: large enough that one request brings many chunks, small enough
/// that a restore's parallel readers do not wait long for the first bytes.
const WINDOW: u64 = 4 << 20;

/// Windows held at once (128 MiB).
const KEPT: usize = 32;

/// The most windows one range is served from: a chunk (at most 1 MiB, and a little
/// more as the encrypted blocks covering it) crosses at most one window's end.
const SPAN: u64 = 2;

type Window = Arc<OnceLock<Option<Arc<Vec<u8>>>>>;

#[derive(Default)]
struct Held {
    /// Object sizes from listings.
    sizes: HashMap<String, u64>,
    windows: HashMap<(String, u64), Window>,
    oldest_first: VecDeque<(String, u64)>,
}

pub struct RangeWindows {
    inner: Arc<dyn Storage>,
    held: Mutex<Held>,
}

impl RangeWindows {
    pub fn new(inner: Arc<dyn Storage>) -> RangeWindows {
        RangeWindows {
            inner,
            held: Mutex::new(Held::default()),
        }
    }

    /// The window of `key` starting at `start`, shared by every reader that needs it,
    /// if the object's size is known.
    fn window(&self, key: &str, start: u64) -> Option<(Window, u64)> {
        let mut held = self.held.lock().unwrap();
        let size = *held.sizes.get(key)?;
        let id = (key.to_string(), start);
        if let Some(w) = held.windows.get(&id) {
            return Some((w.clone(), size));
        }
        let w = Window::default();
        held.windows.insert(id.clone(), w.clone());
        held.oldest_first.push_back(id);
        while held.oldest_first.len() > KEPT
            && let Some(old) = held.oldest_first.pop_front()
        {
            held.windows.remove(&old);
        }
        Some((w, size))
    }

    /// Bytes `offset..end` of `key` from the windows they lie in, each fetched once;
    /// `None` if the object is not listed, the range runs past its listed size, or a
    /// window cannot be fetched.
    fn held_range(&self, key: &str, offset: u64, end: u64) -> Option<Vec<u8>> {
        let mut range = Vec::with_capacity((end - offset) as usize);
        let mut start = offset / WINDOW * WINDOW;
        while start < end {
            let (window, size) = self.window(key, start)?;
            if end > size {
                return None;
            }
            let bytes = window.get_or_init(|| {
                let len = WINDOW.min(size - start) as usize;
                self.inner.get_range(key, start, len).ok().map(Arc::new)
            });
            let (from, to) = (offset.max(start) - start, end.min(start + WINDOW) - start);
            range.extend_from_slice(bytes.as_ref()?.get(from as usize..to as usize)?);
            start += WINDOW;
        }
        Some(range)
    }

    fn forget(&self, key: &str) {
        let mut held = self.held.lock().unwrap();
        held.sizes.remove(key);
        held.windows.retain(|(k, _), _| k != key);
        held.oldest_first.retain(|(k, _)| k != key);
    }
}

impl Storage for RangeWindows {
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let end = offset + len as u64;
        if end - offset / WINDOW * WINDOW <= SPAN * WINDOW
            && let Some(range) = self.held_range(key, offset, end)
        {
            return Ok(range);
        }
        self.inner.get_range(key, offset, len)
    }

    fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        let listed = self.inner.list_after(prefix, after)?;
        let mut held = self.held.lock().unwrap();
        for meta in &listed {
            held.sizes.insert(meta.key.clone(), meta.size);
        }
        Ok(listed)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.forget(key);
        self.inner.put(key, data)
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.forget(key);
        self.inner.put_new(key, data)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.forget(key);
        self.inner.delete(key)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn get_immutable(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_immutable(key)
    }

    fn refresh_immutable(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.refresh_immutable(key)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn parallel_puts(&self) -> usize {
        self.inner.parallel_puts()
    }

    fn parallel_gets(&self) -> usize {
        self.inner.parallel_gets()
    }

    fn remove_interrupted_writes(&self, prefix: &str, min_age: Duration) -> Result<usize> {
        self.inner.remove_interrupted_writes(prefix, min_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::storage::{LocalStorage, TooShort};

    #[test]
    fn ranges_come_from_windows_and_errors_stay_the_objects_own() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let data: Vec<u8> = (0..(WINDOW as usize * 2 + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        local.put("p/a.pack", &data).unwrap();
        let windows = RangeWindows::new(local.clone());
        // Not listed: read directly.
        assert_eq!(windows.get_range("p/a.pack", 10, 5).unwrap(), &data[10..15]);
        windows.list("p").unwrap();
        for (offset, len) in [
            (0, 100),
            (WINDOW - 50, 100),
            (WINDOW * 2 + 900, 100),
            (5, 1),
        ] {
            let o = offset as usize;
            assert_eq!(
                windows.get_range("p/a.pack", offset, len).unwrap(),
                &data[o..o + len]
            );
        }
        let past_end = windows
            .get_range("p/a.pack", WINDOW * 2 + 900, 200)
            .unwrap_err();
        assert!(past_end.downcast_ref::<TooShort>().is_some(), "{past_end}");
        // A range across a window's end comes from the two windows held, not from the
        // object (removed behind the windows' back here).
        std::fs::remove_file(dir.path().join("p/a.pack")).unwrap();
        let across = windows.get_range("p/a.pack", WINDOW - 10, 30).unwrap();
        assert_eq!(across, &data[WINDOW as usize - 10..WINDOW as usize + 20]);
        local.put("p/a.pack", &data).unwrap();
        // A rewritten object is read anew.
        local.put("p/a.pack", &data[..2000]).unwrap();
        windows.put("p/a.pack", &data[..2000]).unwrap();
        let gone = windows.get_range("p/a.pack", WINDOW, 10).unwrap_err();
        assert!(gone.downcast_ref::<TooShort>().is_some(), "{gone}");
    }
}
