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
    /// How the archive is laid out (absent: `directory`, what `pgkeep dump` writes).
    #[serde(default, skip_serializing_if = "ArchiveFormat::is_directory")]
    pub format: ArchiveFormat,
    /// Whether this is `pg_dumpall --globals-only`'s script (roles, tablespaces), which
    /// belongs to no database (`database` is then empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub globals: bool,
    /// The label of the globals dump of the `dump --all` run this dump is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
    /// In the globals dump of a `dump --all` run: every database the run dumps, so a
    /// restore of the set knows whether it is whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_databases: Vec<String>,
    /// Where an imported archive came from (absent for `pgkeep dump`'s own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
    /// Sum of file sizes.
    pub size: u64,
    /// Bytes this dump added to the repository (new packs).
    pub stored_size: u64,
    pub files: Vec<DumpFile>,
}

/// pg_dump's output formats. A directory archive is stored file by file; the others
/// are one file each ([`ArchiveFormat::file_name`]).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    #[default]
    Directory,
    Custom,
    Tar,
    Plain,
}

impl ArchiveFormat {
    fn is_directory(&self) -> bool {
        *self == ArchiveFormat::Directory
    }

    /// The name pg_dump's `--format` and pg_restore's `--format` know it by.
    pub fn name(self) -> &'static str {
        match self {
            ArchiveFormat::Directory => "directory",
            ArchiveFormat::Custom => "custom",
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::Plain => "plain",
        }
    }

    /// The one file of a single-file archive.
    pub fn file_name(self) -> &'static str {
        match self {
            ArchiveFormat::Directory => "toc.dat",
            ArchiveFormat::Custom => "archive.dump",
            ArchiveFormat::Tar => "archive.tar",
            ArchiveFormat::Plain => "dump.sql",
        }
    }
}

impl std::str::FromStr for ArchiveFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<ArchiveFormat, String> {
        Ok(match s {
            "directory" | "d" => ArchiveFormat::Directory,
            "custom" | "c" => ArchiveFormat::Custom,
            "tar" | "t" => ArchiveFormat::Tar,
            "plain" | "p" => ArchiveFormat::Plain,
            other => {
                return Err(format!(
                    "format '{other}' is not one of plain, custom, directory, tar"
                ));
            }
        })
    }
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
        let one_file = self.files.len() == 1 && self.files[0].name == self.format.file_name();
        match self.format {
            ArchiveFormat::Directory if !self.files.iter().any(|f| f.name == "toc.dat") => {
                return Err("it has no toc.dat".into());
            }
            ArchiveFormat::Custom | ArchiveFormat::Tar | ArchiveFormat::Plain if !one_file => {
                return Err(format!(
                    "a {} archive must be the one file {}",
                    self.format.name(),
                    self.format.file_name()
                ));
            }
            _ => {}
        }
        if self.globals != self.database.is_empty()
            || (self.globals && self.format != ArchiveFormat::Plain)
        {
            return Err(
                "a globals dump is a plain script of no database, and only it has no database"
                    .into(),
            );
        }
        let mut names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("it names a file twice".into());
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
            format: ArchiveFormat::Directory,
            globals: false,
            set: None,
            set_databases: Vec::new(),
            imported_from: None,
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
        let mut custom = manifest(vec![file("archive.dump", 1, &[1])]);
        custom.format = ArchiveFormat::Custom;
        assert!(custom.validate().is_ok());
        custom.files.push(file("toc.dat", 0, &[]));
        assert!(
            custom
                .validate()
                .unwrap_err()
                .contains("the one file archive.dump")
        );
        let twice = manifest(vec![file("toc.dat", 0, &[]), file("toc.dat", 0, &[])]);
        assert!(twice.validate().unwrap_err().contains("twice"));
        let mut no_database = manifest(vec![file("toc.dat", 0, &[])]);
        no_database.database.clear();
        assert!(no_database.validate().is_err());
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
