//! pg_tde (Percona's transparent data encryption) in a backup of the data directory.
//! pg_tde keeps its key material in `PGDATA/pg_tde` (`wal_keys` when it encrypts WAL,
//! `1664_*` for the global key providers and their keys, and per database the keys of
//! its relations); the backup copies that directory like any other.
//!
//! Invariant: a backup during which the WAL key file or a global key file changed (a
//! global key provider or key created, changed or rotated, which pg_tde's documentation
//! forbids during a base backup) is never published: recovery from it may fail to find
//! a key, or corrupt encrypted relations while replaying the rotation. A database's own
//! key file changes with ordinary DDL on encrypted tables, which WAL replays, so a
//! change there does not stop a backup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// The directory pg_tde keeps its keys in, relative to the data directory.
const TDE_DIR: &str = "pg_tde";

/// The watched files of `pg_tde/` and the BLAKE3 hash of each, at one moment.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyFiles(BTreeMap<String, blake3::Hash>);

/// Whether a change of this file of `pg_tde/` during a backup breaks the backup.
fn is_watched(name: &str) -> bool {
    name == "wal_keys" || name.starts_with("1664_")
}

impl KeyFiles {
    /// The watched key files of the cluster at `pgdata`; `None` if it has no `pg_tde`.
    pub fn read(pgdata: &Path) -> Result<Option<KeyFiles>> {
        let dir = pgdata.join(TDE_DIR);
        let listed = match std::fs::read_dir(&dir) {
            Ok(listed) => listed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        let mut files = BTreeMap::new();
        for entry in listed {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_watched(&name) {
                continue;
            }
            match std::fs::read(entry.path()) {
                Ok(data) => {
                    files.insert(name, blake3::hash(&data));
                }
                // Removed meanwhile: a change the comparison shows.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read {}", entry.path().display()));
                }
            }
        }
        Ok(Some(KeyFiles(files)))
    }
}

/// Whether pg_tde encrypts the cluster's WAL: its records cannot be read for the
/// blocks they change.
pub fn wal_encrypted(pgdata: &Path) -> bool {
    pgdata.join(TDE_DIR).join("wal_keys").exists()
}

/// Fails if the watched key files now differ from `at_start` (read before the backup
/// started).
pub fn check_unchanged(at_start: Option<&KeyFiles>, pgdata: &Path) -> Result<()> {
    let now = KeyFiles::read(pgdata)?;
    if now.as_ref() == at_start {
        return Ok(());
    }
    let before = at_start.map(|k| k.0.clone()).unwrap_or_default();
    let after = now.map(|k| k.0).unwrap_or_default();
    let changed: BTreeSet<String> = before
        .keys()
        .chain(after.keys())
        .filter(|name| before.get(*name) != after.get(*name))
        .map(|name| format!("{TDE_DIR}/{name}"))
        .collect();
    bail!(
        "pg_tde's WAL key or global key files changed during the backup ({}: a global key provider or key was \
         created, changed or rotated), so recovery from it could fail to find a key or corrupt encrypted data; \
         the backup was not published: take it again once the key change is done, and keep key changes out of \
         backup windows",
        changed.into_iter().collect::<Vec<_>>().join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_added_or_removed_key_file_is_caught() {
        let pgdata = tempfile::tempdir().unwrap();
        let dir = pgdata.path().join(TDE_DIR);
        assert_eq!(KeyFiles::read(pgdata.path()).unwrap(), None);
        assert!(!wal_encrypted(pgdata.path()));
        check_unchanged(None, pgdata.path()).unwrap();

        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("wal_keys"), b"k1").unwrap();
        std::fs::write(dir.join("1664_providers"), b"p").unwrap();
        std::fs::write(dir.join("16384_keys"), b"relation keys").unwrap();
        assert!(wal_encrypted(pgdata.path()));
        let start = KeyFiles::read(pgdata.path()).unwrap();
        check_unchanged(start.as_ref(), pgdata.path()).unwrap();

        // A database's relation keys change with DDL, which WAL replays.
        std::fs::write(dir.join("16384_keys"), b"more relation keys").unwrap();
        check_unchanged(start.as_ref(), pgdata.path()).unwrap();

        std::fs::write(dir.join("wal_keys"), b"k2").unwrap();
        let err = format!(
            "{}",
            check_unchanged(start.as_ref(), pgdata.path()).unwrap_err()
        );
        assert!(err.contains("(pg_tde/wal_keys:"), "{err}");
        std::fs::write(dir.join("wal_keys"), b"k1").unwrap();
        std::fs::remove_file(dir.join("1664_providers")).unwrap();
        std::fs::write(dir.join("1664_keys"), b"n").unwrap();
        let err = format!(
            "{}",
            check_unchanged(start.as_ref(), pgdata.path()).unwrap_err()
        );
        assert!(
            err.contains("(pg_tde/1664_keys, pg_tde/1664_providers:"),
            "{err}"
        );
    }
}
