//! The parent of an incremental backup, and the rules for taking data from it unread or
//! unhashed. Every backup is still complete on its own: reused data is referenced by
//! chunk id, never by a chain of backups.

use std::collections::{BTreeMap, HashMap};

use crate::engine::walk::SourceFile;
use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::format::page::{self, PAGE_SIZE};
use crate::repo::manifest::{FileEntry, Manifest};
use crate::repo::pack::ChunkId;

pub struct Parent {
    pub label: String,
    start_lsn: Lsn,
    /// Parent start, seconds since the epoch.
    start_time: i64,
    chunk_size: u64,
    files: HashMap<String, FileEntry>,
}

impl Parent {
    /// The newest backup whose consistency point lies in the current timeline's history:
    /// a backup from a branch the cluster did not follow describes other data.
    pub fn choose(
        manifests: Vec<Manifest>,
        paths: &BTreeMap<u32, TimelinePath>,
        timeline: u32,
        pg_major: u32,
        chunk_size: u64,
    ) -> Option<Parent> {
        let path = paths
            .get(&timeline)
            .cloned()
            .unwrap_or_else(|| TimelinePath::single(timeline));
        let parent = manifests
            .into_iter()
            .filter(|m| {
                m.pg_version / 10000 == pg_major
                    && m.chunk_size == chunk_size
                    && path.contains(m.timeline, m.stop_lsn)
            })
            .max_by_key(|m| m.stop_lsn)?;
        Some(Parent {
            label: parent.label,
            start_lsn: parent.start_lsn,
            start_time: parent.start_time.timestamp(),
            chunk_size: parent.chunk_size,
            files: parent
                .files
                .into_iter()
                .map(|f| (f.path.clone(), f))
                .collect(),
        })
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.get(path)
    }

    /// The parent's entry if the file cannot have changed since: same size and mtime, and
    /// that mtime more than a second before the parent started (any later write would
    /// have moved the mtime past it, whatever the timestamp granularity).
    pub fn unchanged_file(&self, src: &SourceFile) -> Option<&FileEntry> {
        if src.rel == "global/pg_control" {
            return None;
        }
        let entry = self.files.get(&src.rel)?;
        (entry.size == src.size && entry.mtime == src.mtime && entry.mtime < self.start_time - 1)
            .then_some(entry)
    }

    /// The parent's chunk `index` of `entry` if it is `len` bytes long, as the same
    /// range of the file is now.
    pub fn chunk_of_length(&self, entry: &FileEntry, index: usize, len: usize) -> Option<ChunkId> {
        let parent_len = entry
            .size
            .saturating_sub(index as u64 * self.chunk_size)
            .min(self.chunk_size);
        (parent_len == len as u64)
            .then(|| entry.chunks.get(index).copied())
            .flatten()
    }

    /// The parent's chunk `index` of `entry` if `data` (the same range read now) shows
    /// it unchanged: every page last written before the parent started. New (all-zero)
    /// pages never count as unchanged: the parent may hold a page that was since
    /// truncated away.
    pub fn unchanged_chunk(&self, entry: &FileEntry, index: usize, data: &[u8]) -> Option<ChunkId> {
        let id = self.chunk_of_length(entry, index, data.len())?;
        if !data.len().is_multiple_of(PAGE_SIZE) {
            return None;
        }
        let unchanged = data.chunks_exact(PAGE_SIZE).all(|p| {
            let pd_upper = u16::from_le_bytes([p[14], p[15]]);
            pd_upper != 0 && page::page_lsn(p) < self.start_lsn
        });
        unchanged.then_some(id)
    }

    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }
}
