//! The chunk store: the one way bytes go between plain chunks and the repository's
//! packs. Backup stores through a [`ChunkWriter`] (deduplication, delta or whole,
//! compression, a pack-writer thread); restore reads through [`ChunkStore::read`];
//! verify and expire's repacking check and copy stored copies through it; and it owns
//! the pack, index and damage-record objects of the layout.
//!
//! Invariants: a chunk is referred to only once a good copy of it is stored or known;
//! a delta is made only against a base read back with every check; a copy found
//! corrupt is recorded after the copy stored instead is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Result, anyhow, bail};
use crossbeam_channel::{Sender, bounded};

use super::ClusterRepo;
use super::codec;
use super::index::{ChunkIndex, ChunkLocation, CorruptCopy, IndexReads, write_damage_record};
use super::object::Compression;
use super::pack::{ChunkId, Delta, DeltaMethod, MAX_DELTA_DEPTH, PACK_SIZE, PackWriter, pack_key};
use super::storage::{ObjectMeta, Storage};

/// Bounds of content-defined chunks of streams: an average of 256 KiB, as the
/// fixed chunks of data files, so the index costs the same per byte.
const STREAM_CHUNK_MIN: usize = 64 * 1024;
const STREAM_CHUNK_AVG: usize = 256 * 1024;
const STREAM_CHUNK_MAX: usize = 1024 * 1024;

/// The stored chunks of one cluster, with the index of every copy.
pub struct ChunkStore {
    storage: Arc<dyn Storage>,
    prefix: String,
    pub index: ChunkIndex,
}

impl ChunkStore {
    /// Loads the index of every stored copy (pack indexes from the local cache where
    /// it has them, see `storage/cache.rs`).
    pub fn open(repo: &ClusterRepo) -> Result<ChunkStore> {
        ChunkStore::open_reading(repo, IndexReads::Cached)
    }

    /// Loads the index of every stored copy, every pack index from the repository
    /// itself: `verify` checks what is stored, not a local copy.
    pub fn open_fresh(repo: &ClusterRepo) -> Result<ChunkStore> {
        ChunkStore::open_reading(repo, IndexReads::Fresh)
    }

    fn open_reading(repo: &ClusterRepo, reads: IndexReads) -> Result<ChunkStore> {
        let prefix = repo.packs_prefix();
        let index = ChunkIndex::load(&*repo.storage, &prefix, repo.hasher, reads)?;
        Ok(ChunkStore {
            storage: repo.storage.clone(),
            prefix,
            index,
        })
    }

    /// How many chunks are best read at once: many on object storage, where each read
    /// waits on a round trip.
    pub fn parallel_reads(&self) -> usize {
        self.storage.parallel_gets()
    }

    /// Chunk `id`, from any copy that reads back right.
    pub fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.index.read(&*self.storage, &self.prefix, id)
    }

    /// Chunk `id`, which must be `len` bytes long (as its manifest says).
    pub fn read_exact(&self, id: &ChunkId, len: u32) -> Result<Vec<u8>> {
        let data = self.read(id)?;
        if data.len() != len as usize {
            bail!(
                "chunk {id} holds {} bytes where {len} were recorded; run `pgkeep verify`",
                data.len()
            );
        }
        Ok(data)
    }

    /// Checks copy `loc` of `id` whose stored bytes are `payload`: it must decode, through
    /// its bases, to the chunk.
    pub fn check_copy(&self, id: &ChunkId, loc: &ChunkLocation, payload: &[u8]) -> Result<Vec<u8>> {
        self.index.read_copy(
            &*self.storage,
            &self.prefix,
            id,
            loc,
            Some(payload),
            MAX_DELTA_DEPTH + 1,
        )
    }

    /// Copy `loc` of `id`, read from its own range of the pack and checked.
    pub fn read_copy(&self, id: &ChunkId, loc: &ChunkLocation) -> Result<Vec<u8>> {
        self.index.read_copy(
            &*self.storage,
            &self.prefix,
            id,
            loc,
            None,
            MAX_DELTA_DEPTH + 1,
        )
    }

    /// The stored bytes of copy `loc`.
    fn payload(&self, loc: &ChunkLocation) -> Result<Vec<u8>> {
        self.storage.get_range(
            &self.pack_key(loc.pack),
            loc.offset,
            loc.stored_len as usize,
        )
    }

    /// The whole of pack `pack`, `None` if it is gone.
    pub fn pack_bytes(&self, pack: u32) -> Result<Option<Vec<u8>>> {
        self.storage.get(&self.pack_key(pack))
    }

    /// The key of pack `pack`, for messages.
    pub fn pack_key(&self, pack: u32) -> String {
        self.index.pack_key(&self.prefix, pack)
    }

    /// Every pack object stored (`.pack` files only), by name, with its size.
    pub fn pack_sizes(&self) -> Result<BTreeMap<String, u64>> {
        Ok(self
            .storage
            .list(&self.prefix)?
            .into_iter()
            .filter_map(|ObjectMeta { key, size, .. }| {
                let name = key.strip_suffix(".pack")?.rsplit('/').next()?.to_string();
                Some((name, size))
            })
            .collect())
    }

    /// Writes again the `.idx` files that are missing or damaged, from the index inside
    /// each pack; returns the packs whose file was written.
    pub fn write_missing_indexes(&self) -> Result<Vec<String>> {
        self.index.rewrite_indexes(&*self.storage, &self.prefix)
    }

    /// Replaces pack `name`'s damage record with `ids` (none: the record goes).
    pub fn set_damage(&self, name: &str, ids: &BTreeSet<ChunkId>) -> Result<()> {
        write_damage_record(&*self.storage, &self.prefix, name, ids)
    }

    /// Adds copies found corrupt, (pack name, chunk), to their packs' damage records.
    pub fn add_damage(&self, corrupt: &[(String, ChunkId)]) -> Result<()> {
        let mut by_pack: BTreeMap<&str, BTreeSet<ChunkId>> = BTreeMap::new();
        for (pack, id) in corrupt {
            by_pack
                .entry(pack)
                .or_insert_with(|| {
                    self.index
                        .damage_records
                        .get(pack)
                        .cloned()
                        .unwrap_or_default()
                })
                .insert(*id);
        }
        for (pack, ids) in by_pack {
            self.set_damage(pack, &ids)?;
        }
        Ok(())
    }

    /// Removes pack `name`: its index file first, so a crash never leaves an index file
    /// naming a pack that is gone; then the pack and its damage record.
    pub fn remove_pack(&self, name: &str) -> Result<()> {
        self.storage.delete(&pack_key(&self.prefix, name, "idx"))?;
        self.storage.delete(&pack_key(&self.prefix, name, "pack"))?;
        self.remove_damage_record(name)
    }

    /// Removes the index file (and damage record) left by a pack that is gone.
    pub fn remove_orphan_index(&self, name: &str) -> Result<()> {
        self.storage.delete(&pack_key(&self.prefix, name, "idx"))?;
        self.remove_damage_record(name)
    }

    pub fn remove_damage_record(&self, name: &str) -> Result<()> {
        self.storage
            .delete(&pack_key(&self.prefix, name, "damaged"))
    }

    /// Copies stored copy `loc` of `id` as it is into `packs` (repacking), once it reads
    /// back right.
    pub fn copy_into(
        &self,
        packs: &mut PackWriter,
        id: &ChunkId,
        loc: &ChunkLocation,
    ) -> Result<()> {
        let payload = self.payload(loc)?;
        self.check_copy(id, loc, &payload)?;
        packs.add(
            *id,
            loc.raw_len as usize,
            loc.compression,
            loc.delta,
            &payload,
        )
    }

    /// A writer of stored copies as they are (for repacking).
    pub fn pack_writer(&self) -> PackWriter {
        PackWriter::new(
            self.storage.clone(),
            self.prefix.clone(),
            PACK_SIZE,
            self.index.hasher,
        )
    }

    /// A writer of new chunks compressed at `level`; with `check_stored`, every stored
    /// copy it would reuse is read back first.
    pub fn writer(&self, level: i32, check_stored: bool) -> ChunkWriter<'_> {
        let (tx, rx) = bounded::<Blob>(64);
        let mut packs = self.pack_writer();
        let packer = std::thread::spawn(move || -> Result<PackWriter> {
            for blob in rx {
                packs.add(
                    blob.id,
                    blob.raw_len,
                    blob.compression,
                    blob.delta,
                    &blob.payload,
                )?;
            }
            packs.flush()?;
            Ok(packs)
        });
        ChunkWriter {
            store: self,
            known: Mutex::new(
                self.index
                    .chunks
                    .keys()
                    .map(|id| (*id, Known::Stored))
                    .collect(),
            ),
            tx,
            packer,
            level,
            check_stored,
            corrupt: Mutex::new(Vec::new()),
            stored_again: AtomicUsize::new(0),
        }
    }
}

/// A compressed chunk on its way to the pack writer.
struct Blob {
    id: ChunkId,
    raw_len: usize,
    compression: Compression,
    delta: Option<Delta>,
    payload: Vec<u8>,
}

/// What a backup knows of a chunk it meets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    /// The repository has a copy (not yet read back).
    Stored,
    /// The repository's copy was read back in this run and is right.
    Proven,
    /// This backup stores it.
    New,
}

/// Where new chunks go: skips chunks the repository (or this writer) already has, and
/// stores a changed chunk as a delta of the chunk it replaces where that is smaller.
/// One thread fills and stores packs; [`ChunkWriter::finish`] waits for it.
///
/// With `check_stored` (a full backup) no stored copy is trusted that has not been read
/// back in this run: a copy that rotted is recorded as corrupt and the chunk stored
/// again, so a full backup heals every damaged chunk whose data the database still holds.
pub struct ChunkWriter<'s> {
    store: &'s ChunkStore,
    known: Mutex<HashMap<ChunkId, Known>>,
    tx: Sender<Blob>,
    packer: JoinHandle<Result<PackWriter>>,
    level: i32,
    check_stored: bool,
    /// Copies found corrupt while read back: (pack name, chunk).
    corrupt: Mutex<Vec<(String, ChunkId)>>,
    /// Chunks stored again because every stored copy was corrupt.
    stored_again: AtomicUsize,
}

/// What a [`ChunkWriter`] stored.
pub struct Written {
    /// Bytes of packs stored (chunk payloads plus indexes).
    pub stored_bytes: u64,
    /// Chunks stored again because every stored copy was corrupt.
    pub stored_again: usize,
}

impl ChunkWriter<'_> {
    /// Whether this call must store `id`: neither this backup nor the repository has it,
    /// or (with `check_stored`) the stored copy does not read back right.
    fn must_store(&self, id: ChunkId) -> Result<bool> {
        let state = self.known.lock().unwrap().get(&id).copied();
        match state {
            Some(Known::New | Known::Proven) => return Ok(false),
            Some(Known::Stored) if !self.check_stored => return Ok(false),
            _ => {}
        }
        let good = state.is_some() && self.read_back(&id)?;
        let mut known = self.known.lock().unwrap();
        if good {
            known.insert(id, Known::Proven);
            return Ok(false);
        }
        // Another worker may have stored it meanwhile.
        let first = known.insert(id, Known::New) != Some(Known::New);
        if first && (state.is_some() || self.store.index.damaged.contains_key(&id)) {
            self.stored_again.fetch_add(1, Ordering::Relaxed);
        }
        Ok(first)
    }

    /// Reads the stored copy of `id`: whether it is good. A corrupt copy is remembered
    /// for its record; a failure to read (storage unreachable) is the backup's error, not
    /// a reason to store the chunk again.
    fn read_back(&self, id: &ChunkId) -> Result<bool> {
        let Err(e) = self.store.read(id) else {
            return Ok(true);
        };
        if !self.remember_corrupt(&e) {
            return Err(e);
        }
        tracing::warn!("{e:#}; storing it again");
        Ok(false)
    }

    /// Remembers the corrupt copy a read failed on, for its damage record; whether the
    /// failure was one.
    fn remember_corrupt(&self, e: &anyhow::Error) -> bool {
        let Some(c) = e.chain().find_map(|c| c.downcast_ref::<CorruptCopy>()) else {
            return false;
        };
        self.corrupt.lock().unwrap().push((c.pack.clone(), c.id));
        true
    }

    /// Stores a chunk unless the repository has it; `base` is the parent's chunk at the
    /// same place, if any. Returns the id and whether the chunk was new.
    pub fn store(&self, data: &[u8], base: Option<ChunkId>) -> Result<(ChunkId, bool)> {
        self.store_over(data, base.map(|id| (id, None)))
    }

    /// As [`ChunkWriter::store`], with the base's plaintext already read (every check
    /// passed), so that it is not read twice.
    pub fn store_over_read(
        &self,
        data: &[u8],
        base: ChunkId,
        plain: Vec<u8>,
    ) -> Result<(ChunkId, bool)> {
        self.store_over(data, Some((base, Some(plain))))
    }

    fn store_over(
        &self,
        data: &[u8],
        base: Option<(ChunkId, Option<Vec<u8>>)>,
    ) -> Result<(ChunkId, bool)> {
        let id = self.store.index.hasher.id(data);
        let new = self.must_store(id)?;
        if new {
            let base = self.delta_base(base);
            let encoded = codec::encode(data, base.as_ref().map(|(_, b)| &b[..]), self.level)?;
            self.tx
                .send(Blob {
                    id,
                    raw_len: data.len(),
                    compression: encoded.compression,
                    delta: base.map(|(d, _)| d).filter(|_| encoded.as_delta),
                    payload: encoded.payload,
                })
                .map_err(|_| anyhow!("the pack writer stopped"))?;
        }
        Ok((id, new))
    }

    /// Stores a stream (a dump file) cut at content-defined boundaries, so that bytes
    /// inserted or removed move only the chunks around them: an unchanged stretch of a
    /// stream is the same chunks wherever it now starts. Returns the chunks in order,
    /// each with its length.
    pub fn store_stream(&self, source: impl std::io::Read) -> Result<Vec<(ChunkId, u32)>> {
        let mut chunks = Vec::new();
        for chunk in fastcdc::v2020::StreamCDC::new(
            source,
            STREAM_CHUNK_MIN,
            STREAM_CHUNK_AVG,
            STREAM_CHUNK_MAX,
        ) {
            let chunk = chunk.map_err(|e| anyhow!("cannot read the stream to store: {e}"))?;
            let (id, _) = self.store(&chunk.data, None)?;
            chunks.push((id, chunk.length as u32));
        }
        Ok(chunks)
    }

    /// The plaintext of a stored chunk, every check passed (a parent's chunk that an
    /// incremental stream patches).
    pub fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.store.read(id)
    }

    /// Whether the repository holds `id` readably. Data taken from the parent unread
    /// must pass this: a chunk lost since (a damaged pack) is read again from the data
    /// directory instead of being referred to by one more backup.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.store.index.chunks.contains_key(id)
    }

    /// The delta a chunk replacing `base` would be stored as, with the base's plaintext;
    /// none if there is no base, the chain would grow too long, or the base cannot be
    /// read (then the chunk is stored whole). The base is read with every check: a delta
    /// of a base copy that rotted would decode only through that very copy, and so break
    /// once a good copy of the base replaces it.
    fn delta_base(&self, base: Option<(ChunkId, Option<Vec<u8>>)>) -> Option<(Delta, Vec<u8>)> {
        let (base, known_plain) = base?;
        let depth = self
            .store
            .index
            .chunks
            .get(&base)?
            .delta
            .map_or(0, |d| d.depth)
            + 1;
        if depth > MAX_DELTA_DEPTH || self.level == 0 {
            return None;
        }
        let read = known_plain.map_or_else(|| self.store.read(&base), Ok);
        let base_plain = match read {
            Ok(plain) => plain,
            Err(e) => {
                tracing::warn!("{e:#}; storing the chunk whole instead of as a delta");
                self.remember_corrupt(&e);
                return None;
            }
        };
        let delta = Delta {
            base,
            depth,
            method: DeltaMethod::Xor,
        };
        Some((delta, base_plain))
    }

    /// Waits until every chunk is stored, then records the corrupt copies met on the way
    /// (once the good copies stored instead are durable).
    pub fn finish(self) -> Result<Written> {
        let ChunkWriter {
            store,
            tx,
            packer,
            corrupt,
            stored_again,
            ..
        } = self;
        drop(tx); // the packer finishes once the channel is closed
        let packer = packer
            .join()
            .map_err(|_| anyhow!("the pack writer panicked"))??;
        store.add_damage(&corrupt.into_inner().unwrap())?;
        Ok(Written {
            stored_bytes: packer.stored_bytes,
            stored_again: stored_again.into_inner(),
        })
    }
}
