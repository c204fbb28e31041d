//! Reading one file into chunks: page checks, reuse of data proven unchanged, hashing,
//! compression, and handing new chunks to the pack writer.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};
use indicatif::ProgressBar;

use super::CHUNK_SIZE;
use super::changes::ChangedBlocks;
use super::parent::Parent;
use crate::engine::physical::walk::{Relation, SourceFile};
use crate::engine::stopped;
use crate::format::incremental;
use crate::format::lsn::Lsn;
use crate::format::page::{self, BLOCKS_PER_SEGMENT, PAGE_SIZE};
use crate::repo::chunk_store::ChunkWriter;
use crate::repo::manifest::{FileEntry, path_bytes};
use crate::repo::pack::ChunkId;

/// Stores an in-memory file (`backup_label`, `tablespace_map`) as a manifest entry.
pub fn store_file(
    chunks: &ChunkWriter,
    path: &str,
    data: &[u8],
    mode: u32,
    mtime: i64,
) -> Result<FileEntry> {
    let chunks = data
        .chunks(CHUNK_SIZE)
        .map(|c| Ok(chunks.store(c, None)?.0))
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
    pub chunks: &'a ChunkWriter<'a>,
    /// Validate page checksums of pages older than this LSN (the backup start).
    pub checksums_from: Option<Lsn>,
    pub parent: Option<&'a Parent>,
    /// Blocks changed since the parent started, from WAL summaries (PostgreSQL 17+).
    pub changed: Option<&'a ChangedBlocks>,
    pub progress: &'a ProgressBar,
    pub stats: &'a Stats,
}

/// One chunk of a file the server sent as an incremental file: the blocks it holds there.
pub struct Patch {
    /// The chunk's length in the reconstructed file.
    pub len: usize,
    /// Blocks from here on are not taken from the parent (see `format::incremental`).
    pub truncation_block_length: u32,
    /// The changed blocks in the chunk, by number relative to the segment.
    pub blocks: Vec<(u32, Vec<u8>)>,
}

/// Which of `blocks` (absolute block numbers of a relation) lie in the `len` bytes at
/// `offset` of segment `segment`.
fn blocks_in(blocks: &[u32], segment: u32, offset: u64, len: usize) -> impl Iterator<Item = u32> {
    let first = segment * BLOCKS_PER_SEGMENT + (offset / PAGE_SIZE as u64) as u32;
    let range = first..first + (len / PAGE_SIZE) as u32;
    blocks.iter().copied().filter(move |b| range.contains(b))
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

/// Pages of one chunk of a relation file that fail verification and were not changed
/// since the backup started: (block number, offset in the file, bytes).
fn suspect_pages(
    data: &[u8],
    file_offset: u64,
    segment: u32,
    start_lsn: Lsn,
) -> impl Iterator<Item = (u32, u64, &[u8])> {
    data.chunks_exact(PAGE_SIZE)
        .enumerate()
        .filter_map(move |(i, page_bytes)| {
            let in_file = file_offset + (i * PAGE_SIZE) as u64;
            let blkno = segment * BLOCKS_PER_SEGMENT + (in_file / PAGE_SIZE as u64) as u32;
            let bad = !page::verify(page_bytes, blkno) && page::page_lsn(page_bytes) < start_lsn;
            bad.then_some((blkno, in_file, page_bytes))
        })
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
    for (blkno, in_file, page_bytes) in suspect_pages(data, file_offset, segment, start_lsn) {
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
    /// Stores chunk `index` (at `offset`) of the file at `rel`, as a server streamed it,
    /// and returns its id with the blocks whose checks fail. The server sends a page it
    /// read again after a failed check (`basebackup.c`), so a failure here is not a
    /// torn read.
    pub fn store_streamed(
        &self,
        name: (&str, Option<&[u8]>),
        relation: Option<&Relation>,
        at: (usize, u64),
        data: &[u8],
    ) -> Result<(ChunkId, Vec<u32>)> {
        self.store_received(name, relation, at, data, (data.len(), None))
    }

    /// Stores chunk `index` (at `offset`) of a file the server sent as the blocks changed
    /// since the parent: the parent's chunk patched with them, or the parent's chunk
    /// itself, unread, when nothing in it changed.
    pub fn store_patched(
        &self,
        (rel, raw): (&str, Option<&[u8]>),
        relation: Option<&Relation>,
        (index, offset): (usize, u64),
        patch: &Patch,
    ) -> Result<(ChunkId, Vec<u32>)> {
        let parent = self
            .parent
            .zip(self.parent.and_then(|p| p.file_at(rel, raw)));
        let first_block = (offset / PAGE_SIZE as u64) as u32;
        let end_block = first_block + (patch.len / PAGE_SIZE) as u32;
        let unchanged = patch.blocks.is_empty() && end_block <= patch.truncation_block_length;
        let unread = parent
            .filter(|_| unchanged)
            .and_then(|(p, entry)| p.chunk_of_length(entry, index, patch.len))
            .filter(|id| self.chunks.has(id));
        if let Some(id) = unread {
            let segment = relation.map_or(0, |r| r.segment);
            let parent_bad = parent.map_or(&[][..], |(_, e)| &e.bad_blocks[..]);
            let bad = blocks_in(parent_bad, segment, offset, patch.len).collect();
            self.stats
                .unread
                .fetch_add(patch.len as u64, Ordering::Relaxed);
            return Ok((id, bad));
        }
        let needs_prior = patch.truncation_block_length > first_block;
        let prior = match parent.map(|(_, entry)| entry.chunks.get(index)) {
            _ if !needs_prior => Vec::new(),
            None => bail!(
                "the server sent only the changes of {rel}, but the parent backup lacks that file; run `pgkeep backup --full`"
            ),
            Some(None) => Vec::new(),
            Some(Some(id)) => self.chunks.read(id).with_context(|| {
                format!("cannot read the parent's copy of {rel}, which the server sent only the changes of; run `pgkeep backup --full`")
            })?,
        };
        let changed: Vec<(u32, &[u8])> = (patch.blocks.iter())
            .map(|(block, data)| (*block, &data[..]))
            .collect();
        let data = incremental::reconstruct(
            first_block,
            patch.len,
            patch.truncation_block_length,
            &prior,
            &changed,
        );
        let received = patch.blocks.len() * PAGE_SIZE;
        self.stats
            .unread
            .fetch_add((patch.len - received) as u64, Ordering::Relaxed);
        let prior = Some(prior).filter(|p| !p.is_empty());
        self.store_received(
            (rel, raw),
            relation,
            (index, offset),
            &data,
            (received, prior),
        )
    }

    /// Stores a chunk of which `received` bytes came from the server (the progress
    /// counts those: the server's size estimate is of what it sends); `prior` is the
    /// parent's chunk at the same place if it was read already.
    fn store_received(
        &self,
        (rel, raw): (&str, Option<&[u8]>),
        relation: Option<&Relation>,
        (index, offset): (usize, u64),
        data: &[u8],
        (received, prior): (usize, Option<Vec<u8>>),
    ) -> Result<(ChunkId, Vec<u32>)> {
        let bad = match (relation, self.checksums_from) {
            (Some(r), Some(start)) => suspect_pages(data, offset, r.segment, start)
                .map(|(blkno, _, _)| blkno)
                .collect(),
            _ => Vec::new(),
        };
        let base = self
            .parent
            .and_then(|p| p.file_at(rel, raw))
            .and_then(|entry| entry.chunks.get(index).copied());
        let (id, new) = match (base, prior) {
            (Some(base), Some(plain)) => self.chunks.store_over_read(data, base, plain)?,
            (base, _) => self.chunks.store(data, base)?,
        };
        self.stats
            .read
            .fetch_add(received as u64, Ordering::Relaxed);
        if new {
            self.stats
                .stored
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        self.progress.inc(received as u64);
        Ok((id, bad))
    }

    /// Backs up one file; `None` if it vanished (dropped relation) before it was opened.
    /// Polls `stop` between chunks.
    pub fn backup_file(&self, src: &SourceFile, stop: &AtomicBool) -> Result<Option<FileEntry>> {
        let parent_file = self.parent.and_then(|p| p.file(src));
        let unchanged = self.parent.and_then(|p| p.unchanged_file(src));
        if let Some(entry) = unchanged.filter(|e| e.chunks.iter().all(|c| self.chunks.has(c))) {
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
                    .filter(|id| self.chunks.has(id))
                    .filter(|_| changed.unchanged(&src.rel, chunks.len() as u64))
            });
            if let Some(id) = unread {
                // The parent's known bad pages in this chunk stay known.
                let parent_bad = parent_file.map_or(&[][..], |e| &e.bad_blocks[..]);
                bad_blocks.extend(blocks_in(parent_bad, segment, offset, want));
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
            let (id, new) = self.chunks.store(data, base)?;
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
