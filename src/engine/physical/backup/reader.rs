//! Reading one file into chunks: page checks, reuse of data proven unchanged, hashing,
//! compression, and handing new chunks to the pack writer.

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow};
use crossbeam_channel::Sender;
use indicatif::ProgressBar;

use super::CHUNK_SIZE;
use super::changes::ChangedBlocks;
use super::parent::Parent;
use crate::engine::physical::walk::SourceFile;
use crate::engine::stopped;
use crate::format::lsn::Lsn;
use crate::format::page::{self, BLOCKS_PER_SEGMENT, PAGE_SIZE};
use crate::repo::index::{ChunkIndex, CorruptCopy};
use crate::repo::manifest::{FileEntry, path_bytes};
use crate::repo::object::{self, Compression};
use crate::repo::pack::{ChunkId, Delta, DeltaMethod, MAX_DELTA_DEPTH, encode_delta};
use crate::repo::storage::Storage;

/// A compressed chunk on its way to the pack writer.
pub struct Blob {
    pub id: ChunkId,
    pub raw_len: usize,
    pub compression: Compression,
    pub delta: Option<Delta>,
    pub payload: Vec<u8>,
}

/// What a backup knows of a chunk it meets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// The repository has a copy (not yet read back).
    Stored,
    /// The repository's copy was read back in this run and is right.
    Proven,
    /// This backup stores it.
    New,
}

/// Where chunks go: skips chunks the repository (or this backup) already has, and
/// stores a changed chunk as a delta of the parent's chunk at the same place.
///
/// A full backup trusts no stored copy it has not read back in this run: a copy that
/// rotted is recorded as corrupt and the chunk stored again, so a full backup heals
/// every damaged chunk whose data the database still holds.
pub struct ChunkSink {
    pub known: Mutex<HashMap<ChunkId, Known>>,
    pub tx: Sender<Blob>,
    pub level: i32,
    /// Chunks of earlier backups: the bases deltas are taken against.
    pub earlier: ChunkIndex,
    pub storage: Arc<dyn Storage>,
    pub prefix: String,
    /// Read back every stored copy this backup refers to (a full backup).
    pub check_stored: bool,
    /// Copies found corrupt while read back: (pack name, chunk).
    pub corrupt: Mutex<Vec<(String, ChunkId)>>,
    /// Chunks stored again because every stored copy was corrupt.
    pub stored_again: AtomicUsize,
}

impl ChunkSink {
    pub fn new(
        earlier: ChunkIndex,
        tx: Sender<Blob>,
        level: i32,
        storage: Arc<dyn Storage>,
        prefix: String,
        check_stored: bool,
    ) -> ChunkSink {
        ChunkSink {
            known: Mutex::new(
                earlier
                    .chunks
                    .keys()
                    .map(|id| (*id, Known::Stored))
                    .collect(),
            ),
            tx,
            level,
            earlier,
            storage,
            prefix,
            check_stored,
            corrupt: Mutex::new(Vec::new()),
            stored_again: AtomicUsize::new(0),
        }
    }

    /// Whether this call must store `id`: neither this backup nor the repository has it,
    /// or (with `check_stored`) the stored copy does not read back right.
    fn must_store(&self, id: ChunkId) -> bool {
        let state = self.known.lock().unwrap().get(&id).copied();
        match state {
            Some(Known::New | Known::Proven) => return false,
            Some(Known::Stored) if !self.check_stored => return false,
            _ => {}
        }
        let good = state.is_some() && self.read_back(&id);
        let mut known = self.known.lock().unwrap();
        if good {
            known.insert(id, Known::Proven);
            return false;
        }
        // Another worker may have stored it meanwhile.
        let first = known.insert(id, Known::New) != Some(Known::New);
        if first && (state.is_some() || self.earlier.damaged.contains_key(&id)) {
            self.stored_again.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Reads the stored copy of `id`; a corrupt copy is remembered for its record.
    fn read_back(&self, id: &ChunkId) -> bool {
        let Err(e) = self.earlier.read(&*self.storage, &self.prefix, id) else {
            return true;
        };
        tracing::warn!("{e:#}; storing it again");
        self.remember_corrupt(&e);
        false
    }

    /// Remembers the corrupt copy a read failed on, for its damage record.
    fn remember_corrupt(&self, e: &anyhow::Error) {
        if let Some(c) = e.chain().find_map(|c| c.downcast_ref::<CorruptCopy>()) {
            self.corrupt.lock().unwrap().push((c.pack.clone(), c.id));
        }
    }

    /// Stores a chunk unless the repository has it; `base` is the parent's chunk at the
    /// same place, if any. Returns the id and whether the chunk was new.
    pub fn store(&self, data: &[u8], base: Option<ChunkId>) -> Result<(ChunkId, bool)> {
        let id = ChunkId::of(data);
        let new = self.must_store(id);
        if new {
            let (compression, delta, payload) = match self.delta_of(data, base) {
                // Small: what changed was little.
                Some((delta, compression, payload)) if payload.len() <= data.len() / 16 => {
                    (compression, Some(delta), payload)
                }
                // Otherwise keep whichever is smaller (moved data XORs badly).
                delta => {
                    let (compression, payload) = object::compress(data, self.level)?;
                    match delta {
                        Some((delta, c, p)) if p.len() < payload.len() => (c, Some(delta), p),
                        _ => (compression, None, payload),
                    }
                }
            };
            self.tx
                .send(Blob {
                    id,
                    raw_len: data.len(),
                    compression,
                    delta,
                    payload,
                })
                .map_err(|_| anyhow!("the pack writer stopped"))?;
        }
        Ok((id, new))
    }

    /// Whether the repository holds `id` readably. Data taken from the parent unread
    /// must pass this: a chunk lost since (a damaged pack) is read again from the data
    /// directory instead of being referred to by one more backup.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.earlier.chunks.contains_key(id)
    }

    /// `data` as a delta of `base`, unless there is none, the chain would grow too long,
    /// or the base cannot be read (then the chunk is stored whole). The base is read with
    /// every check: a delta of a base copy that rotted would decode only through that very
    /// copy, and so break once a good copy of the base replaces it.
    fn delta_of(
        &self,
        data: &[u8],
        base: Option<ChunkId>,
    ) -> Option<(Delta, Compression, Vec<u8>)> {
        let base = base?;
        let depth = self.earlier.chunks.get(&base)?.delta.map_or(0, |d| d.depth) + 1;
        if depth > MAX_DELTA_DEPTH || self.level == 0 {
            return None;
        }
        let base_plain = match self.earlier.read(&*self.storage, &self.prefix, &base) {
            Ok(plain) => plain,
            Err(e) => {
                tracing::warn!("{e:#}; storing the chunk whole instead of as a delta");
                self.remember_corrupt(&e);
                return None;
            }
        };
        let (compression, payload) = encode_delta(data, &base_plain, self.level).ok()?;
        let delta = Delta {
            base,
            depth,
            method: DeltaMethod::Xor,
        };
        Some((delta, compression, payload))
    }

    /// Stores an in-memory file (`backup_label`, `tablespace_map`) as a manifest entry.
    pub fn store_file(&self, path: &str, data: &[u8], mode: u32, mtime: i64) -> Result<FileEntry> {
        let chunks = data
            .chunks(CHUNK_SIZE)
            .map(|c| Ok(self.store(c, None)?.0))
            .collect::<Result<_>>()?;
        Ok(FileEntry {
            path: path.into(),
            path_bytes: None,
            size: data.len() as u64,
            mode,
            mtime,
            chunks,
            bad_blocks: Vec::new(),
        })
    }
}

/// What a backup did with the bytes it covered.
#[derive(Default)]
pub struct Stats {
    /// Bytes read from the data directory.
    pub read: AtomicU64,
    /// Bytes taken from the parent without reading: files whose size and mtime are
    /// unchanged, and chunks WAL summaries show unchanged.
    pub unread: AtomicU64,
    /// Bytes of chunks the repository did not have yet (before compression).
    pub stored: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Everything a worker needs to back up files.
pub struct FileReader<'a> {
    pub sink: &'a ChunkSink,
    /// Validate page checksums of pages older than this LSN (the backup start).
    pub checksums_from: Option<Lsn>,
    pub parent: Option<&'a Parent>,
    /// Blocks changed since the parent started, from WAL summaries (PostgreSQL 17+).
    pub changed: Option<&'a ChangedBlocks>,
    pub progress: &'a ProgressBar,
    pub stats: &'a Stats,
}

/// Reads as much of `buf` as the file has from `offset`.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Page checks for one chunk of a relation file. A page that fails is read again: it
/// counts as bad only if it still fails and was not changed since the backup started
/// (a page being written may be torn, and WAL replay repairs it).
fn bad_pages(
    file: &File,
    data: &[u8],
    file_offset: u64,
    segment: u32,
    start_lsn: Lsn,
) -> Result<Vec<u32>> {
    let mut bad = Vec::new();
    for (i, page_bytes) in data.chunks_exact(PAGE_SIZE).enumerate() {
        let in_file = file_offset + (i * PAGE_SIZE) as u64;
        let blkno = segment * BLOCKS_PER_SEGMENT + (in_file / PAGE_SIZE as u64) as u32;
        if page::verify(page_bytes, blkno) || page::page_lsn(page_bytes) >= start_lsn {
            continue;
        }
        let mut again = vec![0u8; PAGE_SIZE];
        match file.read_exact_at(&mut again, in_file) {
            Ok(()) => {}
            // Truncated since (VACUUM): the page is gone, and WAL replay agrees.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e.into()),
        }
        if again == page_bytes
            || !(page::verify(&again, blkno) || page::page_lsn(&again) >= start_lsn)
        {
            bad.push(blkno);
        }
    }
    Ok(bad)
}

impl FileReader<'_> {
    /// Backs up one file; `None` if it vanished (dropped relation) before it was opened.
    /// Polls `stop` between chunks.
    pub fn backup_file(&self, src: &SourceFile, stop: &AtomicBool) -> Result<Option<FileEntry>> {
        let parent_file = self.parent.and_then(|p| p.file(src));
        let unchanged = self.parent.and_then(|p| p.unchanged_file(src));
        if let Some(entry) = unchanged.filter(|e| e.chunks.iter().all(|c| self.sink.has(c))) {
            self.stats.unread.fetch_add(entry.size, Ordering::Relaxed);
            self.progress.inc(entry.size);
            return Ok(Some(entry.clone()));
        }
        let file = match File::open(&src.abs) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", src.abs.display())),
        };
        // WAL summaries describe only the main fork completely.
        let main_fork = src.relation.as_ref().is_some_and(|r| r.main_fork);
        let segment = src.relation.as_ref().map_or(0, |r| r.segment);
        let parent = self.parent.zip(parent_file).filter(|_| main_fork);
        let mut buf = vec![0u8; CHUNK_SIZE];
        let (mut offset, mut chunks, mut bad_blocks) = (0u64, Vec::new(), Vec::new());
        while offset < src.size {
            if stop.load(Ordering::Relaxed) {
                return Err(stopped());
            }
            let want = CHUNK_SIZE.min((src.size - offset) as usize);
            let unread = parent.and_then(|(p, entry)| {
                let changed = self.changed?;
                p.chunk_of_length(entry, chunks.len(), want)
                    .filter(|id| self.sink.has(id))
                    .filter(|_| changed.unchanged(&src.rel, chunks.len() as u64))
            });
            if let Some(id) = unread {
                // The parent's known bad pages in this chunk stay known.
                let first = segment * BLOCKS_PER_SEGMENT + (offset / PAGE_SIZE as u64) as u32;
                let blocks = first..first + (want / PAGE_SIZE) as u32;
                let parent_bad = parent_file.map_or(&[][..], |e| &e.bad_blocks[..]);
                bad_blocks.extend(parent_bad.iter().filter(|b| blocks.contains(b)));
                self.stats.unread.fetch_add(want as u64, Ordering::Relaxed);
                self.progress.inc(want as u64);
                chunks.push(id);
                offset += want as u64;
                continue;
            }
            let n = read_full_at(&file, &mut buf[..want], offset)
                .with_context(|| format!("cannot read {}", src.abs.display()))?;
            if n == 0 {
                break; // truncated while we read: WAL replay restores it
            }
            let data = &buf[..n];
            self.stats.read.fetch_add(n as u64, Ordering::Relaxed);
            if let (Some(rel), Some(start_lsn)) = (&src.relation, self.checksums_from) {
                let bad = bad_pages(&file, data, offset, rel.segment, start_lsn)
                    .with_context(|| format!("cannot re-read {}", src.abs.display()))?;
                bad_blocks.extend(bad);
            }
            let base = parent_file.and_then(|entry| entry.chunks.get(chunks.len()).copied());
            let (id, new) = self.sink.store(data, base)?;
            if new {
                self.stats.stored.fetch_add(n as u64, Ordering::Relaxed);
            }
            chunks.push(id);
            offset += n as u64;
            self.progress.inc(n as u64);
            if n < want {
                break;
            }
        }
        Ok(Some(FileEntry {
            path: src.rel.clone(),
            path_bytes: path_bytes(src.raw.as_deref()),
            size: offset,
            mode: src.mode,
            mtime: src.mtime,
            chunks,
            bad_blocks,
        }))
    }
}
