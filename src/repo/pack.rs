//! Chunks and pack files.
//!
//! A chunk is a piece of a file, named by the BLAKE3 hash of its plaintext and stored
//! once, compressed, inside a pack. A pack is tens of MB of chunks followed by its own
//! index, so object storage sees few large objects and a lost index can be rebuilt:
//!
//! ```text
//! chunk payloads... | index (see encode_index) | index length u32 LE | "PGKP"
//! ```
//!
//! The pack is named by the BLAKE3 hash of its bytes. Its index is also stored beside it
//! as `NAME.idx` (an enveloped object) so readers need not open every pack. A pack is
//! written before its `.idx`, and both before any manifest that refers to their chunks.

use std::fmt;
use std::sync::Arc;

use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::object::{self, Compression};
use super::storage::Storage;

/// The BLAKE3 hash of a chunk's plaintext (keyed, in an encrypted repository): its name
/// and its checksum.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data` in an unencrypted repository.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkHasher::default().id(data)
    }
}

/// How chunk ids are computed: BLAKE3 of the chunk, keyed with the repository's chunk-id
/// key in an encrypted repository, so that no id is a hash anyone could compute from
/// data they guess.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkHasher {
    key: Option<[u8; 32]>,
}

impl ChunkHasher {
    pub fn keyed(key: [u8; 32]) -> ChunkHasher {
        ChunkHasher { key: Some(key) }
    }

    pub fn id(&self, data: &[u8]) -> ChunkId {
        let hash = match &self.key {
            Some(key) => blake3::keyed_hash(key, data),
            None => blake3::hash(data),
        };
        ChunkId(*hash.as_bytes())
    }

    /// The name of a pack of these bytes: their hash, keyed like chunk ids.
    pub fn pack_name(&self, pack: &[u8]) -> String {
        hex::encode(self.id(pack).0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut id = [0u8; 32];
        hex::decode_to_slice(&text, &mut id).map_err(serde::de::Error::custom)?;
        Ok(ChunkId(id))
    }
}

/// A chunk stored as the difference from another. `depth` counts the bases below it
/// (1 = the base is stored whole), which keeps chains short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    pub base: ChunkId,
    pub depth: u8,
    pub method: DeltaMethod,
}

/// How a delta's payload is made from its chunk and base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DeltaMethod {
    /// zstd with the base's plaintext as a raw-content dictionary (index version 2).
    Dictionary = 0,
    /// The chunk XOR the base (zero-extended), compressed as the entry says: unchanged
    /// bytes become zeros. Cheaper than a dictionary, which zstd must index first.
    Xor = 1,
}

/// Longest chain of deltas a chunk may sit on.
pub const MAX_DELTA_DEPTH: u8 = 4;
/// Packs are stored once they reach this size.
pub const PACK_SIZE: usize = 32 * 1024 * 1024;

/// The largest chunk an index may describe (chunks are 256 KiB today): a damaged index
/// must not make a reader allocate gigabytes.
pub const MAX_CHUNK_LEN: u32 = 64 << 20;

/// Where one chunk sits inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
    pub delta: Option<Delta>,
}

const INDEX_MAGIC: &[u8; 4] = b"PGKI";
const PACK_MAGIC: &[u8; 4] = b"PGKP";
/// Index version 1: id, offset, stored length, raw length, compression.
const ENTRY_LEN_V1: usize = 32 + 8 + 4 + 4 + 1;
/// Index version 2 adds the delta depth (0: stored whole) and the base id.
const ENTRY_LEN_V2: usize = ENTRY_LEN_V1 + 1 + 32;
/// Index version 3 adds the delta method.
const ENTRY_LEN_V3: usize = ENTRY_LEN_V2 + 1;

pub fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + entries.len() * ENTRY_LEN_V3);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&[3, 0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
        out.push(e.compression as u8);
        out.push(e.delta.map_or(0, |d| d.depth));
        out.extend_from_slice(&e.delta.map_or([0; 32], |d| d.base.0));
        out.push(e.delta.map_or(0, |d| d.method as u8));
    }
    out
}

pub fn decode_index(bytes: &[u8]) -> Result<Vec<IndexEntry>> {
    let entry_len = match bytes.get(4) {
        Some(1) => ENTRY_LEN_V1,
        Some(2) => ENTRY_LEN_V2,
        Some(3) => ENTRY_LEN_V3,
        _ => 0,
    };
    if bytes.len() < 12 || &bytes[..4] != INDEX_MAGIC || entry_len == 0 {
        bail!("not a pack index of a version this pgkeep reads");
    }
    let count = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    if bytes.len() != 12 + count * entry_len {
        bail!("pack index length does not match its entry count");
    }
    bytes[12..]
        .chunks_exact(entry_len)
        .map(|e| {
            let delta = match e.get(ENTRY_LEN_V1) {
                None | Some(0) => None,
                Some(&depth) if depth <= MAX_DELTA_DEPTH => Some(Delta {
                    base: ChunkId(e[ENTRY_LEN_V1 + 1..ENTRY_LEN_V2].try_into().unwrap()),
                    depth,
                    method: match e.get(ENTRY_LEN_V2) {
                        None | Some(0) => DeltaMethod::Dictionary,
                        Some(1) => DeltaMethod::Xor,
                        Some(m) => bail!("pack index names unknown delta method {m}"),
                    },
                }),
                Some(depth) => bail!("pack index has a delta chain of impossible depth {depth}"),
            };
            let (stored_len, raw_len) = (
                u32::from_le_bytes(e[40..44].try_into().unwrap()),
                u32::from_le_bytes(e[44..48].try_into().unwrap()),
            );
            if raw_len > MAX_CHUNK_LEN || stored_len > MAX_CHUNK_LEN + (1 << 20) {
                bail!("pack index has a chunk of impossible size {raw_len} ({stored_len} stored)");
            }
            Ok(IndexEntry {
                id: ChunkId(e[..32].try_into().unwrap()),
                offset: u64::from_le_bytes(e[32..40].try_into().unwrap()),
                stored_len,
                raw_len,
                compression: match e[48] {
                    0 => Compression::None,
                    1 => Compression::Zstd,
                    c => bail!("pack index names unknown compression {c}"),
                },
                delta,
            })
        })
        .collect()
}

/// The size of a pack holding `entries` chunks of `payload` bytes in all: the payloads,
/// the index, and the footer (index length and magic).
pub fn pack_size(entries: usize, payload: u64) -> u64 {
    payload + (12 + entries * ENTRY_LEN_V3 + 8) as u64
}

/// The key of pack `name`'s `.pack` or `.idx` object under `prefix`.
pub fn pack_key(prefix: &str, name: &str, ext: &str) -> String {
    format!("{prefix}/{}/{name}.{ext}", &name[..2])
}

/// Collects compressed chunks into packs and stores each pack when it is full, while the
/// next one fills: up to [`Storage::parallel_puts`] packs are stored at once, so memory
/// stays bounded by that many packs plus the one filling.
///
/// Invariant: when [`PackWriter::flush`] returns, every pack added so far is durable
/// (callers publish manifests or remove old packs only after it).
pub struct PackWriter {
    storage: Arc<dyn Storage>,
    prefix: String,
    target_size: usize,
    hasher: ChunkHasher,
    buf: Vec<u8>,
    entries: Vec<IndexEntry>,
    /// Packs being stored, oldest first.
    storing: std::collections::VecDeque<std::thread::JoinHandle<Result<()>>>,
    /// Bytes of packs stored so far (chunk payloads plus index).
    pub stored_bytes: u64,
    /// Names of the packs stored so far. A pack's name is its content hash, so a pack
    /// that already existed with the same bytes is listed too.
    pub stored: Vec<String>,
}

impl PackWriter {
    /// `prefix` is the folder packs go in, e.g. `main/packs`.
    pub fn new(
        storage: Arc<dyn Storage>,
        prefix: String,
        target_size: usize,
        hasher: ChunkHasher,
    ) -> PackWriter {
        PackWriter {
            storage,
            hasher,
            prefix,
            target_size,
            buf: Vec::new(),
            entries: Vec::new(),
            storing: Default::default(),
            stored_bytes: 0,
            stored: Vec::new(),
        }
    }

    pub fn add(
        &mut self,
        id: ChunkId,
        raw_len: usize,
        compression: Compression,
        delta: Option<Delta>,
        payload: &[u8],
    ) -> Result<()> {
        self.entries.push(IndexEntry {
            id,
            offset: self.buf.len() as u64,
            stored_len: payload.len() as u32,
            raw_len: raw_len as u32,
            compression,
            delta,
        });
        self.buf.extend_from_slice(payload);
        if self.buf.len() >= self.target_size {
            self.seal()?;
        }
        Ok(())
    }

    /// Stores the pack being filled and waits until every pack is durable.
    pub fn flush(&mut self) -> Result<()> {
        self.seal()?;
        self.wait_until_at_most(0)
    }

    /// Closes the pack being filled and starts storing it (pack, then index).
    fn seal(&mut self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let index = encode_index(&self.entries);
        debug_assert_eq!(
            pack_size(self.entries.len(), self.buf.len() as u64),
            (self.buf.len() + index.len() + 8) as u64
        );
        let mut pack = std::mem::take(&mut self.buf);
        pack.extend_from_slice(&index);
        pack.extend_from_slice(&(index.len() as u32).to_le_bytes());
        pack.extend_from_slice(PACK_MAGIC);
        self.entries.clear();
        let name = self.hasher.pack_name(&pack);
        self.stored_bytes += pack.len() as u64;
        self.stored.push(name.clone());
        self.wait_until_at_most(self.storage.parallel_puts().max(1) - 1)?;
        let (storage, prefix, hasher) = (self.storage.clone(), self.prefix.clone(), self.hasher);
        self.storing.push_back(std::thread::spawn(move || {
            store_pack(&*storage, &prefix, hasher, &name, &pack)?;
            storage.put(
                &pack_key(&prefix, &name, "idx"),
                &object::encode(&index, 3)?,
            )
        }));
        Ok(())
    }

    /// Waits for the oldest packs being stored until at most `n` are; the first failure
    /// is the error.
    fn wait_until_at_most(&mut self, n: usize) -> Result<()> {
        while self.storing.len() > n {
            let oldest = self
                .storing
                .pop_front()
                .expect("more than n >= 0 are stored");
            oldest
                .join()
                .map_err(|_| anyhow::anyhow!("storing a pack panicked"))??;
        }
        Ok(())
    }
}

/// Stores pack `name` with content `pack`. A pack of that name is these very bytes (the
/// name is their hash), unless it was damaged: then it is replaced by its true content,
/// and its damage record goes.
fn store_pack(
    storage: &dyn Storage,
    prefix: &str,
    hasher: ChunkHasher,
    name: &str,
    pack: &[u8],
) -> Result<()> {
    let key = pack_key(prefix, name, "pack");
    if storage.put_new(&key, pack)? {
        return Ok(());
    }
    let intact = storage
        .get(&key)?
        .is_some_and(|stored| hasher.pack_name(&stored) == name);
    if !intact {
        tracing::warn!("pack {key} was damaged; it is written again");
        storage.put(&key, pack)?;
        storage.delete(&pack_key(prefix, name, "damaged"))?;
    }
    Ok(())
}

/// Reads the index stored at the end of a pack of `size` bytes through `read(offset,
/// len)`.
fn index_at_end(
    size: u64,
    read: impl Fn(u64, usize) -> Result<Vec<u8>>,
) -> Result<Vec<IndexEntry>> {
    if size < 8 {
        bail!("the pack is too short");
    }
    let tail = read(size - 8, 8)?;
    if &tail[4..] != PACK_MAGIC {
        bail!("the pack does not end with its index");
    }
    let len = u32::from_le_bytes(tail[..4].try_into().unwrap()) as u64;
    if len + 8 > size {
        bail!("the pack's index length is impossible");
    }
    decode_index(&read(size - 8 - len, len as usize)?)
}

/// The index stored at the end of the pack at `key`, of `size` bytes.
pub fn footer_index(storage: &dyn Storage, key: &str, size: u64) -> Result<Vec<IndexEntry>> {
    index_at_end(size, |offset, len| storage.get_range(key, offset, len))
}

/// The index stored at the end of a whole pack.
pub fn index_in(pack: &[u8]) -> Result<Vec<IndexEntry>> {
    index_at_end(pack.len() as u64, |offset, len| {
        Ok(pack[offset as usize..offset as usize + len].to_vec())
    })
}
