//! Lists what a backup must copy from the data directory and its tablespaces, leaving
//! out what PostgreSQL rebuilds or must not see again (see `basebackup.c`'s exclusions).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::format::page::BLOCKS_PER_SEGMENT;

/// Directories whose contents are never copied; the directory itself is kept.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files left out at the top of the data directory. `backup_label` and
/// `tablespace_map` come from `pg_backup_stop` instead.
const SKIP_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// The files that put a server into recovery: a backup of a standby leaves them out, so
/// that its restore recovers as restore says, not as the standby was set up.
pub const RECOVERY_SIGNALS: &[&str] = &["recovery.signal", "standby.signal"];

pub struct SourceFile {
    /// Path in the manifest (tablespaces under `pg_tblspc/OID/`), as text; a name that is
    /// not UTF-8 shows here with replacement characters and is kept exactly in `raw`.
    pub rel: String,
    /// The path's bytes, when they are not UTF-8.
    pub raw: Option<Vec<u8>>,
    pub abs: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// Set for relation data files.
    pub relation: Option<Relation>,
}

/// What a relation data file's name says about it.
pub struct Relation {
    /// Segment number (`.N`), so block numbers can be computed.
    pub segment: u32,
    /// Whether this is the main fork, the only one WAL describes block by block: free
    /// space map updates are not WAL-logged, and visibility map bits are cleared by heap
    /// records that do not name the map's block.
    pub main_fork: bool,
}

pub struct SourceDir {
    pub rel: String,
    /// The path's bytes, when they are not UTF-8.
    pub raw: Option<Vec<u8>>,
    pub mode: u32,
}

/// A path below the data directory: as text, and its exact bytes where they differ.
#[derive(Clone, Default)]
struct RelPath {
    text: String,
    bytes: Vec<u8>,
    utf8: bool,
}

impl RelPath {
    fn root() -> RelPath {
        RelPath {
            utf8: true,
            ..Default::default()
        }
    }

    fn child(&self, name: &std::ffi::OsStr) -> RelPath {
        use std::os::unix::ffi::OsStrExt;
        let mut child = self.clone();
        if !child.bytes.is_empty() {
            child.text.push('/');
            child.bytes.push(b'/');
        }
        child.text.push_str(&name.to_string_lossy());
        child.bytes.extend_from_slice(name.as_bytes());
        child.utf8 &= name.to_str().is_some();
        child
    }

    /// The bytes, if the text does not carry them exactly.
    fn raw(&self) -> Option<Vec<u8>> {
        (!self.utf8).then(|| self.bytes.clone())
    }
}

/// Parses a relation file name (`16384`, `16384.2`, `16384_fsm`, `16384_vm.1`) into
/// (relfilenode, fork, segment).
fn relation_name(name: &str) -> Option<(&str, &str, u32)> {
    // A segment number whose blocks have no block number is no relation's.
    let (base, seg) = match name.split_once('.') {
        Some((b, s)) => (
            b,
            s.parse()
                .ok()
                .filter(|s: &u32| s.checked_mul(BLOCKS_PER_SEGMENT).is_some())?,
        ),
        None => (name, 0),
    };
    let (node, fork) = base.split_once('_').unwrap_or((base, ""));
    let valid = !node.is_empty()
        && node.bytes().all(|b| b.is_ascii_digit())
        && ["", "fsm", "vm", "init"].contains(&fork);
    valid.then_some((node, fork, seg))
}

/// What the name of a file at `rel` (a path in the backup) says about it as a relation
/// data file, for files a server streams rather than ones walked here.
pub fn relation_of(rel: &str) -> Option<Relation> {
    let (dir, name) = rel.rsplit_once('/')?;
    let (_, fork, segment) = relation_name(name).filter(|_| is_database_dir(dir))?;
    Some(Relation {
        segment,
        main_fork: fork.is_empty(),
    })
}

/// Temporary relations: `tBACKENDID_RELFILENODE[...]`.
fn is_temp_relation(name: &str) -> bool {
    name.strip_prefix('t')
        .and_then(|r| r.split_once('_'))
        .is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && relation_name(b).is_some()
        })
}

/// Whether files directly inside `rel_dir` are relation files of a database.
fn is_database_dir(rel_dir: &str) -> bool {
    let parts: Vec<&str> = rel_dir.split('/').collect();
    matches!(
        parts.as_slice(),
        ["base", _] | ["global"] | ["pg_tblspc", _, _, _]
    )
}

pub struct Walk {
    pub dirs: Vec<SourceDir>,
    pub files: Vec<SourceFile>,
}

/// Walks the data directory, following `pg_tblspc/OID` links into tablespaces, where
/// only this cluster's `tablespace_dir` (`PG_<major>_<catalog version>`) is copied:
/// another cluster or an old version may share the location.
pub fn walk(pgdata: &Path, tablespace_dir: &str) -> Result<Walk> {
    let mut out = Walk {
        dirs: Vec::new(),
        files: Vec::new(),
    };
    walk_dir(pgdata, &RelPath::root(), tablespace_dir, &mut out)?;
    Ok(out)
}

/// Walks one directory. Names that are not UTF-8 are copied like any other file (the
/// rules below concern PostgreSQL's own names, which are ASCII).
fn walk_dir(abs: &Path, here: &RelPath, tablespace_dir: &str, out: &mut Walk) -> Result<()> {
    let rel = here.text.as_str();
    let entries = match fs::read_dir(abs) {
        Ok(e) => e,
        // A directory dropped while we walk (DROP DATABASE) is simply gone.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read directory {}", abs.display()));
        }
    };
    let mut entries: Vec<std::ffi::OsString> = entries
        .map(|e| Ok(e?.file_name()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    let names: Vec<String> = entries
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let database_dir = is_database_dir(rel);
    let tablespace_root = rel
        .strip_prefix("pg_tblspc/")
        .is_some_and(|oid| !oid.contains('/'));
    // Unlogged relations: every fork except `_init` is left out (reset at recovery).
    let unlogged: HashSet<&str> = if database_dir {
        names
            .iter()
            .filter_map(|n| relation_name(n).filter(|r| r.1 == "init").map(|r| r.0))
            .collect()
    } else {
        HashSet::new()
    };
    for (name, os_name) in names.iter().zip(&entries) {
        let child = here.child(os_name);
        let child_abs = abs.join(os_name);
        let skipped = |list: &[&str]| list.contains(&name.as_str());
        if rel.is_empty() && (skipped(SKIP_TOP_FILES) || skipped(RECOVERY_SIGNALS)) {
            continue;
        }
        if name == "pg_internal.init"
            || name.starts_with("pgsql_tmp")
            || (tablespace_root && name != tablespace_dir)
        {
            continue;
        }
        // Follow symlinks (tablespaces, a linked pg_wal); a vanished entry is skipped.
        let meta = match fs::metadata(&child_abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot stat {}", child_abs.display()));
            }
        };
        if meta.is_dir() {
            out.dirs.push(SourceDir {
                rel: child.text.clone(),
                raw: child.raw(),
                mode: meta.permissions().mode() & 0o7777,
            });
            if rel.is_empty() && EMPTY_DIRS.contains(&name.as_str()) {
                if name == "pg_wal" {
                    out.dirs.push(SourceDir {
                        rel: "pg_wal/archive_status".into(),
                        raw: None,
                        mode: 0o700,
                    });
                }
                continue;
            }
            walk_dir(&child_abs, &child, tablespace_dir, out)?;
        } else if meta.is_file() {
            let relation = if database_dir {
                relation_name(name)
            } else {
                None
            };
            if database_dir && is_temp_relation(name) {
                continue;
            }
            if let Some((node, fork, _)) = relation
                && fork != "init"
                && unlogged.contains(node)
            {
                continue;
            }
            out.files.push(SourceFile {
                raw: child.raw(),
                rel: child.text,
                abs: child_abs,
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                mtime: meta.mtime(),
                relation: relation.map(|(_, fork, segment)| Relation {
                    segment,
                    main_fork: fork.is_empty(),
                }),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_names() {
        assert_eq!(relation_name("16384"), Some(("16384", "", 0)));
        assert_eq!(relation_name("16384_vm.3"), Some(("16384", "vm", 3)));
        assert_eq!(relation_name("PG_VERSION"), None);
        assert_eq!(relation_name("16384_xyz"), None);
        assert_eq!(relation_name("16384.32767").map(|r| r.2), Some(32767));
        assert_eq!(relation_name("16384.32768"), None);
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t3_16384_fsm.1"));
        assert!(!is_temp_relation("16384"));
        assert!(is_database_dir("base/5"));
        assert!(is_database_dir("pg_tblspc/16400/PG_15_202209061/5"));
        assert!(!is_database_dir("base"));
        assert!(relation_of("base/5/16384.2").is_some_and(|r| r.segment == 2 && r.main_fork));
        assert!(relation_of("pg_tblspc/1/PG_15_1/5/7_fsm").is_some_and(|r| !r.main_fork));
        assert!(
            relation_of("base/5/PG_VERSION").is_none() && relation_of("pg_xact/0000").is_none()
        );
    }

    #[test]
    fn exclusions() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "backup_label",
            "base/5/100",
            "base/5/200",
            "base/5/200_init",
            "base/5/200_fsm",
            "base/5/t3_300",
            "base/5/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/db.stat",
            "global/pg_control",
            "pg_tblspc/16400/PG_15_1/5/300",
            "pg_tblspc/16400/PG_14_0/5/300",
        ] {
            let p = d.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        let w = walk(d, "PG_15_1").unwrap();
        let files: Vec<&str> = w.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            files,
            vec![
                "PG_VERSION",
                "base/5/100",
                "base/5/200_init",
                "global/pg_control",
                "pg_tblspc/16400/PG_15_1/5/300"
            ]
        );
        let dirs: Vec<&str> = w.dirs.iter().map(|d| d.rel.as_str()).collect();
        assert!(
            dirs.contains(&"pg_wal")
                && dirs.contains(&"pg_wal/archive_status")
                && dirs.contains(&"pg_stat_tmp")
        );
        assert!(!dirs.contains(&"base/pgsql_tmp"));
        assert_eq!(w.files[1].relation.as_ref().map(|r| r.segment), Some(0));
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_as_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"d\xff");
        fs::create_dir(dir.path().join(odd)).unwrap();
        fs::write(dir.path().join(odd).join("f"), b"x").unwrap();
        let w = walk(dir.path(), "PG_15_1").unwrap();
        assert_eq!(w.dirs[0].raw.as_deref(), Some(&b"d\xff"[..]));
        assert_eq!(w.files[0].raw.as_deref(), Some(&b"d\xff/f"[..]));
        assert_eq!(w.files[0].rel, "d\u{FFFD}/f");
    }
}
