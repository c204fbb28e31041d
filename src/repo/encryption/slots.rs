//! Key slots: the master key wrapped under a key derived from one secret each, so that
//! secrets can be added and removed without touching the data.
//!
//! `keys/ID.slot` at the repository root (plain JSON, beside the marker):
//! `{"id", "created", "source", "kdf": "argon2id", "m_kib", "t", "p", "salt", "nonce",
//! "wrapped"}`, where `wrapped` is AES-256-GCM of the master key under
//! `Argon2id(secret, salt)` with the slot id as associated data (hex-encoded fields).
//! A slot opens only with its secret; a slot whose master key does not match the
//! marker's check value is not this repository's.

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use super::{Keys, random};
use crate::repo::storage::Storage;

const PREFIX: &str = "keys";

/// Argon2id cost: OWASP's recommended minimum (19 MiB, 2 passes), so that every
/// `archive-push` can afford to open the repository.
const M_KIB: u32 = 19 * 1024;
const T: u32 = 2;
const P: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub id: String,
    pub created: DateTime<Utc>,
    /// What kind of secret opens it, for `key list`: "passphrase" or "key command".
    pub source: String,
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
    nonce: String,
    wrapped: String,
}

fn slot_key(id: &str) -> String {
    format!("{PREFIX}/{id}.slot")
}

fn kek(secret: &[u8], salt: &[u8], m_kib: u32, t: u32, p: u32) -> Result<LessSafeKey> {
    let params = argon2::Params::new(m_kib, t, p, Some(32))
        .map_err(|e| anyhow!("bad key slot parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon
        .hash_password_into(secret, salt, &mut key)
        .map_err(|e| anyhow!("cannot derive the key of a key slot: {e}"))?;
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &key).expect("32 bytes is an AES-256 key"),
    ))
}

impl Slot {
    /// A new slot holding `keys`' master key under `secret`.
    pub fn new(keys: &Keys, secret: &[u8], source: &str) -> Result<Slot> {
        let id = hex::encode(random::<6>()?);
        let salt: [u8; 16] = random()?;
        let nonce: [u8; 12] = random()?;
        let mut wrapped = keys.master().to_vec();
        kek(secret, &salt, M_KIB, T, P)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut wrapped,
            )
            .map_err(|_| anyhow!("cannot wrap the master key"))?;
        Ok(Slot {
            id,
            created: Utc::now(),
            source: source.to_string(),
            kdf: "argon2id".into(),
            m_kib: M_KIB,
            t: T,
            p: P,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
        })
    }

    /// The master key, if `secret` opens this slot.
    pub fn open(&self, secret: &[u8]) -> Result<Option<Keys>> {
        if self.kdf != "argon2id" {
            bail!(
                "key slot {} uses key derivation '{}', which this pgkeep does not know; upgrade pgkeep",
                self.id,
                self.kdf
            );
        }
        let field = |name: &str, hex_text: &str| {
            hex::decode(hex_text).with_context(|| format!("key slot {} has a bad {name}", self.id))
        };
        let salt = field("salt", &self.salt)?;
        let nonce: [u8; 12] = field("nonce", &self.nonce)?
            .try_into()
            .map_err(|_| anyhow!("key slot {} has a bad nonce", self.id))?;
        let mut wrapped = field("wrapped key", &self.wrapped)?;
        let key = kek(secret, &salt, self.m_kib, self.t, self.p)?;
        let Ok(master) = key.open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.id.as_bytes()),
            &mut wrapped,
        ) else {
            return Ok(None);
        };
        let master: [u8; 32] = master
            .try_into()
            .map_err(|_| anyhow!("key slot {} holds a key of the wrong length", self.id))?;
        Ok(Some(Keys::from_master(master)))
    }
}

/// Every key slot of the repository, by id.
pub fn list(storage: &dyn Storage) -> Result<Vec<Slot>> {
    let mut slots: Vec<Slot> = Vec::new();
    for meta in storage.list(PREFIX)? {
        if !meta.key.ends_with(".slot") {
            continue;
        }
        let bytes = storage.get(&meta.key)?.unwrap_or_default();
        match serde_json::from_slice(&bytes) {
            Ok(slot) => slots.push(slot),
            // The other slots may still open the repository.
            Err(e) => tracing::warn!("key slot {} is damaged ({e}); it is passed over", meta.key),
        }
    }
    slots.sort_by_key(|s| s.created);
    Ok(slots)
}

/// Stores a new slot (never replacing one).
pub fn add(storage: &dyn Storage, slot: &Slot) -> Result<()> {
    if !storage.put_new(&slot_key(&slot.id), &serde_json::to_vec_pretty(slot)?)? {
        bail!("key slot {} exists already; try again", slot.id);
    }
    Ok(())
}

pub fn remove(storage: &dyn Storage, id: &str) -> Result<()> {
    storage.delete(&slot_key(id))
}

/// The keys `secret` opens among `slots` whose check value is `check`, and the slot.
pub fn unlock<'s>(
    slots: &'s [Slot],
    secret: &[u8],
    check: &str,
) -> Result<Option<(Keys, &'s Slot)>> {
    for slot in slots {
        if let Some(keys) = slot.open(secret)?
            && keys.check_value() == check
        {
            return Ok(Some((keys, slot)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_opens_with_its_secret_only() {
        let keys = Keys::generate().unwrap();
        let slot = Slot::new(&keys, b"right", "passphrase").unwrap();
        let opened = slot.open(b"right").unwrap().unwrap();
        assert_eq!(opened.master(), keys.master());
        assert!(slot.open(b"wrong").unwrap().is_none());
        let slots = vec![slot];
        assert!(
            unlock(&slots, b"right", &keys.check_value())
                .unwrap()
                .is_some()
        );
        assert!(
            unlock(&slots, b"right", "00").unwrap().is_none(),
            "another repository's check"
        );
    }
}
