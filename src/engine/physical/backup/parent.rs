//! The parent of an incremental backup, and the rules for taking data from it unread.
//! Every backup is still complete on its own: reused data is referenced by chunk id,
//! never by a chain of backups.
//!
//! Page LSNs alone are not used to take a chunk from the parent: a file copied without
//! per-page WAL (`CREATE DATABASE ... STRATEGY FILE_COPY` reusing a dropped database's
//! OID) carries old LSNs yet holds other data. Only an unchanged size and mtime, or WAL
//! that proves no block changed (summaries), let a chunk go unread; anything read is
//! hashed, and a chunk the repository has is never compressed or stored again.

use std::collections::HashMap;
use std::os::unix::ffi::OsStringExt;

use crate::engine::physical::walk::SourceFile;
use crate::format::backup_manifest::{self, ListedFile};
use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::repo::manifest::{FileEntry, Manifest, path_bytes};
use crate::repo::pack::ChunkId;

/// `files` of a backup that needs WAL `wal` (timeline, start, stop), as PostgreSQL's
/// `backup_manifest` lists them.
pub fn server_manifest<'f>(
    system_identifier: u64,
    files: impl Iterator<Item = &'f FileEntry>,
    wal: (u32, Lsn, Lsn),
) -> Vec<u8> {
    let mut files: Vec<ListedFile> = files
        .map(|f| ListedFile {
            path: f.fs_path().into_os_string().into_vec(),
            size: f.size,
            mtime: f.mtime,
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    backup_manifest::write(system_identifier, &files, wal)
}

pub struct Parent {
    pub label: String,
    timeline: u32,
    start_lsn: Lsn,
    stop_lsn: Lsn,
    /// Parent start, seconds since the epoch.
    start_time: i64,
    chunk_size: u64,
    /// By path, and by path bytes where names are not UTF-8.
    files: HashMap<(String, Option<String>), FileEntry>,
}

impl Parent {
    /// The newest backup whose consistency point lies on `path`, the current timeline's
    /// history: a backup from a branch the cluster did not follow describes other data.
    /// None if that backup had page checksums in another state: `pg_checksums` rewrites
    /// every page offline, without WAL, so nothing could be taken from it unread.
    pub fn choose(
        manifests: Vec<Manifest>,
        path: &TimelinePath,
        pg_major: u32,
        chunk_size: u64,
        data_checksums: bool,
    ) -> Option<Parent> {
        let parent = manifests
            .into_iter()
            .filter(|m| {
                m.pg_version / 10000 == pg_major
                    && m.chunk_size == chunk_size
                    && path.contains(m.timeline, m.stop_lsn)
            })
            .max_by_key(|m| m.stop_lsn)
            .filter(|m| m.data_checksums == data_checksums)?;
        Some(Parent {
            label: parent.label,
            timeline: parent.timeline,
            start_lsn: parent.start_lsn,
            stop_lsn: parent.stop_lsn,
            start_time: parent.start_time.timestamp(),
            chunk_size: parent.chunk_size,
            files: parent
                .files
                .into_iter()
                .map(|f| ((f.path.clone(), f.path_bytes.clone()), f))
                .collect(),
        })
    }

    /// The parent's entry for the file at the same place.
    pub fn file(&self, src: &SourceFile) -> Option<&FileEntry> {
        self.file_at(&src.rel, src.raw.as_deref())
    }

    /// The parent's entry for path `rel` (with its bytes when they are not UTF-8).
    pub fn file_at(&self, rel: &str, raw: Option<&[u8]>) -> Option<&FileEntry> {
        self.files.get(&(rel.to_string(), path_bytes(raw)))
    }

    /// The parent's entry if the file cannot have changed since: same size and mtime, and
    /// that mtime more than a second before the parent started (any later write would
    /// have moved the mtime past it, whatever the timestamp granularity).
    pub fn unchanged_file(&self, src: &SourceFile) -> Option<&FileEntry> {
        if src.rel == "global/pg_control" {
            return None;
        }
        let entry = self.file(src)?;
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

    pub fn start_lsn(&self) -> Lsn {
        self.start_lsn
    }

    /// The parent described as PostgreSQL describes a backup (`backup_manifest`), for a
    /// server to send what changed since (`BASE_BACKUP (INCREMENTAL)`): its files and the
    /// WAL it needs. Checksums are left out; the server reads none.
    pub fn server_manifest(&self, system_identifier: u64) -> Vec<u8> {
        let wal = (self.timeline, self.start_lsn, self.stop_lsn);
        server_manifest(system_identifier, self.files.values(), wal)
    }
}
