//! A backup manifest: everything needed to rebuild the data directory as it was, naming
//! each file's chunks. Writing it is what publishes a backup.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::pack::ChunkId;
use crate::format::lsn::Lsn;
use crate::format::wal::valid_segment_size;

/// Version of the manifest layout; readers accept every version up to this one.
/// 2 added `parent`.
pub const MANIFEST_VERSION: u32 = 2;

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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEntry {
    /// Relative to the data directory; tablespace contents sit under `pg_tblspc/OID/`.
    pub path: String,
    pub mode: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
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
    let bad = path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        Err(format!(
            "manifest path '{path}' is not a plain relative path"
        ))
    } else {
        Ok(())
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
        for p in self
            .files
            .iter()
            .map(|f| &f.path)
            .chain(self.directories.iter().map(|d| &d.path))
        {
            check_path(p)?;
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

    pub fn bad_block_count(&self) -> usize {
        self.files.iter().map(|f| f.bad_blocks.len()).sum()
    }
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
    }
}
