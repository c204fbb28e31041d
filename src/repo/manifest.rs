//! A backup manifest: everything needed to rebuild the data directory as it was, naming
//! each file's chunks. Writing it is what publishes a backup.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::pack::ChunkId;
use crate::format::lsn::Lsn;
use crate::format::wal::valid_segment_size;

/// Version of the manifest layout; readers accept every version up to this one, and
/// writers write the oldest that holds the manifest ([`Manifest::needed_version`]).
/// 2 added `parent`; 3 added `path_bytes`; 4 added `databases`.
pub const MANIFEST_VERSION: u32 = 4;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub label: String,
    /// The backup this one took unchanged data from, if any (information only: every
    /// backup lists all its chunks and restores on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub system_identifier: u64,
    /// `server_version_num`, e.g. 150004.
    pub pg_version: u32,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub wal_segment_size: u64,
    /// Files are cut into chunks of this many bytes (the last one shorter).
    pub chunk_size: u64,
    /// `pg_current_snapshot()` taken right after `pg_backup_stop`: which transactions
    /// had not committed by the time the backup became consistent.
    pub snapshot_at_stop: String,
    pub data_checksums: bool,
    /// Sum of file sizes.
    pub size: u64,
    /// Bytes this backup added to the repository (new packs).
    pub stored_size: u64,
    pub tablespaces: Vec<TablespaceEntry>,
    /// (v4) The databases when the backup started, so that a restore of one database
    /// knows which directories are its (`restore-table`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseEntry>,
    pub directories: Vec<DirectoryEntry>,
    pub files: Vec<FileEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TablespaceEntry {
    pub oid: u32,
    pub name: String,
    /// Where the tablespace lived on the backed-up server.
    pub location: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseEntry {
    pub oid: u32,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    /// Relative to the data directory; tablespace contents sit under `pg_tblspc/OID/`.
    pub path: String,
    /// (v3) The path's bytes in hex when they are not UTF-8 (`path` then shows them
    /// with replacement characters): restored byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<String>,
    pub mode: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    /// (v3) As for [`DirectoryEntry::path_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<String>,
    pub size: u64,
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub chunks: Vec<ChunkId>,
    /// Blocks (absolute block numbers) whose page checksum failed twice in a row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_blocks: Vec<u32>,
}

/// Checks that a manifest path stays inside the data directory.
pub fn check_path(path: &str) -> Result<(), String> {
    check_path_bytes(path.as_bytes())
        .map_err(|()| format!("manifest path '{path}' is not a plain relative path"))
}

fn check_path_bytes(path: &[u8]) -> Result<(), ()> {
    let bad = path.is_empty()
        || path.starts_with(b"/")
        || path.contains(&0)
        || path
            .split(|&b| b == b'/')
            .any(|p| p.is_empty() || p == b"." || p == b"..");
    if bad { Err(()) } else { Ok(()) }
}

/// The path of an entry in the file system: its bytes where the manifest records them.
fn fs_path(path: &str, path_bytes: Option<&str>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    match path_bytes.and_then(|hex| hex::decode(hex).ok()) {
        Some(bytes) => std::ffi::OsStr::from_bytes(&bytes).into(),
        None => path.into(),
    }
}

/// Checks an entry's path and, if there, its bytes.
fn check_entry(path: &str, path_bytes: Option<&str>) -> Result<(), String> {
    check_path(path)?;
    if let Some(hex) = path_bytes {
        let bad = || format!("manifest path bytes of '{path}' are not a plain relative path");
        let bytes = hex::decode(hex).map_err(|_| bad())?;
        check_path_bytes(&bytes).map_err(|()| bad())?;
    }
    Ok(())
}

/// The bytes of a path that is not UTF-8, as a manifest records them.
pub fn path_bytes(raw: Option<&[u8]>) -> Option<String> {
    raw.map(hex::encode)
}

impl DirectoryEntry {
    pub fn fs_path(&self) -> std::path::PathBuf {
        fs_path(&self.path, self.path_bytes.as_deref())
    }
}

impl FileEntry {
    pub fn fs_path(&self) -> std::path::PathBuf {
        fs_path(&self.path, self.path_bytes.as_deref())
    }

    /// Identifies the file among a backup's files: its text path is not enough when names
    /// are not UTF-8 (two can show the same).
    pub fn key(&self) -> (&str, Option<&str>) {
        (&self.path, self.path_bytes.as_deref())
    }
}

impl Manifest {
    /// Rejects manifests that are newer than this reader or would write outside the
    /// target directory.
    pub fn validate(&self) -> Result<(), String> {
        if self.version == 0 || self.version > MANIFEST_VERSION {
            return Err(format!(
                "manifest version {} is not one this pgkeep reads (1..={MANIFEST_VERSION}); upgrade pgkeep",
                self.version
            ));
        }
        for (path, bytes) in self
            .files
            .iter()
            .map(|f| (&f.path, &f.path_bytes))
            .chain(self.directories.iter().map(|d| (&d.path, &d.path_bytes)))
        {
            check_entry(path, bytes.as_deref())?;
        }
        if self.chunk_size == 0 || self.chunk_size > super::pack::MAX_CHUNK_LEN as u64 {
            return Err(format!(
                "manifest has an impossible chunk size of {}",
                self.chunk_size
            ));
        }
        if !valid_segment_size(self.wal_segment_size) {
            return Err(format!(
                "manifest has WAL segment size {}, not a power of two from 1 MiB to 1 GiB",
                self.wal_segment_size
            ));
        }
        for f in &self.files {
            if f.chunks.len() as u64 != f.size.div_ceil(self.chunk_size) {
                return Err(format!(
                    "manifest entry for {} has the wrong number of chunks",
                    f.path
                ));
            }
        }
        Ok(())
    }

    /// The oldest manifest version that holds this manifest, so older readers can still
    /// read it unless it uses what only a newer version has.
    pub fn needed_version(&self) -> u32 {
        let raw_paths = self.files.iter().any(|f| f.path_bytes.is_some())
            || self.directories.iter().any(|d| d.path_bytes.is_some());
        if !self.databases.is_empty() {
            4
        } else if raw_paths {
            3
        } else {
            2
        }
    }

    pub fn bad_block_count(&self) -> usize {
        self.files.iter().map(|f| f.bad_blocks.len()).sum()
    }

    pub fn summary(&self) -> BackupSummary {
        BackupSummary {
            label: self.label.clone(),
            parent: self.parent.clone(),
            timeline: self.timeline,
            start_lsn: self.start_lsn,
            checkpoint_lsn: self.checkpoint_lsn,
            stop_lsn: self.stop_lsn,
            start_time: self.start_time,
            stop_time: self.stop_time,
            data_checksums: self.data_checksums,
            size: self.size,
            stored_size: self.stored_size,
            files: self.files.len(),
            bad_blocks: self.bad_block_count(),
        }
    }
}

/// A backup without its file list: what reports (`info`, `status`, `serve`) and the
/// WAL a backup needs are judged from, small enough to keep in the catalog.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackupSummary {
    pub label: String,
    pub parent: Option<String>,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub data_checksums: bool,
    pub size: u64,
    pub stored_size: u64,
    pub files: usize,
    pub bad_blocks: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside() {
        assert!(check_path("base/1/1234").is_ok());
        for bad in ["../etc/passwd", "/etc/passwd", "base/../../x", "a//b", ""] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert!(check_entry("x\u{FFFD}", Some("78ff")).is_ok());
        for bad in ["2e2e2f78", "2f6574632f706173737764", "780078", "zz"] {
            assert!(check_entry("x", Some(bad)).is_err(), "{bad}");
        }
    }
}
