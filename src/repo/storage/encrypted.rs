//! The storage of an encrypted repository: every object sealed on its way in and opened
//! (and authenticated) on its way out, in the layout of [`crate::repo::encryption`].
//! Everything above sees plaintext objects and plaintext sizes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use super::{ObjectMeta, Storage, TooShort};
use crate::repo::encryption::{self, BLOCK, HEADER_LEN, Keys, TAG_LEN};

pub struct EncryptedStorage {
    inner: Arc<dyn Storage>,
    keys: Arc<Keys>,
    /// Headers of objects read by range (packs), so each range costs one request.
    headers: Mutex<HashMap<String, [u8; HEADER_LEN]>>,
}

impl EncryptedStorage {
    pub fn new(inner: Arc<dyn Storage>, keys: Arc<Keys>) -> EncryptedStorage {
        EncryptedStorage {
            inner,
            keys,
            headers: Mutex::default(),
        }
    }

    fn forget(&self, key: &str) {
        self.headers.lock().unwrap().remove(key);
    }

    fn header(&self, key: &str) -> Result<([u8; HEADER_LEN], u64)> {
        if let Some(h) = self.headers.lock().unwrap().get(key) {
            return encryption::parse_header(key, h);
        }
        let stored = self.inner.get_range(key, 0, HEADER_LEN)?;
        let parsed = encryption::parse_header(key, &stored)?;
        self.headers
            .lock()
            .unwrap()
            .insert(key.to_string(), parsed.0);
        Ok(parsed)
    }
}

impl Storage for EncryptedStorage {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.forget(key);
        self.inner.put(key, &self.keys.seal(key, data)?)
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.forget(key);
        self.inner.put_new(key, &self.keys.seal(key, data)?)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.inner.get(key)? {
            Some(stored) => Ok(Some(self.keys.open(key, &stored)?)),
            None => Ok(None),
        }
    }

    fn get_immutable(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.inner.get_immutable(key)? {
            Some(stored) => Ok(Some(self.keys.open(key, &stored)?)),
            None => Ok(None),
        }
    }

    fn refresh_immutable(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.inner.refresh_immutable(key)? {
            Some(stored) => Ok(Some(self.keys.open(key, &stored)?)),
            None => Ok(None),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let (header, plain_len) = self.header(key)?;
        if offset + len as u64 > plain_len {
            return Err(TooShort {
                key: key.to_string(),
            }
            .into());
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let block = (BLOCK + TAG_LEN) as u64;
        let (first, last) = (
            offset / BLOCK as u64,
            (offset + len as u64 - 1) / BLOCK as u64,
        );
        let start = HEADER_LEN as u64 + first * block;
        let end = (HEADER_LEN as u64 + (last + 1) * block).min(encryption::stored_len(plain_len));
        let stored = self.inner.get_range(key, start, (end - start) as usize)?;
        let opener = self.keys.opener(key, &header);
        let mut plain = Vec::with_capacity(((last - first + 1) * BLOCK as u64) as usize);
        for (i, sealed) in stored.chunks(block as usize).enumerate() {
            plain.extend_from_slice(&opener.block(first + i as u64, sealed)?);
        }
        let skip = (offset - first * BLOCK as u64) as usize;
        Ok(plain[skip..skip + len].to_vec())
    }

    fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        let mut listed = self.inner.list_after(prefix, after)?;
        for meta in &mut listed {
            // A size no object has is damage that reading will name; leave it as stored.
            meta.size = encryption::plain_len(meta.size).unwrap_or(meta.size);
        }
        Ok(listed)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.forget(key);
        self.inner.delete(key)
    }

    fn parallel_puts(&self) -> usize {
        self.inner.parallel_puts()
    }

    fn parallel_gets(&self) -> usize {
        self.inner.parallel_gets()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn remove_interrupted_writes(&self, prefix: &str, min_age: Duration) -> Result<usize> {
        self.inner.remove_interrupted_writes(prefix, min_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::storage::LocalStorage;

    #[test]
    fn ranges_read_through_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let s = EncryptedStorage::new(raw.clone(), Arc::new(Keys::generate().unwrap()));
        let data: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 253) as u8).collect();
        s.put("p/x", &data).unwrap();
        for (offset, len) in [
            (0, 10),
            (BLOCK - 5, 10),
            (BLOCK, BLOCK),
            (3 * BLOCK + 90, 10),
            (7, 0),
        ] {
            let got = s.get_range("p/x", offset as u64, len).unwrap();
            assert_eq!(got, &data[offset..offset + len], "{offset}+{len}");
        }
        assert!(
            s.get_range("p/x", (3 * BLOCK + 95) as u64, 10)
                .unwrap_err()
                .downcast_ref::<TooShort>()
                .is_some()
        );
        assert_eq!(s.list("p").unwrap()[0].size, data.len() as u64);
        assert_eq!(s.get("p/x").unwrap().unwrap(), data);
        let stored = raw.get("p/x").unwrap().unwrap();
        assert!(
            !stored.windows(16).any(|w| w == &data[1000..1016]),
            "stored in the clear"
        );
        // One flipped byte spoils its block only.
        let mut bad = stored.clone();
        bad[HEADER_LEN + BLOCK + TAG_LEN + 3] ^= 1;
        raw.put("p/x", &bad).unwrap();
        let s = EncryptedStorage::new(raw, s.keys.clone());
        assert!(s.get("p/x").is_err());
        assert!(s.get_range("p/x", BLOCK as u64 + 1, 5).is_err());
        assert_eq!(s.get_range("p/x", 0, 5).unwrap(), &data[..5]);
    }
}
