//! The manifest of a logical backup: one pg_dump archive (directory format, uncompressed)
//! of one database, each of its files a list of content-defined chunks in the chunk
//! store. Writing it is what publishes the dump.
//!
//! Invariant: every file name is a plain name (no `/`, not `.` or `..`), so a restore
//! writes only inside its own scratch directory.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::pack::{ChunkId, MAX_CHUNK_LEN};

/// Version of the dump manifest layout; readers accept every version up to this one.
pub const DUMP_MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpManifest {
    pub version: u32,
    pub label: String,
    pub database: String,
    /// `server_version_num` of the dumped server, e.g. 150004.
    pub pg_version: u32,
    /// Major version of the pg_dump that wrote the archive: a pg_restore at least as new
    /// reads it.
    pub pg_dump_major: u32,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub selection: Selection,
    /// Sum of file sizes.
    pub size: u64,
    /// Bytes this dump added to the repository (new packs).
    pub stored_size: u64,
    pub files: Vec<DumpFile>,
}

/// What a dump selected, as given to pg_dump.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tables: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_schemas: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub schema_only: bool,
}

impl Selection {
    /// The selection in pg_dump's words, for `info`: "all" when nothing was narrowed.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |flag: &str, values: &[String]| {
            parts.extend(values.iter().map(|v| format!("{flag} {v}")));
        };
        list("-t", &self.tables);
        list("-T", &self.exclude_tables);
        list("-n", &self.schemas);
        list("-N", &self.exclude_schemas);
        if self.data_only {
            parts.push("--data-only".into());
        }
        if self.schema_only {
            parts.push("--schema-only".into());
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(" ")
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpFile {
    /// The file's name in the archive directory (`toc.dat`, `NNNN.dat`, ...).
    pub name: String,
    pub size: u64,
    /// The file's chunks in order, each with its length.
    pub chunks: Vec<(ChunkId, u32)>,
}

impl DumpManifest {
    /// Checks what a reader relies on: a known version, plain file names, and chunk
    /// lengths that add up to each file's size.
    pub fn validate(&self) -> Result<(), String> {
        if self.version == 0 || self.version > DUMP_MANIFEST_VERSION {
            return Err(format!(
                "dump manifest version {} is not one this pgkeep reads (up to {DUMP_MANIFEST_VERSION}); upgrade pgkeep",
                self.version
            ));
        }
        if !self.files.iter().any(|f| f.name == "toc.dat") {
            return Err("it has no toc.dat".into());
        }
        for file in &self.files {
            let plain = !file.name.is_empty()
                && !file.name.contains(['/', '\0'])
                && file.name != "."
                && file.name != "..";
            if !plain {
                return Err(format!("file name '{}' is not a plain name", file.name));
            }
            if file.chunks.iter().any(|(_, len)| *len > MAX_CHUNK_LEN) {
                return Err(format!("file {} has an oversized chunk", file.name));
            }
            let total: u64 = file.chunks.iter().map(|(_, len)| u64::from(*len)).sum();
            if total != file.size {
                return Err(format!(
                    "file {} has chunks of {total} bytes for a size of {}",
                    file.name, file.size
                ));
            }
        }
        Ok(())
    }

    /// Every chunk the dump refers to.
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter().map(|(id, _)| id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: Vec<DumpFile>) -> DumpManifest {
        DumpManifest {
            version: DUMP_MANIFEST_VERSION,
            label: "L".into(),
            database: "db".into(),
            pg_version: 150004,
            pg_dump_major: 15,
            start_time: Utc::now(),
            stop_time: Utc::now(),
            selection: Selection::default(),
            size: 0,
            stored_size: 0,
            files,
        }
    }

    fn file(name: &str, size: u64, lens: &[u32]) -> DumpFile {
        DumpFile {
            name: name.into(),
            size,
            chunks: lens.iter().map(|l| (ChunkId([0; 32]), *l)).collect(),
        }
    }

    #[test]
    fn validation_rejects_what_a_restore_must_not_trust() {
        assert!(
            manifest(vec![file("toc.dat", 5, &[2, 3])])
                .validate()
                .is_ok()
        );
        assert!(manifest(vec![file("1.dat", 0, &[])]).validate().is_err());
        let escapes = manifest(vec![file("toc.dat", 0, &[]), file("../x", 0, &[])]);
        assert!(escapes.validate().unwrap_err().contains("not a plain name"));
        let short = manifest(vec![file("toc.dat", 6, &[2, 3])]);
        assert!(short.validate().unwrap_err().contains("for a size of 6"));
    }

    #[test]
    fn selection_reads_like_pg_dump_options() {
        assert_eq!(Selection::default().describe(), "all");
        let s = Selection {
            tables: vec!["public.t*".into()],
            exclude_schemas: vec!["audit".into()],
            data_only: true,
            ..Selection::default()
        };
        assert_eq!(s.describe(), "-t public.t* -N audit --data-only");
    }
}
