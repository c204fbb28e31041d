//! pg_tde (Percona's transparent data encryption) in a backup of the data directory.
//! pg_tde keeps its key material in `PGDATA/pg_tde` (`wal_keys` when it encrypts WAL,
//! `1664_providers` for the global key providers); the backup copies that directory
//! like any other.
//!
//! Invariant: a backup during which any file under `pg_tde/` changed (a key provider
//! or key created, changed or rotated) is never published: recovery from it may fail to
//! find a key, or corrupt encrypted relations while replaying the rotation.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// The directory pg_tde keeps its keys in, relative to the data directory.
const TDE_DIR: &str = "pg_tde";

/// The files under `pg_tde/` and the BLAKE3 hash of each, at one moment.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyFiles(BTreeMap<String, blake3::Hash>);

impl KeyFiles {
    /// The key files of the cluster at `pgdata`; `None` if it has no `pg_tde` directory.
    pub fn read(pgdata: &Path) -> Result<Option<KeyFiles>> {
        let dir = pgdata.join(TDE_DIR);
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut files = BTreeMap::new();
        hash_tree(&dir, "", &mut files)
            .with_context(|| format!("cannot read pg_tde's key files in {}", dir.display()))?;
        Ok(Some(KeyFiles(files)))
    }
}

fn hash_tree(
    dir: &Path,
    rel: &str,
    files: &mut BTreeMap<String, blake3::Hash>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = format!("{rel}{}", entry.file_name().to_string_lossy());
        if entry.file_type()?.is_dir() {
            hash_tree(&entry.path(), &format!("{name}/"), files)?;
        } else {
            files.insert(name, blake3::hash(&std::fs::read(entry.path())?));
        }
    }
    Ok(())
}

/// Whether pg_tde encrypts the cluster's WAL: its records cannot be read for the
/// blocks they change.
pub fn wal_encrypted(pgdata: &Path) -> bool {
    pgdata.join(TDE_DIR).join("wal_keys").exists()
}

/// Fails if the key files now differ from `at_start` (read before the backup started).
pub fn check_unchanged(at_start: Option<&KeyFiles>, pgdata: &Path) -> Result<()> {
    let now = KeyFiles::read(pgdata)?;
    if now.as_ref() == at_start {
        return Ok(());
    }
    let (before, after) = (
        at_start.map(|k| &k.0).cloned().unwrap_or_default(),
        now.map(|k| k.0).unwrap_or_default(),
    );
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|name| before.get(*name) != after.get(*name))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    bail!(
        "pg_tde's key files changed during the backup ({}: a key provider or key was created, changed or rotated), \
         so recovery from it could fail to find a key or corrupt encrypted data; the backup was not published: \
         take it again once the key change is done, and keep key rotations out of backup windows",
        changed
            .iter()
            .map(|n| format!("{TDE_DIR}/{n}"))
            .collect::<Vec<_>>()
            .join(", ")
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

        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("wal_keys"), b"k1").unwrap();
        std::fs::write(dir.join("sub/1664_providers"), b"p").unwrap();
        assert!(wal_encrypted(pgdata.path()));
        let start = KeyFiles::read(pgdata.path()).unwrap();
        check_unchanged(start.as_ref(), pgdata.path()).unwrap();

        std::fs::write(dir.join("wal_keys"), b"k2").unwrap();
        let err = check_unchanged(start.as_ref(), pgdata.path()).unwrap_err();
        assert!(format!("{err}").contains("(pg_tde/wal_keys:"), "{err}");
        std::fs::write(dir.join("wal_keys"), b"k1").unwrap();
        std::fs::remove_file(dir.join("sub/1664_providers")).unwrap();
        std::fs::write(dir.join("new"), b"n").unwrap();
        let err = format!(
            "{}",
            check_unchanged(start.as_ref(), pgdata.path()).unwrap_err()
        );
        assert!(
            err.contains("(pg_tde/new, pg_tde/sub/1664_providers:"),
            "{err}"
        );
    }
}
