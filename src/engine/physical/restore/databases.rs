//! Restoring one database (for `restore-table`): its files, the template databases'
//! and every cluster-wide file are written; the other databases' relation files are
//! created at their size but empty (sparse), as pgBackRest's `--db-include` does.
//!
//! Why that is safe to replay: with `full_page_writes` the first change to each page
//! after the backup's start carries a full image of the page, so recovery never needs
//! the old contents of a page it rebuilds; and the server that replays is only ever
//! queried in the one database. The templates stay whole because a `CREATE DATABASE`
//! replayed with the `FILE_COPY` strategy copies them.

use std::collections::BTreeSet;

use crate::repo::manifest::{FileEntry, Manifest};

/// The databases whose files are written, or `None` for all of them: when the backup
/// does not list its databases (pgkeep before manifest version 4) or `database` is not
/// among them (created after the backup, so it may have been copied from any).
pub fn kept(manifest: &Manifest, database: &str) -> Option<BTreeSet<u32>> {
    manifest.databases.iter().find(|d| d.name == database)?;
    Some(
        manifest
            .databases
            .iter()
            .filter(|d| [database, "template0", "template1"].contains(&d.name.as_str()))
            .map(|d| d.oid)
            .collect(),
    )
}

/// Whether `file` is a relation file of a database not in `kept`, restored empty.
pub fn is_hollow(file: &FileEntry, kept: &BTreeSet<u32>) -> bool {
    relation_database(&file.path).is_some_and(|oid| !kept.contains(&oid))
}

/// The database of a relation file: `base/DB/FILE` or `pg_tblspc/TS/PG_…/DB/FILE`
/// where FILE is a relfilenode (digits, maybe a fork and a segment number). Other
/// files of a database directory (`PG_VERSION`, `pg_filenode.map`) are not relation
/// files and are always restored.
fn relation_database(path: &str) -> Option<u32> {
    let parts: Vec<&str> = path.split('/').collect();
    let (database, file) = match parts.as_slice() {
        ["base", db, file] => (db, file),
        ["pg_tblspc", _, _, db, file] => (db, file),
        _ => return None,
    };
    file.starts_with(|c: char| c.is_ascii_digit())
        .then(|| database.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_told_by_their_path() {
        assert_eq!(relation_database("base/16384/16385"), Some(16384));
        assert_eq!(relation_database("base/16384/16385_fsm"), Some(16384));
        assert_eq!(relation_database("base/16384/16385.1"), Some(16384));
        assert_eq!(
            relation_database("pg_tblspc/16400/PG_15_202209061/16384/16401"),
            Some(16384)
        );
        assert_eq!(relation_database("base/16384/PG_VERSION"), None);
        assert_eq!(relation_database("base/16384/pg_filenode.map"), None);
        assert_eq!(relation_database("global/1262"), None);
        assert_eq!(relation_database("pg_xact/0000"), None);
    }
}
