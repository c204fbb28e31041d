//! Client-side encryption: of an encrypted repository the storage provider sees object
//! names and sizes, nothing else.
//!
//! Keys: a random 256-bit master key, stored only wrapped in key slots ([`slots`]), each
//! under a key derived from one secret. From the master key HKDF-SHA256 derives the
//! object key and the chunk-id key (chunk ids are BLAKE3 keyed with it, so no name or
//! index reveals a hash of the data). Adding or removing a slot rewrites nothing else; a
//! leaked master key needs a new repository.
//!
//! An encrypted object (the whole object, as stored):
//!
//! ```text
//! "PGKE" | version u8 = 1 | reserved [3] | salt [32] | plaintext length u64 LE
//! block 0 | block 1 | ...           (at least one block, even for no plaintext)
//! ```
//!
//! Block `i` holds plaintext bytes `[i * 64 KiB, (i + 1) * 64 KiB)` sealed with
//! AES-256-GCM (ciphertext then 16-byte tag) under the object's own key
//! `HKDF(object key, salt, "pgkeep object " + object name)`, nonce `i` (96-bit big
//! endian), the 48-byte header as associated data. A random salt per object gives every
//! object its own key, so counters as nonces never repeat; the name in the key means an
//! object copied under another name does not open; the length in the header means a
//! truncated object does not either. Blocks let a range of a pack be read and checked
//! without the rest.

pub mod secret;
pub mod slots;

use anyhow::{Result, anyhow, bail};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

const MAGIC: &[u8; 4] = b"PGKE";
pub const HEADER_LEN: usize = 48;
/// Plaintext bytes per block.
pub const BLOCK: usize = 64 * 1024;
pub const TAG_LEN: usize = 16;

/// The repository's master key and the keys derived from it.
pub struct Keys {
    master: [u8; 32],
    object: [u8; 32],
    chunk_ids: [u8; 32],
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// `len` bytes of HKDF-SHA256 output of `prk` for `info`.
fn expand(prk: &hkdf::Prk, info: &[&[u8]], out: &mut [u8]) {
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output lengths here are far below the limit");
}

pub fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the system has no randomness to give"))?;
    Ok(bytes)
}

impl Keys {
    /// A new random master key.
    pub fn generate() -> Result<Keys> {
        Ok(Keys::from_master(random()?))
    }

    pub fn from_master(master: [u8; 32]) -> Keys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"pgkeep repository").extract(&master);
        let mut object = [0u8; 32];
        expand(&prk, &[b"pgkeep object key"], &mut object);
        let mut chunk_ids = [0u8; 32];
        expand(&prk, &[b"pgkeep chunk ids"], &mut chunk_ids);
        Keys {
            master,
            object,
            chunk_ids,
        }
    }

    pub fn master(&self) -> &[u8; 32] {
        &self.master
    }

    /// The key chunk ids are BLAKE3-keyed with.
    pub fn chunk_id_key(&self) -> [u8; 32] {
        self.chunk_ids
    }

    /// A value that names this master key without revealing it, for the repository
    /// marker: a slot whose key does not match it is not this repository's.
    pub fn check_value(&self) -> String {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"pgkeep repository").extract(&self.master);
        let mut check = [0u8; 16];
        expand(&prk, &[b"pgkeep key check"], &mut check);
        hex::encode(check)
    }

    fn object_key(&self, salt: &[u8], name: &str) -> LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.object);
        let mut key = [0u8; 32];
        expand(&prk, &[b"pgkeep object ", name.as_bytes()], &mut key);
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("32 bytes is an AES-256 key"))
    }

    /// `plaintext` as the encrypted object `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let salt: [u8; 32] = random()?;
        let header = header(&salt, plaintext.len() as u64);
        let key = self.object_key(&salt, name);
        let blocks = block_count(plaintext.len() as u64);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + blocks as usize * TAG_LEN);
        out.extend_from_slice(&header);
        for i in 0..blocks {
            let start = i as usize * BLOCK;
            let end = (start + BLOCK).min(plaintext.len());
            let at = out.len();
            out.extend_from_slice(&plaintext[start..end]);
            let tag = key
                .seal_in_place_separate_tag(nonce(i), Aad::from(&header), &mut out[at..])
                .map_err(|_| anyhow!("cannot encrypt {name}"))?;
            out.extend_from_slice(tag.as_ref());
        }
        Ok(out)
    }

    /// The plaintext of the whole encrypted object `name`; [`Unauthentic`] if it is not
    /// one this key sealed under this name, unchanged.
    pub fn open(&self, name: &str, stored: &[u8]) -> Result<Vec<u8>> {
        let (header, plain_len) = parse_header(name, stored)?;
        if stored.len() as u64 != stored_len(plain_len) {
            return Err(unauthentic(name));
        }
        let opener = self.opener(name, &header);
        let mut out = Vec::with_capacity(plain_len as usize);
        for (i, block) in stored[HEADER_LEN..].chunks(BLOCK + TAG_LEN).enumerate() {
            out.extend_from_slice(&opener.block(i as u64, block)?);
        }
        Ok(out)
    }

    /// An opener of the blocks of object `name` with this header.
    pub fn opener(&self, name: &str, header: &[u8; HEADER_LEN]) -> Opener {
        Opener {
            key: self.object_key(&header[8..40], name),
            header: *header,
            name: name.to_string(),
        }
    }
}

/// Opens the blocks of one object.
pub struct Opener {
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    name: String,
}

impl Opener {
    /// The plaintext of block `i` from its stored bytes.
    pub fn block(&self, i: u64, stored: &[u8]) -> Result<Vec<u8>> {
        let mut buf = stored.to_vec();
        let plain = self
            .key
            .open_in_place(nonce(i), Aad::from(&self.header), &mut buf)
            .map_err(|_| unauthentic(&self.name))?;
        let len = plain.len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// The error for an object that fails authentication: damaged, or not this
/// repository's. A kind of damage, like a truncated object.
#[derive(Debug, thiserror::Error)]
#[error(
    "{key} fails authentication: it was damaged or replaced, or the key is not this repository's"
)]
pub struct Unauthentic {
    pub key: String,
}

fn unauthentic(name: &str) -> anyhow::Error {
    anyhow::Error::new(Unauthentic {
        key: name.to_string(),
    })
}

fn header(salt: &[u8; 32], plain_len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = 1;
    h[8..40].copy_from_slice(salt);
    h[40..].copy_from_slice(&plain_len.to_le_bytes());
    h
}

/// The header of a stored object and the plaintext length it records.
pub fn parse_header(name: &str, stored: &[u8]) -> Result<([u8; HEADER_LEN], u64)> {
    let Some(header) = stored.get(..HEADER_LEN) else {
        return Err(unauthentic(name));
    };
    if &header[..4] != MAGIC {
        bail!("{name} is not an encrypted pgkeep object; the repository marker says it should be");
    }
    if header[4] != 1 {
        bail!(
            "{name} is encrypted in format {}, newer than this pgkeep reads; upgrade pgkeep",
            header[4]
        );
    }
    let header: [u8; HEADER_LEN] = header.try_into().expect("sliced to length");
    let plain_len = u64::from_le_bytes(header[40..].try_into().expect("8 bytes"));
    Ok((header, plain_len))
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Blocks of an object of `plain_len` bytes.
pub fn block_count(plain_len: u64) -> u64 {
    plain_len.div_ceil(BLOCK as u64).max(1)
}

/// The stored size of an object of `plain_len` bytes.
pub fn stored_len(plain_len: u64) -> u64 {
    HEADER_LEN as u64 + plain_len + block_count(plain_len) * TAG_LEN as u64
}

/// The plaintext size of a stored object of `stored` bytes (none if no object has it).
pub fn plain_len(stored: u64) -> Option<u64> {
    let body = stored.checked_sub(HEADER_LEN as u64)?;
    let blocks = body.div_ceil((BLOCK + TAG_LEN) as u64).max(1);
    let plain = body.checked_sub(blocks * TAG_LEN as u64)?;
    (stored_len(plain) == stored).then_some(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_reject_tampering() {
        let keys = Keys::generate().unwrap();
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = keys.seal("a/b", &plain).unwrap();
            assert_eq!(sealed.len() as u64, stored_len(len as u64));
            assert_eq!(plain_len(sealed.len() as u64), Some(len as u64));
            assert_eq!(keys.open("a/b", &sealed).unwrap(), plain);
            assert!(
                keys.open("a/c", &sealed).is_err(),
                "another name does not open"
            );
            for at in [0, 10, HEADER_LEN, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                assert!(
                    keys.open("a/b", &bad).is_err(),
                    "flipped byte {at} of {len}"
                );
            }
            assert!(keys.open("a/b", &sealed[..sealed.len() - 1]).is_err());
        }
        let other = Keys::generate().unwrap();
        let sealed = keys.seal("k", b"data").unwrap();
        let err = other.open("k", &sealed).unwrap_err();
        assert!(err.downcast_ref::<Unauthentic>().is_some(), "{err}");
    }

    #[test]
    fn the_same_plaintext_seals_differently() {
        let keys = Keys::generate().unwrap();
        assert_ne!(
            keys.seal("k", b"same").unwrap(),
            keys.seal("k", b"same").unwrap()
        );
    }
}
