//! The chunk index: every stored copy of every chunk, the copy each chunk is read from,
//! and reading chunks back.
//!
//! Invariants:
//! - A chunk may be stored more than once (concurrent backups, an interrupted
//!   collection, a copy stored again after damage). It is read from its best copy, and
//!   a read that fails on one copy tries the others, so a damaged copy never hides a
//!   good one.
//! - A copy `verify` or a full backup found corrupt is recorded in `NAME.damaged` beside
//!   its pack. A recorded copy is read only as a last resort and never counts as the
//!   chunk being stored: the next backup that meets the same data stores it again.
//! - A pack whose `.idx` is missing or damaged is read through the copy of its index
//!   inside the pack; writers rewrite the `.idx` once the pack's own hash proves that
//!   copy right. Such a pack is never taken for unreferenced.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::codec::{self, Encoding};
use super::encryption::Unauthentic;
use super::object::{self, Compression};
use super::pack::{
    ChunkHasher, ChunkId, Delta, IndexEntry, MAX_DELTA_DEPTH, decode_index, encode_index,
    footer_index, index_in, pack_key,
};
use super::storage::{Storage, TooShort};

/// Where a chunk is: which pack (by position in [`ChunkIndex::packs`]) and where in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: u32,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
    pub delta: Option<Delta>,
}

impl ChunkLocation {
    fn encoding(&self) -> Encoding {
        Encoding {
            compression: self.compression,
            raw_len: self.raw_len,
            delta: self.delta,
        }
    }
}

/// A stored copy of a chunk whose bytes do not decode to the chunk: damage in that copy
/// (a base it reads through is named in an error of its own).
#[derive(Debug, thiserror::Error)]
#[error("chunk {id} in pack {key} is corrupt: its content does not match its checksum")]
pub struct CorruptCopy {
    pub id: ChunkId,
    /// The pack's name (content hash).
    pub pack: String,
    /// The pack's key, for messages.
    pub key: String,
}

/// Every chunk in a repository folder and where it is stored.
#[derive(Default)]
pub struct ChunkIndex {
    pub packs: Vec<String>,
    /// The copy each readable chunk is read from.
    pub chunks: HashMap<ChunkId, ChunkLocation>,
    /// Every other stored copy: second copies of chunks stored twice, and deltas that
    /// cannot be read (their bases are gone, perhaps in an unreadable pack).
    pub other_copies: HashMap<ChunkId, Vec<ChunkLocation>>,
    /// Copies recorded as corrupt.
    pub damaged: HashMap<ChunkId, Vec<ChunkLocation>>,
    /// Packs whose index cannot be read from either copy, with why: their chunks are
    /// unknown, and they are never removed automatically.
    pub unreadable: Vec<(String, String)>,
    /// Packs (by number) read through the index inside them, with why their `.idx` was
    /// not used: missing (a writer died before storing it, or it was lost) or damaged.
    pub index_from_pack: Vec<(u32, String)>,
    /// Recorded corrupt copies by pack name, including records whose pack is gone.
    pub damage_records: BTreeMap<String, BTreeSet<ChunkId>>,
    /// Index files whose pack is gone, with the chunks they name (all missing now).
    pub packs_missing: Vec<(String, Vec<ChunkId>)>,
    /// How the ids of chunks read are checked.
    pub hasher: ChunkHasher,
    /// Delta bases read lately, so a base several deltas share is fetched once.
    bases: BaseCache,
}

/// The plaintext of recently read delta bases, up to [`BaseCache::LIMIT`] bytes; the
/// oldest go first.
#[derive(Default)]
struct BaseCache(Mutex<Bases>);

#[derive(Default)]
struct Bases {
    plain: HashMap<ChunkId, Arc<Vec<u8>>>,
    oldest_first: VecDeque<ChunkId>,
    bytes: usize,
}

impl BaseCache {
    const LIMIT: usize = 64 << 20;

    fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.0.lock().unwrap().plain.get(id).cloned()
    }

    fn put(&self, id: ChunkId, plain: Arc<Vec<u8>>) {
        let mut bases = self.0.lock().unwrap();
        bases.bytes += plain.len();
        match bases.plain.insert(id, plain) {
            Some(replaced) => bases.bytes -= replaced.len(),
            None => bases.oldest_first.push_back(id),
        }
        while bases.bytes > Self::LIMIT
            && let Some(old) = bases.oldest_first.pop_front()
        {
            let freed = bases.plain.remove(&old).map_or(0, |p| p.len());
            bases.bytes -= freed;
        }
    }
}

/// `NAME.damaged`: the chunks whose copies in pack `NAME` do not decode.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DamageRecord {
    chunks: Vec<ChunkId>,
}

/// Where pack indexes are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexReads {
    /// A local copy will do (packs never change once written).
    Cached,
    /// From the repository itself, as `verify` must.
    Fresh,
}

/// What the listing holds for one pack name.
#[derive(Default)]
struct Listed {
    pack_size: Option<u64>,
    idx: bool,
    damaged: bool,
}

/// Whether `name` is a pack name: 64 lowercase hex digits.
fn is_pack_name(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn list_packs(storage: &dyn Storage, prefix: &str) -> Result<BTreeMap<String, Listed>> {
    let mut packs: BTreeMap<String, Listed> = BTreeMap::new();
    for object in storage.list(prefix)? {
        let file = object.key.rsplit('/').next().unwrap_or("");
        let Some((name, ext)) = file.split_once('.').filter(|(n, _)| is_pack_name(n)) else {
            tracing::warn!("ignoring {} in the repository: not a pack", object.key);
            continue;
        };
        let slot = packs.entry(name.to_string()).or_default();
        match ext {
            "pack" => slot.pack_size = Some(object.size),
            "idx" => slot.idx = true,
            "damaged" => slot.damaged = true,
            _ => tracing::warn!("ignoring {} in the repository: not a pack", object.key),
        }
    }
    Ok(packs)
}

/// The entries of one pack: from its `.idx`, else from the copy inside the pack (with
/// why the `.idx` was not used).
enum PackIndex {
    FromIdx(Vec<IndexEntry>),
    FromPack(Vec<IndexEntry>, String),
    /// The `.idx` is readable, the pack itself gone.
    PackMissing(Vec<IndexEntry>),
    Unreadable(String),
}

fn read_pack_index(
    storage: &dyn Storage,
    prefix: &str,
    name: &str,
    l: &Listed,
    reads: IndexReads,
) -> PackIndex {
    let key = pack_key(prefix, name, "idx");
    let decoded = |bytes: Result<Option<Vec<u8>>>| {
        bytes
            .and_then(|bytes| bytes.context("it vanished while being read"))
            .and_then(|bytes| object::decode(&bytes))
            .and_then(|plain| decode_index(&plain))
    };
    let from_idx = l.idx.then(|| match reads {
        IndexReads::Fresh => decoded(storage.get(&key)),
        // A local copy that does not decode is fetched again, replacing it.
        IndexReads::Cached => decoded(storage.get_immutable(&key))
            .or_else(|_| decoded(storage.refresh_immutable(&key))),
    });
    let Some(size) = l.pack_size else {
        return match from_idx {
            Some(Ok(entries)) => PackIndex::PackMissing(entries),
            Some(Err(e)) => PackIndex::Unreadable(format!("{e:#}")),
            None => PackIndex::Unreadable("it is gone".into()),
        };
    };
    let why = match from_idx {
        Some(Ok(entries)) => return PackIndex::FromIdx(entries),
        Some(Err(e)) => format!("its index file is damaged ({e:#})"),
        None => "its index file is missing".to_string(),
    };
    match footer_index(storage, &pack_key(prefix, name, "pack"), size) {
        Ok(entries) => PackIndex::FromPack(entries, why),
        Err(e) => PackIndex::Unreadable(format!("{why}; the copy inside the pack: {e:#}")),
    }
}

/// The indexes of the `listed` packs, in their order, read `storage.parallel_gets()`
/// at a time (on object storage each is a round trip).
fn read_pack_indexes(
    storage: &dyn Storage,
    prefix: &str,
    listed: &[(&String, &Listed)],
    reads: IndexReads,
) -> Vec<PackIndex> {
    let next = AtomicUsize::new(0);
    let read: Vec<Mutex<Option<PackIndex>>> = listed.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..storage.parallel_gets().clamp(1, listed.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, l)) = listed.get(i) else {
                        break;
                    };
                    *read[i].lock().unwrap() =
                        Some(read_pack_index(storage, prefix, name, l, reads));
                }
            });
        }
    });
    read.into_iter()
        .map(|slot| slot.into_inner().unwrap().expect("every pack was read"))
        .collect()
}

fn read_damage_record(storage: &dyn Storage, key: &str) -> Result<BTreeSet<ChunkId>> {
    let bytes = storage.get(key)?.context("it vanished while being read")?;
    let record: DamageRecord = serde_json::from_slice(&object::decode(&bytes)?)?;
    Ok(record.chunks.into_iter().collect())
}

impl ChunkIndex {
    /// Reads every pack index under `prefix`, and the damage records. One bad object
    /// never blocks backups or restores that do not need it: a pack whose index cannot
    /// be read is set aside in `unreadable`.
    pub fn load(
        storage: &dyn Storage,
        prefix: &str,
        hasher: ChunkHasher,
        reads: IndexReads,
    ) -> Result<ChunkIndex> {
        let listed = list_packs(storage, prefix)?;
        let mut index = ChunkIndex {
            hasher,
            ..ChunkIndex::default()
        };
        for name in listed.iter().filter(|(_, l)| l.damaged).map(|(n, _)| n) {
            let key = pack_key(prefix, name, "damaged");
            match read_damage_record(storage, &key) {
                Ok(ids) => {
                    index.damage_records.insert(name.clone(), ids);
                }
                // Without it, the damage is found again by the next verify.
                Err(e) => tracing::warn!("ignoring damage record {key}: {e:#}"),
            }
        }
        // Deltas are placed once every whole chunk is known.
        let mut deltas: HashMap<ChunkId, Vec<ChunkLocation>> = HashMap::new();
        // (A name with only a damage record left has no index to read.)
        let with_index: Vec<(&String, &Listed)> = listed
            .iter()
            .filter(|(_, l)| l.pack_size.is_some() || l.idx)
            .collect();
        let read = read_pack_indexes(storage, prefix, &with_index, reads);
        for ((name, _), pack_index) in with_index.into_iter().zip(read) {
            let entries = match pack_index {
                PackIndex::FromIdx(entries) => entries,
                PackIndex::FromPack(entries, why) => {
                    tracing::warn!("pack {name}: {why}; using the copy of its index inside it");
                    index.index_from_pack.push((index.packs.len() as u32, why));
                    entries
                }
                PackIndex::PackMissing(entries) => {
                    tracing::warn!("pack {name} is missing; its index file is still there");
                    let ids = entries.into_iter().map(|e| e.id).collect();
                    index.packs_missing.push((name.clone(), ids));
                    continue;
                }
                PackIndex::Unreadable(why) => {
                    tracing::warn!(
                        "pack {name} has no readable index ({why}); its chunks are treated as missing"
                    );
                    index.unreadable.push((name.clone(), why));
                    continue;
                }
            };
            let pack = index.packs.len() as u32;
            index.packs.push(name.clone());
            let recorded = index.damage_records.get(name);
            for e in entries {
                let loc = ChunkLocation {
                    pack,
                    offset: e.offset,
                    stored_len: e.stored_len,
                    raw_len: e.raw_len,
                    compression: e.compression,
                    delta: e.delta,
                };
                if recorded.is_some_and(|r| r.contains(&e.id)) {
                    index.damaged.entry(e.id).or_default().push(loc);
                } else if loc.delta.is_some() {
                    deltas.entry(e.id).or_default().push(loc);
                } else if let Entry::Vacant(v) = index.chunks.entry(e.id) {
                    v.insert(loc);
                } else {
                    index.other_copies.entry(e.id).or_default().push(loc);
                }
            }
        }
        index.place_deltas(deltas);
        Ok(index)
    }

    /// Chooses the copy each delta is read from: the one with the shortest chain of
    /// bases as they are now (copies of a base may differ), recording that true depth.
    /// A chunk also stored whole is read whole. A delta whose bases are gone (a lost
    /// pack) or whose chain is too long cannot be read: it stays out of `chunks`, so it
    /// is not deduplicated against, and a backup that refers to it finds it missing.
    fn place_deltas(&mut self, mut pending: HashMap<ChunkId, Vec<ChunkLocation>>) {
        pending.retain(|id, copies| {
            let whole = self.chunks.contains_key(id);
            if whole {
                self.other_copies.entry(*id).or_default().append(copies);
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
                self.other_copies.entry(id).or_default().append(&mut copies);
            }
        }
        if !pending.is_empty() {
            tracing::info!(
                "{} stored deltas have no base left and are ignored",
                pending.len()
            );
        }
        for (id, mut copies) in pending {
            self.other_copies.entry(id).or_default().append(&mut copies);
        }
        self.other_copies.retain(|_, copies| !copies.is_empty());
    }

    pub fn pack_key(&self, prefix: &str, pack: u32) -> String {
        pack_key(prefix, &self.packs[pack as usize], "pack")
    }

    /// The name (content hash) of a pack.
    pub fn pack_name(&self, pack: u32) -> &str {
        &self.packs[pack as usize]
    }

    /// Every stored copy of `id`: the chosen one, the others, the recorded corrupt ones.
    pub fn copies(&self, id: &ChunkId) -> impl Iterator<Item = &ChunkLocation> {
        let none: &[ChunkLocation] = &[];
        self.chunks.get(id).into_iter().chain(
            [&self.other_copies, &self.damaged]
                .into_iter()
                .flat_map(move |m| m.get(id).map_or(none, Vec::as_slice)),
        )
    }

    /// Reads, decompresses and checks one chunk (and, for a delta, its bases), trying
    /// every copy until one is right. The error is the first copy's.
    pub fn read(&self, storage: &dyn Storage, prefix: &str, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_any(storage, prefix, id, MAX_DELTA_DEPTH + 1)
    }

    fn read_any(
        &self,
        storage: &dyn Storage,
        prefix: &str,
        id: &ChunkId,
        depth_left: u8,
    ) -> Result<Vec<u8>> {
        let mut first_error = None;
        for loc in self.copies(id) {
            match self.read_copy(storage, prefix, id, loc, None, depth_left) {
                Ok(plain) => return Ok(plain),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error
            .unwrap_or_else(|| anyhow::anyhow!("chunk {id} is missing from the repository")))
    }

    /// Reads one copy of `id` (its stored bytes `payload`, if already at hand) and checks
    /// it. A delta is decoded through its base as chosen, unchecked; only if that does
    /// not yield the chunk is the base read with every check and every copy, which tells
    /// a damaged base (its own error) from a damaged delta ([`CorruptCopy`] of this one).
    pub fn read_copy(
        &self,
        storage: &dyn Storage,
        prefix: &str,
        id: &ChunkId,
        loc: &ChunkLocation,
        payload: Option<&[u8]>,
        depth_left: u8,
    ) -> Result<Vec<u8>> {
        let key = self.pack_key(prefix, loc.pack);
        let corrupt = || CorruptCopy {
            id: *id,
            pack: self.pack_name(loc.pack).to_string(),
            key: key.clone(),
        };
        let fetched;
        let payload = match payload {
            Some(p) => p,
            None => {
                fetched = storage
                    .get_range(&key, loc.offset, loc.stored_len as usize)
                    .map_err(|e| {
                        let damaged = e.downcast_ref::<TooShort>().is_some()
                            || e.downcast_ref::<Unauthentic>().is_some();
                        if damaged {
                            anyhow::Error::new(corrupt())
                        } else {
                            e
                        }
                    })?;
                &fetched
            }
        };
        let matches = |plain: &[u8]| self.hasher.id(plain) == *id;
        let Some(delta) = loc.delta else {
            return match codec::decode(loc.encoding(), payload, None) {
                Ok(plain) if matches(&plain) => Ok(plain),
                _ => Err(corrupt().into()),
            };
        };
        if depth_left == 0 {
            bail!("chunk {id} sits on a delta chain that is too long or loops");
        }
        let fast = self
            .base(storage, prefix, &delta.base, depth_left - 1)
            .and_then(|base| codec::decode(loc.encoding(), payload, Some(&base)));
        if let Ok(plain) = fast
            && matches(&plain)
        {
            return Ok(plain);
        }
        let base = self
            .read_any(storage, prefix, &delta.base, depth_left - 1)
            .with_context(|| format!("cannot read the base of chunk {id}"))?;
        // The base as checked replaces what the fast path read (and cached).
        self.bases.put(delta.base, Arc::new(base.clone()));
        match codec::decode(loc.encoding(), payload, Some(&base)) {
            Ok(plain) if matches(&plain) => Ok(plain),
            _ => Err(corrupt().into()),
        }
    }

    /// A chunk's plaintext through its chosen copies, without the final hash check: a
    /// base need not be hashed on its own, since a wrong base cannot yield a chunk that
    /// matches its id.
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
        let payload = storage.get_range(
            &self.pack_key(prefix, loc.pack),
            loc.offset,
            loc.stored_len as usize,
        )?;
        let base = match loc.delta {
            None => None,
            Some(_) if depth_left == 0 => {
                bail!("chunk {id} sits on a delta chain that is too long or loops")
            }
            Some(d) => Some(self.base(storage, prefix, &d.base, depth_left - 1)?),
        };
        codec::decode(
            loc.encoding(),
            &payload,
            base.as_ref().map(|b| b.as_slice()),
        )
    }

    /// A delta base's plaintext, unchecked: from the cache of bases read lately, else
    /// read and kept there.
    fn base(
        &self,
        storage: &dyn Storage,
        prefix: &str,
        id: &ChunkId,
        depth_left: u8,
    ) -> Result<Arc<Vec<u8>>> {
        if let Some(plain) = self.bases.get(id) {
            return Ok(plain);
        }
        let plain = Arc::new(self.read_unchecked(storage, prefix, id, depth_left)?);
        self.bases.put(*id, plain.clone());
        Ok(plain)
    }

    /// The chosen copies in each pack, by pack number.
    pub fn by_pack(&self) -> Vec<Vec<(ChunkId, ChunkLocation)>> {
        let mut out = vec![Vec::new(); self.packs.len()];
        for (id, loc) in &self.chunks {
            out[loc.pack as usize].push((*id, *loc));
        }
        out
    }

    /// Every copy in each pack (chosen, other and recorded corrupt), by pack number.
    pub fn all_copies_by_pack(&self) -> Vec<Vec<(ChunkId, ChunkLocation)>> {
        let mut out = self.by_pack();
        for map in [&self.other_copies, &self.damaged] {
            for (id, copies) in map {
                for loc in copies {
                    out[loc.pack as usize].push((*id, *loc));
                }
            }
        }
        out
    }

    /// Rewrites the `.idx` of every pack read through the index inside it, once the
    /// pack's bytes hash to its name (which proves that index is the one written). For
    /// writers only (backup, expire), which no collection runs beside. Returns the
    /// packs mended.
    pub fn rewrite_indexes(&self, storage: &dyn Storage, prefix: &str) -> Result<Vec<String>> {
        let mut mended = Vec::new();
        for (pack, _) in &self.index_from_pack {
            let name = self.pack_name(*pack);
            let Some(bytes) = storage.get(&pack_key(prefix, name, "pack"))? else {
                continue;
            };
            if self.hasher.pack_name(&bytes) != name {
                tracing::warn!("pack {name} does not match its name; its index is not rewritten");
                continue;
            }
            let entries = index_in(&bytes)?;
            storage.put(
                &pack_key(prefix, name, "idx"),
                &object::encode(&encode_index(&entries), 3)?,
            )?;
            mended.push(name.to_string());
        }
        Ok(mended)
    }
}

/// Records the chunks whose copies in pack `name` are corrupt (replacing the record;
/// none removes it).
pub fn write_damage_record(
    storage: &dyn Storage,
    prefix: &str,
    name: &str,
    chunks: &BTreeSet<ChunkId>,
) -> Result<()> {
    let key = pack_key(prefix, name, "damaged");
    if chunks.is_empty() {
        return storage.delete(&key);
    }
    let record = DamageRecord {
        chunks: chunks.iter().copied().collect(),
    };
    storage.put(&key, &object::encode(&serde_json::to_vec(&record)?, 0)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The index of the packs under `c/packs`, read from the storage itself.
    fn load(storage: &dyn Storage) -> ChunkIndex {
        ChunkIndex::load(
            storage,
            "c/packs",
            ChunkHasher::default(),
            IndexReads::Fresh,
        )
        .unwrap()
    }
    use crate::repo::codec::encode_delta;
    use crate::repo::pack::{DeltaMethod, PackWriter};
    use crate::repo::storage::LocalStorage;

    #[test]
    fn chunks_round_trip_through_packs_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let mut writer = PackWriter::new(
            storage.clone(),
            "c/packs".into(),
            1000,
            ChunkHasher::default(),
        );
        let chunks: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 300 + i as usize]).collect();
        for c in &chunks {
            let (comp, payload) = object::compress(c, 3).unwrap();
            writer
                .add(ChunkId::of(c), c.len(), comp, None, &payload)
                .unwrap();
        }
        writer.flush().unwrap();
        let index = load(&*storage);
        assert_eq!(index.chunks.len(), 10);
        // A delta of the first chunk reads back through its base.
        let mut changed = chunks[0].clone();
        changed[7] ^= 0xFF;
        let base_plain = index
            .read(&*storage, "c/packs", &ChunkId::of(&chunks[0]))
            .unwrap();
        changed.push(9); // longer than its base
        let delta_len = store_delta(&mut writer, &changed, &base_plain);
        assert!(
            delta_len < 40,
            "a one-byte change costs a few bytes: {delta_len}"
        );
        let index = load(&*storage);
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
        let index = load(&*storage);
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
        let index = load(&*storage);
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

    /// Stores `data` as an XOR delta of `base` in a pack of its own; returns the size of
    /// the delta's payload.
    fn store_delta(writer: &mut PackWriter, data: &[u8], base: &[u8]) -> usize {
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
        payload.len()
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
        let mut writer = PackWriter::new(
            storage.clone(),
            "c/packs".into(),
            1 << 20,
            ChunkHasher::default(),
        );
        let (gone, kept) = (vec![1u8; 4096], vec![2u8; 4096]);
        let mut chunk = kept.clone();
        chunk[100] = 7;
        // Two concurrent backups stored `chunk` against different bases; collection
        // then removed one base (it never was stored here).
        store_delta(&mut writer, &chunk, &gone);
        store_whole(&mut writer, &kept);
        store_delta(&mut writer, &chunk, &kept);
        let index = load(&*storage);
        let id = ChunkId::of(&chunk);
        assert_eq!(index.read(&*storage, "c/packs", &id).unwrap(), chunk);
        // Stored whole as well: read whole, whatever the order of the packs.
        store_whole(&mut writer, &chunk);
        let index = load(&*storage);
        assert_eq!(index.chunks[&id].delta, None);
        // Only through a missing base: the chunk is unknown, so it is stored again.
        let mut lost = gone.clone();
        lost[5] = 9;
        store_delta(&mut writer, &lost, &gone);
        let index = load(&*storage);
        assert!(!index.chunks.contains_key(&ChunkId::of(&lost)));
    }

    /// Flips a byte in the middle of the chosen copy of `id`.
    fn damage_first_copy(dir: &std::path::Path, index: &ChunkIndex, id: &ChunkId) {
        let loc = index.chunks[id];
        let path = dir.join(index.pack_key("c/packs", loc.pack));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + loc.stored_len as usize / 2] ^= 1;
        std::fs::write(&path, bytes).unwrap();
    }

    #[test]
    fn a_damaged_copy_gives_way_to_a_good_one_and_its_record_demotes_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let mut writer = PackWriter::new(
            storage.clone(),
            "c/packs".into(),
            1 << 20,
            ChunkHasher::default(),
        );
        let chunk: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = ChunkId::of(&chunk);
        store_whole(&mut writer, &chunk);
        let index = load(&*storage);
        damage_first_copy(dir.path(), &index, &id);
        let err = index.read(&*storage, "c/packs", &id).unwrap_err();
        let corrupt = err.downcast_ref::<CorruptCopy>().unwrap();
        assert_eq!(
            (corrupt.id, corrupt.pack.as_str()),
            (id, index.packs[0].as_str())
        );
        // A delta on the damaged base names the base, not itself.
        let mut changed = chunk.clone();
        changed[10] ^= 0x55;
        store_delta(&mut writer, &changed, &chunk);
        let index = load(&*storage);
        let err = index
            .read(&*storage, "c/packs", &ChunkId::of(&changed))
            .unwrap_err();
        let culprit = err
            .chain()
            .find_map(|c| c.downcast_ref::<CorruptCopy>())
            .unwrap();
        assert_eq!(culprit.id, id);
        // Stored again beside other data (a full backup): the good copy serves the chunk
        // and its delta.
        writer
            .add(id, chunk.len(), Compression::None, None, &chunk)
            .unwrap();
        store_whole(&mut writer, b"other data");
        let index = load(&*storage);
        assert_eq!(index.read(&*storage, "c/packs", &id).unwrap(), chunk);
        assert_eq!(
            index
                .read(&*storage, "c/packs", &ChunkId::of(&changed))
                .unwrap(),
            changed
        );
        // Recorded as damaged, a copy is never the chosen one.
        let bad_pack: Vec<String> = index
            .copies(&id)
            .map(|l| index.pack_name(l.pack).to_string())
            .collect();
        assert_eq!(bad_pack.len(), 2);
        for pack in &bad_pack {
            let mut only: BTreeSet<ChunkId> = BTreeSet::new();
            only.insert(id);
            write_damage_record(&*storage, "c/packs", pack, &only).unwrap();
            let index = load(&*storage);
            assert_ne!(index.pack_name(index.chunks[&id].pack), pack);
            assert_eq!(index.damaged[&id].len(), 1);
            write_damage_record(&*storage, "c/packs", pack, &BTreeSet::new()).unwrap();
        }
    }

    #[test]
    fn a_damaged_pack_is_replaced_by_a_pack_of_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let mut writer = PackWriter::new(
            storage.clone(),
            "c/packs".into(),
            1 << 20,
            ChunkHasher::default(),
        );
        let chunk = vec![9u8; 30000];
        let id = ChunkId::of(&chunk);
        store_whole(&mut writer, &chunk);
        let index = load(&*storage);
        damage_first_copy(dir.path(), &index, &id);
        assert!(index.read(&*storage, "c/packs", &id).is_err());
        store_whole(&mut writer, &chunk); // the very same pack bytes, hence name
        assert_eq!(index.read(&*storage, "c/packs", &id).unwrap(), chunk);
    }

    #[test]
    fn a_pack_without_its_index_file_is_read_through_its_own_and_mended() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let mut writer = PackWriter::new(
            storage.clone(),
            "c/packs".into(),
            1 << 20,
            ChunkHasher::default(),
        );
        let chunk = vec![3u8; 5000];
        store_whole(&mut writer, &chunk);
        let name = writer.stored[0].clone();
        let idx = dir.path().join(pack_key("c/packs", &name, "idx"));
        std::fs::remove_file(&idx).unwrap();
        let index = load(&*storage);
        assert_eq!(
            index
                .read(&*storage, "c/packs", &ChunkId::of(&chunk))
                .unwrap(),
            chunk
        );
        assert_eq!(index.index_from_pack.len(), 1);
        assert!(index.index_from_pack[0].1.contains("missing"));
        assert_eq!(index.rewrite_indexes(&*storage, "c/packs").unwrap(), [name]);
        assert!(idx.exists());
        assert!(load(&*storage).index_from_pack.is_empty());
    }
}
