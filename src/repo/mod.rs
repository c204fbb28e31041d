//! The repository: storage backends, the object envelope, chunks and packs, manifests,
//! and the layout that ties them together. The format is specified in `docs/FORMAT.md`.
//!
//! ```text
//! pgkeep.repo                          repository marker: format version, encryption
//! keys/ID.slot                         key slots of an encrypted repository
//! CLUSTER/cluster.info                 system identifier, version, segment size
//! CLUSTER/backups/LABEL.manifest       published backups
//! CLUSTER/dumps/LABEL.dump             published logical backups (pg_dump archives)
//! CLUSTER/packs/XX/HASH.pack|.idx      chunk packs and their indexes
//! CLUSTER/packs/XX/HASH.damaged        chunks whose copies in that pack are corrupt
//! CLUSTER/wal/TTTTTTTT/NAME            WAL segments, .partial and .backup files
//! CLUSTER/wal/history/TTTTTTTT.history timeline history files
//! CLUSTER/streamed/NAME                receive-wal's newest copy of a segment still being streamed
//! CLUSTER/receivers/SLOT               what the receive-wal on that slot last reported
//! CLUSTER/pins/LABEL                   pinned backups
//! CLUSTER/proofs/LABEL/STAMP.proof     restore proofs of a backup (`prove`)
//! CLUSTER/history/YYYY-MM/STAMP-KIND.run  one record per backup, dump, expire, verify, proof run
//! CLUSTER/wal-window                   time before which backups keep only their own WAL
//! CLUSTER/wal-floor                    (older repositories) segment below which likewise
//! CLUSTER/locks/                       advisory lock files
//! ```

pub mod chunk_store;
pub mod codec;
pub mod encryption;
pub mod history;
pub mod index;
pub mod lease;
pub mod lock;
pub mod logical;
pub mod manifest;
pub mod object;
mod open;
pub mod pack;
pub mod proof;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use self::lease::LeaseLocks;
pub use self::open::{FORMAT_VERSION, OpenMode, SlotInfo, open};

use self::lock::{LockGuard, LockMode, LockService};
use self::logical::DumpManifest;
use self::manifest::Manifest;
use self::pack::ChunkHasher;
use self::storage::{LocalLocks, LocalStorage, ObjectMeta, ObjectStorage, RangeWindows, Storage};
use crate::config::{Location, RepositoryConfig};
use crate::format::lsn::Lsn;
use crate::format::wal::{WalFile, valid_segment_size};

/// What the repository knows about a cluster: set by `init`, checked by every command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterInfo {
    pub system_identifier: u64,
    pub pg_version: u32,
    pub wal_segment_size: u64,
}

/// `CLUSTER/wal-window`: backups that became consistent before `pitr_from` keep only the
/// WAL from their start to their stop.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WalWindow {
    pitr_from: DateTime<Utc>,
}

/// `CLUSTER/receivers/SLOT`: what the receive-wal streaming over that slot last
/// reported, for `info`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverStatus {
    pub slot: String,
    /// The server it streams from (`host:port`) and the machine it runs on.
    pub server: String,
    pub host: String,
    pub synchronous: bool,
    pub connected: bool,
    /// Why it is not connected, when it is not.
    pub error: Option<String>,
    pub timeline: u32,
    /// End of the WAL fsynced by the receiver, and of the WAL the server has.
    pub flushed: Lsn,
    pub server_end: Lsn,
    /// Bytes of WAL the slot held on the server when the receiver connected.
    pub slot_retained: u64,
    pub updated: DateTime<Utc>,
}

/// A repository opened for one cluster.
#[derive(Clone)]
pub struct ClusterRepo {
    /// Reached only through the layout below (and the chunk store), so every key is
    /// built inside `repo/`. Encrypting in an encrypted repository.
    pub(in crate::repo) storage: Arc<dyn Storage>,
    locks: Arc<dyn LockService>,
    pub name: String,
    /// The encryption of the repository, if it has any.
    pub(in crate::repo) crypt: Option<open::Crypt>,
    /// How chunk ids are computed (keyed in an encrypted repository).
    pub(in crate::repo) hasher: ChunkHasher,
}

/// Where a repository lives: its objects, and the locks that coordinate its writers.
#[derive(Clone)]
pub struct Backend {
    pub storage: Arc<dyn Storage>,
    pub locks: Arc<dyn LockService>,
}

impl Backend {
    /// The backend of the configured repository: a local directory with `flock(2)`
    /// locks, or object storage with lease objects.
    pub fn open(config: &RepositoryConfig) -> Result<Backend> {
        Ok(match &config.path {
            Location::Local(path) => Backend {
                storage: Arc::new(LocalStorage::new(path)),
                locks: Arc::new(LocalLocks::new(path)),
            },
            Location::Object(url) => {
                let storage: Arc<dyn Storage> =
                    Arc::new(RangeWindows::new(Arc::new(ObjectStorage::open(
                        url,
                        &config.options,
                        Duration::from_secs(config.retry_timeout),
                        config.cache_path.as_deref(),
                    )?)));
                Backend {
                    locks: Arc::new(LeaseLocks::new(storage.clone())),
                    storage,
                }
            }
        })
    }
}

impl ClusterRepo {
    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.name)
    }

    pub(in crate::repo) fn packs_prefix(&self) -> String {
        self.key("packs")
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(bytes) = self.storage.get(key)? else {
            return Ok(None);
        };
        let plain = object::decode(&bytes)
            .with_context(|| format!("repository object {key} is corrupt"))?;
        let value = serde_json::from_slice(&plain)
            .with_context(|| format!("repository object {key} is malformed"))?;
        Ok(Some(value))
    }

    pub fn info(&self) -> Result<Option<ClusterInfo>> {
        let info: Option<ClusterInfo> = self.get_json(&self.key("cluster.info"))?;
        if let Some(i) = &info
            && !valid_segment_size(i.wal_segment_size)
        {
            bail!(
                "repository object {}/cluster.info is malformed: WAL segment size {} is not a power of two from 1 MiB to 1 GiB",
                self.name,
                i.wal_segment_size
            );
        }
        Ok(info)
    }

    /// The registered cluster, or an error telling the user to run `init`.
    pub fn require_info(&self) -> Result<ClusterInfo> {
        self.info()?.with_context(|| {
            format!(
                "cluster '{}' is not registered in the repository; run `pgkeep init` first",
                self.name
            )
        })
    }

    /// Registers the cluster. Its WAL epoch starts with it, so that a catalog of a
    /// repository that was at this place before is not taken for this one's.
    pub fn put_info(&self, info: &ClusterInfo) -> Result<()> {
        self.storage.put(
            &self.key("cluster.info"),
            &object::encode(&serde_json::to_vec_pretty(info)?, 0)?,
        )?;
        self.new_wal_epoch()
    }

    fn manifest_key(&self, label: &str) -> String {
        self.key(&format!("backups/{label}.manifest"))
    }

    /// Labels of all published backups, oldest first (labels sort by time).
    pub fn backup_labels(&self) -> Result<Vec<String>> {
        self.labels_in("backups", ".manifest")
    }

    /// The labels of the objects `dir/LABEL{suffix}`, sorted.
    fn labels_in(&self, dir: &str, suffix: &str) -> Result<Vec<String>> {
        Ok(self
            .sized_in(dir, suffix)?
            .into_iter()
            .map(|(label, _)| label)
            .collect())
    }

    /// The labels of the objects `dir/LABEL{suffix}` with their sizes, sorted by label.
    fn sized_in(&self, dir: &str, suffix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = self.key(dir);
        let mut labels: Vec<(String, u64)> = self
            .storage
            .list(&prefix)?
            .iter()
            .filter_map(|o| {
                let label = o
                    .key
                    .strip_prefix(&format!("{prefix}/"))?
                    .strip_suffix(suffix)?;
                Some((label.to_string(), o.size))
            })
            .collect();
        // Sort the labels themselves: sorting keys puts `X-1.manifest` before `X.manifest`.
        labels.sort();
        Ok(labels)
    }

    /// Every published backup's label with the size of its manifest (which never
    /// changes once written), for the catalog.
    pub fn backup_sizes(&self) -> Result<Vec<(String, u64)>> {
        self.sized_in("backups", ".manifest")
    }

    /// As [`ClusterRepo::backup_sizes`], for logical backups.
    pub fn dump_sizes(&self) -> Result<Vec<(String, u64)>> {
        self.sized_in("dumps", ".dump")
    }

    pub fn load_manifest(&self, label: &str) -> Result<Manifest> {
        let manifest: Manifest = self.get_json(&self.manifest_key(label))?.with_context(|| {
            format!("backup '{label}' does not exist; `pgkeep info` lists the backups")
        })?;
        manifest
            .validate()
            .map_err(|e| anyhow::anyhow!("backup '{label}' has an invalid manifest: {e}"))?;
        Ok(manifest)
    }

    /// Every readable manifest; unreadable ones are reported and left out (`verify`
    /// names them), unless it is the one `named`, which must be readable.
    pub fn readable_manifests(&self, named: Option<&str>) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for label in self.backup_labels()? {
            match self.load_manifest(&label) {
                Ok(m) => out.push(m),
                Err(e) if named == Some(label.as_str()) => return Err(e),
                Err(e) => tracing::warn!("skipping backup {label}: {e:#}"),
            }
        }
        Ok(out)
    }

    /// Every manifest; any unreadable one is an error.
    pub fn manifests(&self) -> Result<Vec<Manifest>> {
        self.backup_labels()?
            .iter()
            .map(|l| self.load_manifest(l))
            .collect()
    }

    /// Publishes a backup. Called only when everything it refers to is durable.
    pub fn publish_manifest(&self, manifest: &Manifest) -> Result<()> {
        // What a restore would refuse is never published.
        manifest.validate().map_err(|e| {
            anyhow::anyhow!(
                "backup {} was not published, its manifest would be invalid: {e}",
                manifest.label
            )
        })?;
        self.publish_new(
            &self.manifest_key(&manifest.label),
            manifest,
            &manifest.label,
        )
    }

    /// Creates `key` holding `value`, never replacing an object.
    fn publish_new<T: Serialize>(&self, key: &str, value: &T, label: &str) -> Result<()> {
        let json = serde_json::to_vec(value)?;
        if self.storage.put_new(key, &object::encode(&json, 3)?)? {
            return Ok(());
        }
        // A create retried after a lost reply finds its own first attempt.
        let stored = self.storage.get(key)?.map(|b| object::decode(&b));
        if !matches!(stored, Some(Ok(ref plain)) if *plain == json) {
            bail!("backup '{label}' already exists");
        }
        Ok(())
    }

    fn dump_key(&self, label: &str) -> String {
        self.key(&format!("dumps/{label}.dump"))
    }

    /// Labels of all published logical backups, oldest first.
    pub fn dump_labels(&self) -> Result<Vec<String>> {
        self.labels_in("dumps", ".dump")
    }

    /// A logical backup's manifest; a physical backup's label gets its own error.
    pub fn load_dump(&self, label: &str) -> Result<DumpManifest> {
        let Some(dump) = self.get_json::<DumpManifest>(&self.dump_key(label))? else {
            if self.storage.exists(&self.manifest_key(label))? {
                bail!(
                    "'{label}' is a physical backup, not a logical one; restore it with `pgkeep restore --backup {label}`"
                );
            }
            bail!("logical backup '{label}' does not exist; `pgkeep info` lists the dumps");
        };
        dump.validate().map_err(|e| {
            anyhow::anyhow!("logical backup '{label}' has an invalid manifest: {e}")
        })?;
        Ok(dump)
    }

    /// Every logical backup's manifest; any unreadable one is an error.
    pub fn dumps(&self) -> Result<Vec<DumpManifest>> {
        self.dump_labels()?
            .iter()
            .map(|l| self.load_dump(l))
            .collect()
    }

    /// Removes a logical backup's manifest; its data stays until collection finds it
    /// unreferenced.
    pub fn delete_dump(&self, label: &str) -> Result<()> {
        self.storage.delete(&self.dump_key(label))
    }

    /// Publishes a logical backup. Called only when every chunk it refers to is durable.
    pub fn publish_dump(&self, dump: &DumpManifest) -> Result<()> {
        self.publish_new(&self.dump_key(&dump.label), dump, &dump.label)
    }

    /// Removes a backup's manifest: the backup no longer exists, its data stays until
    /// garbage collection finds it unreferenced. Its proofs go first, so none outlives
    /// it.
    pub fn delete_manifest(&self, label: &str) -> Result<()> {
        self.delete_proofs(label)?;
        self.storage.delete(&self.manifest_key(label))
    }

    fn pin_key(&self, label: &str) -> String {
        self.key(&format!("pins/{label}"))
    }

    /// Pins or unpins a backup or logical backup: no retention rule removes a pinned one.
    pub fn set_pinned(&self, label: &str, pinned: bool) -> Result<()> {
        if pinned {
            if !self.storage.exists(&self.dump_key(label))? {
                self.load_manifest(label)?;
            }
            self.storage
                .put(&self.pin_key(label), &object::encode(b"", 0)?)
        } else {
            self.storage.delete(&self.pin_key(label))
        }
    }

    /// Pins whose object is damaged, with why (a pin counts by its presence; a damaged
    /// one still pins, and `pgkeep pin` writes it again).
    pub fn damaged_pins(&self) -> Result<Vec<(String, anyhow::Error)>> {
        let mut out = Vec::new();
        for label in self.pinned()? {
            let decoded = self
                .storage
                .get(&self.pin_key(&label))
                .and_then(|o| o.context("it vanished while being read"))
                .and_then(|bytes| object::decode(&bytes));
            if let Err(e) = decoded {
                out.push((label, e));
            }
        }
        Ok(out)
    }

    pub fn pinned(&self) -> Result<std::collections::BTreeSet<String>> {
        let prefix = self.key("pins/");
        Ok(self
            .storage
            .list(&self.key("pins"))?
            .iter()
            .filter_map(|o| o.key.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }

    /// Removes what interrupted writes left behind. The caller holds the data lock
    /// exclusively, so no backup is writing packs or a manifest; an archive-push may be
    /// writing WAL at any time, so only WAL leftovers older than an hour go.
    pub fn remove_interrupted_writes(&self) -> Result<usize> {
        const WAL_WRITE_AGE: Duration = Duration::from_secs(3600);
        Ok(self
            .storage
            .remove_interrupted_writes(&self.packs_prefix(), Duration::ZERO)?
            + self
                .storage
                .remove_interrupted_writes(&self.key("backups"), Duration::ZERO)?
            + self
                .storage
                .remove_interrupted_writes(&self.key("dumps"), Duration::ZERO)?
            + self
                .storage
                .remove_interrupted_writes(&self.key("wal"), WAL_WRITE_AGE)?)
    }

    /// Held (shared) by every backup from before it reads the chunk index until its
    /// manifest is published, and by restore and verify while they read packs; garbage
    /// collection takes it exclusively, so it never removes data an unfinished backup
    /// is about to reference or a restore is reading.
    pub fn lock_data_shared(&self) -> Result<LockGuard> {
        Ok(self
            .locks
            .lock(&self.key("locks/data"), LockMode::Shared, true)?
            .expect("a waiting lock is always taken"))
    }

    pub fn try_lock_data_exclusive(&self) -> Result<Option<LockGuard>> {
        self.locks
            .lock(&self.key("locks/data"), LockMode::Exclusive, false)
    }

    /// Held by `backup`, so two never run at once for a cluster: a second would read the
    /// same changes and could store the same chunks twice.
    pub fn try_lock_backup(&self) -> Result<Option<LockGuard>> {
        self.locks
            .lock(&self.key("locks/backup"), LockMode::Exclusive, false)
    }

    /// Held by `expire`, so two never run at once.
    pub fn try_lock_expire(&self) -> Result<Option<LockGuard>> {
        self.locks
            .lock(&self.key("locks/expire"), LockMode::Exclusive, false)
    }

    /// The time before which backups were left only their own WAL by `expire` (the WAL
    /// window): `verify` does not report the gaps after them.
    pub fn wal_window(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .get_json::<WalWindow>(&self.key("wal-window"))?
            .map(|w| w.pitr_from))
    }

    /// Records the window; the segment floor older repositories kept goes with it.
    pub fn set_wal_window(&self, pitr_from: DateTime<Utc>) -> Result<()> {
        self.storage.put(
            &self.key("wal-window"),
            &object::encode(&serde_json::to_vec(&WalWindow { pitr_from })?, 0)?,
        )?;
        self.storage.delete(&self.key("wal-floor"))
    }

    /// What repositories written before `wal-window` recorded instead: the segment number
    /// below which `expire` removed WAL on purpose, on every timeline.
    pub fn wal_floor(&self) -> Result<Option<u64>> {
        self.get_json(&self.key("wal-floor"))
    }

    /// Where an archived WAL file is stored.
    fn wal_key(&self, file: &WalFile, name: &str) -> String {
        match file {
            WalFile::History { .. } => self.key(&format!("wal/history/{name}")),
            other => self.key(&format!("wal/{:08X}/{name}", other.timeline())),
        }
    }

    /// Every archived WAL file (segments, partials, backup and timeline history), with
    /// its name and parsed kind.
    pub fn wal_files(&self) -> Result<Vec<(String, WalFile, ObjectMeta)>> {
        Ok(wal_objects(self.storage.list(&self.key("wal"))?))
    }

    /// Removes archived WAL files. The WAL epoch moves on first, so that a catalog
    /// that listed them lists the WAL again rather than count them.
    pub fn delete_wal(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        self.new_wal_epoch()?;
        for name in names {
            let file =
                WalFile::parse(name).with_context(|| format!("'{name}' is not a WAL file name"))?;
            self.storage.delete(&self.wal_key(&file, name))?;
        }
        Ok(())
    }

    /// Changes when the cluster is registered and whenever archived WAL is removed on
    /// purpose ([`ClusterRepo::delete_wal`]); `None` in a repository written before it.
    pub fn wal_epoch(&self) -> Result<Option<String>> {
        self.get_json(&self.key("wal-epoch"))
    }

    fn new_wal_epoch(&self) -> Result<()> {
        let epoch = format!("{}-{}", Utc::now().to_rfc3339(), std::process::id());
        self.storage.put(
            &self.key("wal-epoch"),
            &object::encode(&serde_json::to_vec(&epoch)?, 0)?,
        )
    }

    /// The WAL files of `timeline` (segments, partials, backup history) whose names sort
    /// after `after` (every one for ""), as [`ClusterRepo::wal_files`] lists them.
    pub fn timeline_wal_files_after(
        &self,
        timeline: u32,
        after: &str,
    ) -> Result<Vec<(String, WalFile, ObjectMeta)>> {
        let prefix = self.key(&format!("wal/{timeline:08X}"));
        let after = match after {
            "" => String::new(),
            name => format!("{prefix}/{name}"),
        };
        Ok(wal_objects(self.storage.list_after(&prefix, &after)?))
    }

    /// The timelines that have a history file archived.
    pub fn history_timelines(&self) -> Result<Vec<u32>> {
        Ok(wal_objects(self.storage.list(&self.key("wal/history"))?)
            .into_iter()
            .filter_map(|(_, file, _)| match file {
                WalFile::History { timeline } => Some(timeline),
                _ => None,
            })
            .collect())
    }

    /// Whether WAL file `name` is in the archive.
    pub fn has_wal(&self, name: &str) -> Result<bool> {
        let file =
            WalFile::parse(name).with_context(|| format!("'{name}' is not a WAL file name"))?;
        self.storage.exists(&self.wal_key(&file, name))
    }

    /// Stores WAL file `name` (an encoded object) unless one is stored already;
    /// `Ok(false)` then, with nothing written.
    pub fn put_wal_new(&self, name: &str, object: &[u8]) -> Result<bool> {
        let file =
            WalFile::parse(name).with_context(|| format!("'{name}' is not a WAL file name"))?;
        self.storage.put_new(&self.wal_key(&file, name), object)
    }

    /// The stored object of WAL file `name`, unchecked; `None` if it is not archived.
    pub fn get_wal_object(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let file =
            WalFile::parse(name).with_context(|| format!("'{name}' is not a WAL file name"))?;
        self.storage.get(&self.wal_key(&file, name))
    }

    /// Where WAL file `name` is stored, for messages.
    pub fn describe_wal(&self, name: &str) -> String {
        match WalFile::parse(name) {
            Some(file) => self.wal_key(&file, name),
            None => name.to_string(),
        }
    }

    pub fn put_receiver_status(&self, status: &ReceiverStatus) -> Result<()> {
        let key = self.key(&format!("receivers/{}", status.slot));
        self.storage
            .put(&key, &object::encode(&serde_json::to_vec(status)?, 0)?)
    }

    /// What every receive-wal last reported; a record that does not read is skipped.
    pub fn receiver_statuses(&self) -> Result<Vec<ReceiverStatus>> {
        let mut out = Vec::new();
        for o in self.storage.list(&self.key("receivers"))? {
            match self.get_json::<ReceiverStatus>(&o.key) {
                Ok(Some(status)) => out.push(status),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping receiver record {}: {e:#}", o.key),
            }
        }
        Ok(out)
    }

    /// receive-wal's copy of segment `name` as far as it was streamed (an encoded
    /// object, zero-padded to the segment size), replacing the previous copy.
    pub fn put_streamed(&self, name: &str, object: &[u8]) -> Result<()> {
        self.storage.put(&self.streamed_key(name)?, object)
    }

    /// The streamed copy of segment `name`, checked; `None` if there is none.
    /// Segment `name` as archived, or else receive-wal's streamed copy of it (a segment
    /// not archived whole; recovery replays it to where streaming stopped).
    pub fn get_segment_or_streamed(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.get_wal(name)? {
            Some(data) => Ok(Some(data)),
            None => self.get_streamed(name),
        }
    }

    /// Whether receive-wal left a copy of segment `name`.
    pub fn has_streamed(&self, name: &str) -> Result<bool> {
        self.storage.exists(&self.streamed_key(name)?)
    }

    pub fn get_streamed(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let key = self.streamed_key(name)?;
        match self.storage.get(&key)? {
            None => Ok(None),
            Some(obj) => {
                Ok(Some(object::decode(&obj).with_context(|| {
                    format!("streamed WAL {name} ({key}) is corrupt")
                })?))
            }
        }
    }

    /// Removes the streamed copy of segment `name` (once the whole segment is archived).
    pub fn delete_streamed(&self, name: &str) -> Result<()> {
        self.storage.delete(&self.streamed_key(name)?)
    }

    fn streamed_key(&self, name: &str) -> Result<String> {
        match WalFile::parse(name) {
            Some(WalFile::Segment { .. }) => Ok(self.key(&format!("streamed/{name}"))),
            _ => bail!("'{name}' is not a WAL segment name"),
        }
    }

    /// Reads and checks an archived WAL file; `None` if it is not in the archive.
    pub fn get_wal(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let file =
            WalFile::parse(name).with_context(|| format!("'{name}' is not a WAL file name"))?;
        let key = self.wal_key(&file, name);
        match self.storage.get(&key)? {
            None => Ok(None),
            Some(obj) => Ok(Some(object::decode(&obj).with_context(|| {
                format!("archived WAL file {name} ({key}) is corrupt")
            })?)),
        }
    }
}

/// The listed objects that are WAL files, with their names and kinds.
fn wal_objects(listed: Vec<ObjectMeta>) -> Vec<(String, WalFile, ObjectMeta)> {
    listed
        .into_iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next()?.to_string();
            let file = WalFile::parse(&name)?;
            Some((name, file, o))
        })
        .collect()
}
