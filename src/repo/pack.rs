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

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::object::{self, Compression};
use super::storage::Storage;

/// The BLAKE3 hash of a chunk's plaintext: its name and its checksum.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
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

fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
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

fn decode_index(bytes: &[u8]) -> Result<Vec<IndexEntry>> {
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
            Ok(IndexEntry {
                id: ChunkId(e[..32].try_into().unwrap()),
                offset: u64::from_le_bytes(e[32..40].try_into().unwrap()),
                stored_len: u32::from_le_bytes(e[40..44].try_into().unwrap()),
                raw_len: u32::from_le_bytes(e[44..48].try_into().unwrap()),
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

/// Collects compressed chunks into packs and stores each pack when it is full.
pub struct PackWriter {
    storage: Arc<dyn Storage>,
    prefix: String,
    target_size: usize,
    buf: Vec<u8>,
    entries: Vec<IndexEntry>,
    /// Bytes of packs stored so far (chunk payloads plus index).
    pub stored_bytes: u64,
    /// Names of the packs stored so far. A pack's name is its content hash, so a pack
    /// that already existed with the same bytes is listed too.
    pub stored: Vec<String>,
}

impl PackWriter {
    /// `prefix` is the folder packs go in, e.g. `main/packs`.
    pub fn new(storage: Arc<dyn Storage>, prefix: String, target_size: usize) -> PackWriter {
        PackWriter {
            storage,
            prefix,
            target_size,
            buf: Vec::new(),
            entries: Vec::new(),
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
            self.flush()?;
        }
        Ok(())
    }

    /// Stores the pack being filled, then its index.
    pub fn flush(&mut self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let index = encode_index(&self.entries);
        debug_assert_eq!(
            pack_size(self.entries.len(), self.buf.len() as u64),
            (self.buf.len() + index.len() + 8) as u64
        );
        self.buf.extend_from_slice(&index);
        self.buf
            .extend_from_slice(&(index.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(PACK_MAGIC);
        let name = blake3::hash(&self.buf).to_hex().to_string();
        self.storage
            .put_new(&pack_key(&self.prefix, &name, "pack"), &self.buf)?;
        self.storage.put(
            &pack_key(&self.prefix, &name, "idx"),
            &object::encode(&index, 3)?,
        )?;
        self.stored_bytes += self.buf.len() as u64;
        self.stored.push(name);
        self.buf.clear();
        self.entries.clear();
        Ok(())
    }
}

/// Where a chunk is: which pack (by position in [`ChunkIndex::packs`]) and where in it.
#[derive(Clone, Copy, Debug)]
pub struct ChunkLocation {
    pub pack: u32,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
    pub delta: Option<Delta>,
}

/// Every chunk in a repository folder and where it is stored.
#[derive(Default)]
pub struct ChunkIndex {
    pub packs: Vec<String>,
    /// The copy each readable chunk is read from.
    pub chunks: HashMap<ChunkId, ChunkLocation>,
    /// Every other stored copy: second copies of chunks stored twice, and deltas that
    /// cannot be read (their bases are gone, perhaps in an unreadable pack).
    pub other_copies: Vec<(ChunkId, ChunkLocation)>,
    /// Packs whose index cannot be read from either copy, with why: their chunks are
    /// unknown, and they are never removed automatically.
    pub unreadable: Vec<(String, String)>,
    /// Packs without an index file: a writer died between storing the two, so nothing
    /// refers to them.
    pub unindexed: Vec<String>,
}

/// Reads the index stored at the end of a pack of `size` bytes.
fn footer_index(storage: &dyn Storage, key: &str, size: u64) -> Result<Vec<IndexEntry>> {
    if size < 8 {
        bail!("the pack is too short");
    }
    let tail = storage.get_range(key, size - 8, 8)?;
    if &tail[4..] != PACK_MAGIC {
        bail!("the pack does not end with its index");
    }
    let len = u32::from_le_bytes(tail[..4].try_into().unwrap()) as u64;
    if len + 8 > size {
        bail!("the pack's index length is impossible");
    }
    decode_index(&storage.get_range(key, size - 8 - len, len as usize)?)
}

impl ChunkIndex {
    /// Reads every pack index under `prefix`. A damaged `.idx` is replaced by the copy
    /// inside its pack; a pack with neither readable is set aside in `unreadable`, so
    /// one bad object never blocks backups or restores that do not need it.
    pub fn load(storage: &dyn Storage, prefix: &str) -> Result<ChunkIndex> {
        let mut packs: BTreeMap<String, (Option<u64>, bool)> = BTreeMap::new();
        for object in storage.list(prefix)? {
            let file = object.key.rsplit('/').next().unwrap_or("");
            let Some((name, ext)) = file.split_once('.') else {
                continue;
            };
            if name.len() != 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                tracing::warn!("ignoring {} in the repository: not a pack", object.key);
                continue;
            }
            let slot = packs.entry(name.to_string()).or_default();
            match ext {
                "pack" => slot.0 = Some(object.size),
                "idx" => slot.1 = true,
                _ => tracing::warn!("ignoring {} in the repository: not a pack", object.key),
            }
        }
        let mut index = ChunkIndex::default();
        // Deltas are placed once every whole chunk is known.
        let mut deltas: HashMap<ChunkId, Vec<ChunkLocation>> = HashMap::new();
        for (name, (stored_size, has_idx)) in packs {
            if !has_idx {
                index.unindexed.push(name);
                continue;
            }
            let idx_key = pack_key(prefix, &name, "idx");
            let from_idx = storage
                .get(&idx_key)?
                .context("vanished while reading")
                .and_then(|bytes| object::decode(&bytes))
                .and_then(|plain| decode_index(&plain));
            let entries = match (from_idx, stored_size) {
                (Ok(_), None) => {
                    let why = "its index is there but the pack itself is missing".to_string();
                    index.unreadable.push((name, why));
                    continue;
                }
                (Ok(entries), Some(_)) => entries,
                (Err(idx_err), Some(size)) => {
                    match footer_index(storage, &pack_key(prefix, &name, "pack"), size) {
                        Ok(entries) => {
                            tracing::warn!(
                                "pack index {idx_key} is unreadable ({idx_err:#}); using the copy inside the pack"
                            );
                            entries
                        }
                        Err(e) => {
                            index.unreadable.push((
                                name,
                                format!("{idx_err:#}; the copy inside the pack: {e:#}"),
                            ));
                            continue;
                        }
                    }
                }
                (Err(idx_err), None) => {
                    index.unreadable.push((name, format!("{idx_err:#}")));
                    continue;
                }
            };
            let pack = index.packs.len() as u32;
            index.packs.push(name);
            for e in entries {
                let loc = ChunkLocation {
                    pack,
                    offset: e.offset,
                    stored_len: e.stored_len,
                    raw_len: e.raw_len,
                    compression: e.compression,
                    delta: e.delta,
                };
                if loc.delta.is_some() {
                    deltas.entry(e.id).or_default().push(loc);
                } else if let Entry::Vacant(v) = index.chunks.entry(e.id) {
                    v.insert(loc);
                } else {
                    index.other_copies.push((e.id, loc));
                }
            }
        }
        index.place_deltas(deltas);
        for (name, why) in &index.unreadable {
            tracing::warn!(
                "pack {name} has no readable index ({why}); its chunks are treated as missing"
            );
        }
        Ok(index)
    }

    /// Chooses the copy each delta is read from: the one with the shortest chain of
    /// bases as they are now (a chunk may be stored more than once, by concurrent
    /// backups or a collection interrupted between copying a pack and removing it, and
    /// copies of a base may differ), recording that true depth. A chunk also stored
    /// whole is read whole. A delta whose bases are gone (a lost pack) or whose chain
    /// is too long cannot be read: it stays out of `chunks`, so it is not deduplicated
    /// against, and a backup that refers to it finds it missing.
    fn place_deltas(&mut self, mut pending: HashMap<ChunkId, Vec<ChunkLocation>>) {
        pending.retain(|id, copies| {
            let whole = self.chunks.contains_key(id);
            if whole {
                self.other_copies.extend(copies.drain(..).map(|c| (*id, c)));
            }
            !whole
        });
        for depth in 1..=MAX_DELTA_DEPTH {
            // Bases placed in this round wait for the next: depths then grow one a round.
            let ready: Vec<(ChunkId, usize)> = pending
                .iter()
                .filter_map(|(id, copies)| {
                    let readable = |c: &ChunkLocation| {
                        c.delta.is_some_and(|d| self.chunks.contains_key(&d.base))
                    };
                    Some((*id, copies.iter().position(readable)?))
                })
                .collect();
            if ready.is_empty() {
                break;
            }
            for (id, at) in ready {
                let mut copies = pending.remove(&id).expect("pending");
                let mut chosen = copies.swap_remove(at);
                chosen.delta = chosen.delta.map(|d| Delta { depth, ..d });
                self.chunks.insert(id, chosen);
                self.other_copies
                    .extend(copies.into_iter().map(|c| (id, c)));
            }
        }
        if !pending.is_empty() {
            tracing::info!(
                "{} stored deltas have no base left and are ignored",
                pending.len()
            );
        }
        for (id, copies) in pending {
            self.other_copies
                .extend(copies.into_iter().map(|c| (id, c)));
        }
    }

    pub fn pack_key(&self, prefix: &str, pack: u32) -> String {
        pack_key(prefix, &self.packs[pack as usize], "pack")
    }

    /// Reads, decompresses and checks one chunk (and, for a delta, its bases).
    pub fn read(&self, storage: &dyn Storage, prefix: &str, id: &ChunkId) -> Result<Vec<u8>> {
        let plain = self.read_unchecked(storage, prefix, id, MAX_DELTA_DEPTH + 1)?;
        if ChunkId::of(&plain) != *id {
            let key = self
                .chunks
                .get(id)
                .map_or(String::new(), |loc| self.pack_key(prefix, loc.pack));
            bail!("chunk {id} in pack {key} is corrupt: its content does not match its checksum");
        }
        Ok(plain)
    }

    /// The plaintext of `id` as a base for a new delta, without the hash check. A delta
    /// records the difference from exactly what the stored bytes decode to, and every
    /// read decodes them the same way, so a damaged base still yields the right chunk.
    pub fn read_base(&self, storage: &dyn Storage, prefix: &str, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_unchecked(storage, prefix, id, MAX_DELTA_DEPTH + 1)
    }

    /// A chunk's plaintext without the final hash check: a base need not be hashed on
    /// its own, since a wrong base cannot yield a chunk that matches its id.
    fn read_unchecked(
        &self,
        storage: &dyn Storage,
        prefix: &str,
        id: &ChunkId,
        depth_left: u8,
    ) -> Result<Vec<u8>> {
        let loc = self
            .chunks
            .get(id)
            .with_context(|| format!("chunk {id} is missing from the repository"))?;
        let key = self.pack_key(prefix, loc.pack);
        let corrupt = || {
            anyhow::anyhow!(
                "chunk {id} in pack {key} is corrupt: its content does not match its checksum"
            )
        };
        let payload = storage.get_range(&key, loc.offset, loc.stored_len as usize)?;
        let base = match loc.delta {
            None => None,
            Some(_) if depth_left == 0 => {
                bail!("chunk {id} sits on a delta chain that is too long or loops")
            }
            Some(d) => Some(
                self.read_unchecked(storage, prefix, &d.base, depth_left - 1)
                    .with_context(|| format!("cannot read the base of chunk {id}"))?,
            ),
        };
        let plain = decode_payload(loc, &payload, base.as_deref()).map_err(|_| corrupt())?;
        if plain.len() != loc.raw_len as usize {
            return Err(corrupt());
        }
        Ok(plain)
    }

    /// The chunks of each pack, by pack number.
    pub fn by_pack(&self) -> Vec<Vec<(ChunkId, ChunkLocation)>> {
        let mut out = vec![Vec::new(); self.packs.len()];
        for (id, loc) in &self.chunks {
            out[loc.pack as usize].push((*id, *loc));
        }
        out
    }

    /// The name (content hash) of a pack.
    pub fn pack_name(&self, pack: u32) -> &str {
        &self.packs[pack as usize]
    }
}

/// Decompresses a chunk's stored bytes and checks them against its id. A delta needs the
/// plaintext of its base.
pub fn decode_chunk(
    id: &ChunkId,
    loc: &ChunkLocation,
    payload: &[u8],
    base: Option<&[u8]>,
) -> Result<Vec<u8>> {
    if loc.delta.is_some() && base.is_none() {
        bail!("chunk {id} is a delta and needs its base to be read");
    }
    match decode_payload(loc, payload, base) {
        Ok(p) if p.len() == loc.raw_len as usize && ChunkId::of(&p) == *id => Ok(p),
        _ => bail!("chunk {id} is corrupt: its content does not match its checksum"),
    }
}

/// A chunk's plaintext from its payload (and its base's plaintext, for a delta).
fn decode_payload(loc: &ChunkLocation, payload: &[u8], base: Option<&[u8]>) -> Result<Vec<u8>> {
    let raw_len = loc.raw_len as usize;
    Ok(match (loc.delta, base) {
        (None, _) => object::decompress(loc.compression, payload, raw_len)?,
        (Some(d), Some(base)) if d.method == DeltaMethod::Dictionary => {
            zstd::bulk::Decompressor::with_dictionary(base)?.decompress(payload, raw_len)?
        }
        (Some(_), Some(base)) => {
            let mut plain = object::decompress(loc.compression, payload, raw_len)?;
            xor_into(&mut plain, base);
            plain
        }
        (Some(_), None) => bail!("a delta needs its base"),
    })
}

/// `target ^= base` over their common length.
fn xor_into(target: &mut [u8], base: &[u8]) {
    for (t, b) in target.iter_mut().zip(base) {
        *t ^= b;
    }
}

/// `data` as an XOR delta of `base`: the compression and payload of the difference.
pub fn encode_delta(data: &[u8], base: &[u8], level: i32) -> Result<(Compression, Vec<u8>)> {
    let mut diff = data.to_vec();
    xor_into(&mut diff, base);
    object::compress(&diff, level.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::storage::LocalStorage;

    #[test]
    fn chunks_round_trip_through_packs_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let mut writer = PackWriter::new(storage.clone(), "c/packs".into(), 1000);
        let chunks: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 300 + i as usize]).collect();
        for c in &chunks {
            let (comp, payload) = object::compress(c, 3).unwrap();
            writer
                .add(ChunkId::of(c), c.len(), comp, None, &payload)
                .unwrap();
        }
        writer.flush().unwrap();
        let index = ChunkIndex::load(&*storage, "c/packs").unwrap();
        assert_eq!(index.chunks.len(), 10);
        // A delta of the first chunk reads back through its base.
        let mut changed = chunks[0].clone();
        changed[7] ^= 0xFF;
        let base_plain = index
            .read(&*storage, "c/packs", &ChunkId::of(&chunks[0]))
            .unwrap();
        changed.push(9); // longer than its base
        let (compression, payload) = encode_delta(&changed, &base_plain, 3).unwrap();
        assert!(
            payload.len() < 40,
            "a one-byte change costs a few bytes: {}",
            payload.len()
        );
        let delta = Delta {
            base: ChunkId::of(&chunks[0]),
            depth: 1,
            method: DeltaMethod::Xor,
        };
        writer
            .add(
                ChunkId::of(&changed),
                changed.len(),
                compression,
                Some(delta),
                &payload,
            )
            .unwrap();
        writer.flush().unwrap();
        let index = ChunkIndex::load(&*storage, "c/packs").unwrap();
        assert_eq!(
            index
                .read(&*storage, "c/packs", &ChunkId::of(&changed))
                .unwrap(),
            changed
        );
        // Deltas from before XOR deltas (zstd dictionaries) still read back.
        let mut older = chunks[1].clone();
        older[3] ^= 0x0F;
        let dict_payload = zstd::bulk::Compressor::with_dictionary(3, &chunks[1])
            .unwrap()
            .compress(&older)
            .unwrap();
        let dict_delta = Delta {
            base: ChunkId::of(&chunks[1]),
            depth: 1,
            method: DeltaMethod::Dictionary,
        };
        writer
            .add(
                ChunkId::of(&older),
                older.len(),
                Compression::Zstd,
                Some(dict_delta),
                &dict_payload,
            )
            .unwrap();
        writer.flush().unwrap();
        let index = ChunkIndex::load(&*storage, "c/packs").unwrap();
        assert_eq!(
            index
                .read(&*storage, "c/packs", &ChunkId::of(&older))
                .unwrap(),
            older
        );
        // A damaged .idx: the copy inside the pack serves.
        let idx_path = dir.path().join(pack_key("c/packs", &index.packs[0], "idx"));
        let mut idx = std::fs::read(&idx_path).unwrap();
        idx[20] ^= 1;
        std::fs::write(&idx_path, idx).unwrap();
        std::fs::write(dir.path().join("c/packs/zz.idx"), b"stray").unwrap();
        let index = ChunkIndex::load(&*storage, "c/packs").unwrap();
        assert_eq!(index.chunks.len(), 12);
        assert!(index.unreadable.is_empty());
        for c in &chunks {
            assert_eq!(
                &index.read(&*storage, "c/packs", &ChunkId::of(c)).unwrap(),
                c
            );
        }
        // Flip a byte inside the first chunk's payload.
        let id = ChunkId::of(&chunks[0]);
        let loc = index.chunks[&id];
        let key = index.pack_key("c/packs", loc.pack);
        let path = dir.path().join(&key);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = index
            .read(&*storage, "c/packs", &id)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is corrupt"), "{err}");
    }

    /// Stores `data` as an XOR delta of `base` in a pack of its own.
    fn store_delta(writer: &mut PackWriter, data: &[u8], base: &[u8]) {
        let (compression, payload) = encode_delta(data, base, 3).unwrap();
        let delta = Delta {
            base: ChunkId::of(base),
            depth: 1,
            method: DeltaMethod::Xor,
        };
        writer
            .add(
                ChunkId::of(data),
                data.len(),
                compression,
                Some(delta),
                &payload,
            )
            .unwrap();
        writer.flush().unwrap();
    }

    /// Stores `data` whole in a pack of its own.
    fn store_whole(writer: &mut PackWriter, data: &[u8]) {
        let (compression, payload) = object::compress(data, 3).unwrap();
        writer
            .add(ChunkId::of(data), data.len(), compression, None, &payload)
            .unwrap();
        writer.flush().unwrap();
    }

    #[test]
    fn a_chunk_stored_twice_reads_from_the_copy_whose_bases_remain() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let mut writer = PackWriter::new(storage.clone(), "c/packs".into(), 1 << 20);
        let (gone, kept) = (vec![1u8; 4096], vec![2u8; 4096]);
        let mut chunk = kept.clone();
        chunk[100] = 7;
        // Two concurrent backups stored `chunk` against different bases; collection
        // then removed one base (it never was stored here).
        store_delta(&mut writer, &chunk, &gone);
        store_whole(&mut writer, &kept);
        store_delta(&mut writer, &chunk, &kept);
        let index = ChunkIndex::load(&*storage, "c/packs").unwrap();
        let id = ChunkId::of(&chunk);
        assert_eq!(index.read(&*storage, "c/packs", &id).unwrap(), chunk);
        // Stored whole as well: read whole, whatever the order of the packs.
        store_whole(&mut writer, &chunk);
        let index = ChunkIndex::load(&*storage, "c/packs").unwrap();
        assert_eq!(index.chunks[&id].delta, None);
        // Only through a missing base: the chunk is unknown, so it is stored again.
        let mut lost = gone.clone();
        lost[5] = 9;
        store_delta(&mut writer, &lost, &gone);
        let index = ChunkIndex::load(&*storage, "c/packs").unwrap();
        assert!(!index.chunks.contains_key(&ChunkId::of(&lost)));
    }
}
