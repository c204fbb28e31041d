//! Where a backup's bytes come from. A source starts the backup on the server, hands
//! every file to the pipeline, and stops the backup; what follows (chunks, WAL, the
//! manifest) is the same whatever the source: the data directory, read while an SQL
//! session holds `pg_backup_start` (here), or a `BASE_BACKUP` stream over the
//! replication protocol (`remote`).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};

use super::parent::Parent;
use super::reader::{FileReader, store_file};
use super::tde;
use crate::engine::physical::walk::{self, SourceDir, SourceFile};
use crate::engine::{Context, parallel_map};
use crate::format::lsn::Lsn;
use crate::pg::session::{BackupStop, Session};
use crate::repo::ClusterInfo;
use crate::repo::chunk_store::ChunkWriter;
use crate::repo::manifest::{DatabaseEntry, DirectoryEntry, FileEntry, path_bytes};

/// What the server said when the backup started.
pub struct Start {
    pub lsn: Lsn,
    pub timeline: u32,
    pub time: DateTime<Utc>,
    /// `pg_database` right after the start.
    pub databases: Vec<DatabaseEntry>,
    /// Whether the server sends only what changed since the parent given to the start.
    pub from_parent: bool,
}

/// What the backup ends with: the files stored last (`global/pg_control`, then
/// `backup_label` and `tablespace_map` as the server returned them), what the server
/// returned, the snapshot and time right after it, and the copied `pg_control`.
pub struct Stop {
    pub entries: Vec<FileEntry>,
    pub stop: BackupStop,
    pub snapshot: String,
    pub time: f64,
    pub control: Vec<u8>,
}

/// The server a backup is taken from, as checked when connecting.
pub struct Server {
    pub system_identifier: u64,
    /// A hot standby: the backup is taken there (PostgreSQL allows `pg_backup_start` on
    /// a standby), its WAL comes from the archive the standby or a receiver fills.
    pub standby: bool,
    pub version_num: u32,
    pub data_checksums: bool,
    /// Tablespace OID → name, from the catalog.
    pub tablespace_names: HashMap<u32, String>,
    /// The per-version directory inside each tablespace (`PG_18_202406281`).
    pub tablespace_dir: String,
}

/// A source of a physical backup.
pub trait Source {
    /// The server, as checked when connecting.
    fn server(&self) -> &Server;
    /// An SQL session to the server (WAL summaries, settings).
    fn session(&mut self) -> &mut Session;
    /// The history file of `timeline` as the server has it (name, content), if any.
    fn timeline_history(&mut self, timeline: u32) -> Result<Option<(String, Vec<u8>)>>;
    /// Starts the backup on the server (a checkpoint): from here the copy, with the WAL
    /// from the start on, is consistent.
    fn start(&mut self, label: &str, parent: Option<&Parent>) -> Result<Start>;
    /// The timeline the server is on, for a source whose start needs the parent.
    fn timeline_before_start(&self) -> Option<u32> {
        None
    }
    /// The bytes the copy covers at most, known once started.
    fn size(&self) -> u64;
    /// Stores every file except those [`Source::stop`] stores.
    fn copy(&mut self, reader: &FileReader, jobs: usize) -> Result<Vec<FileEntry>>;
    /// Stores `global/pg_control` (last, as `pg_basebackup` does), stops the backup on
    /// the server, and stores the label and tablespace map it returned.
    fn stop(&mut self, chunks: &ChunkWriter) -> Result<Stop>;
    /// The directories of the backup, for the manifest.
    fn directories(&self) -> Vec<DirectoryEntry>;
    /// Whether pg_tde encrypts the WAL the backup's changes are in.
    fn wal_encrypted(&self) -> bool;
    /// Whether the source can leave out what is unchanged since the parent (files it
    /// reads itself); a server's stream holds everything whatever is asked.
    fn skips_unchanged(&self) -> bool {
        true
    }
}

/// The data directory of the configured cluster, read while the SQL session that called
/// `pg_backup_start` stays open (if pgkeep dies, the server ends the backup itself).
pub struct DataDirectory {
    session: Session,
    server: Server,
    pgdata: PathBuf,
    files: Vec<SourceFile>,
    pg_control: Option<SourceFile>,
    dirs: Vec<SourceDir>,
    /// pg_tde's key files as they were before the backup started.
    tde_keys: Option<tde::KeyFiles>,
}

impl Server {
    /// The server behind `session`, checked to be the repository's cluster.
    pub fn of(ctx: &Context, info: &ClusterInfo, session: &mut Session) -> Result<Server> {
        let system_identifier = session.system_identifier()?;
        if system_identifier != info.system_identifier {
            bail!(
                "the server is database system {system_identifier} but repository cluster '{}' is {}; check `connection`",
                ctx.cluster_name,
                info.system_identifier
            );
        }
        Ok(Server {
            system_identifier,
            standby: session.in_recovery()?,
            version_num: session.version_num,
            data_checksums: session.setting("data_checksums")? == "on",
            tablespace_names: session
                .tablespaces()?
                .into_iter()
                .map(|t| (t.oid, t.name))
                .collect(),
            tablespace_dir: format!(
                "PG_{}_{}",
                session.version_num / 10000,
                session.text("SELECT catalog_version_no::text FROM pg_control_system()")?
            ),
        })
    }
}

impl DataDirectory {
    /// Connects to the cluster's server and checks it is the registered cluster whose
    /// data directory is the configured `pgdata`.
    pub fn connect(ctx: &Context, info: &ClusterInfo) -> Result<DataDirectory> {
        let mut session = ctx.connect()?;
        let server = Server::of(ctx, info, &mut session)?;
        ctx.check_data_directory(&mut session)?;
        let pgdata = ctx.cluster.pgdata.clone().with_context(|| {
            format!(
                "cluster '{}' has backup_source = \"data_directory\" but no pgdata; set pgdata, or remove backup_source to back up over replication",
                ctx.cluster_name
            )
        })?;
        Ok(DataDirectory {
            session,
            server,
            pgdata,
            files: Vec::new(),
            pg_control: None,
            dirs: Vec::new(),
            tde_keys: None,
        })
    }
}

pub fn epoch_to_time(secs: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((secs * 1e6) as i64).unwrap_or_default()
}

impl Source for DataDirectory {
    fn server(&self) -> &Server {
        &self.server
    }

    fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    fn timeline_history(&mut self, timeline: u32) -> Result<Option<(String, Vec<u8>)>> {
        let name = crate::format::wal::WalFile::history_name(timeline);
        let path = self.pgdata.join("pg_wal").join(&name);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some((name, data))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn start(&mut self, label: &str, _: Option<&Parent>) -> Result<Start> {
        let time = epoch_to_time(self.session.now()?);
        self.tde_keys = tde::KeyFiles::read(&self.pgdata)?;
        let lsn = self.session.backup_start(label)?;
        let timeline = self
            .session
            .text("SELECT timeline_id::text FROM pg_control_checkpoint()")?
            .parse()?;
        let databases = (self.session.databases()?.into_iter())
            .map(|(oid, name)| DatabaseEntry { oid, name })
            .collect();
        // Listed after the start: every file the copy must hold exists by now.
        let listing = walk::walk(&self.pgdata, &self.server.tablespace_dir)?;
        let (mut files, mut pg_control): (Vec<_>, Vec<_>) = listing
            .files
            .into_iter()
            .partition(|f| f.rel != "global/pg_control");
        files.sort_by_key(|f| std::cmp::Reverse(f.size));
        self.files = files;
        self.pg_control = pg_control.pop();
        self.dirs = listing.dirs;
        Ok(Start {
            lsn,
            timeline,
            time,
            databases,
            from_parent: false,
        })
    }

    fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    fn copy(&mut self, reader: &FileReader, jobs: usize) -> Result<Vec<FileEntry>> {
        let files = std::mem::take(&mut self.files);
        Ok(
            parallel_map(files, jobs, |src, stop| reader.backup_file(&src, stop))?
                .into_iter()
                .flatten()
                .collect(),
        )
    }

    fn stop(&mut self, chunks: &ChunkWriter) -> Result<Stop> {
        let control_src = self
            .pg_control
            .as_ref()
            .context("global/pg_control is missing from the data directory")?;
        let control = std::fs::read(&control_src.abs)
            .with_context(|| format!("cannot read {}", control_src.abs.display()))?;
        let mut entries = vec![store_file(
            chunks,
            "global/pg_control",
            &control,
            control_src.mode,
            control_src.mtime,
        )?];
        let stop = self.session.backup_stop()?;
        tde::check_unchanged(self.tde_keys.as_ref(), &self.pgdata)?;
        let snapshot = self.session.snapshot()?;
        let time = self.session.now()?;
        entries.push(store_file(
            chunks,
            "backup_label",
            stop.label_file.as_bytes(),
            0o600,
            time as i64,
        )?);
        if let Some(map) = &stop.tablespace_map {
            entries.push(store_file(
                chunks,
                "tablespace_map",
                map.as_bytes(),
                0o600,
                time as i64,
            )?);
        }
        Ok(Stop {
            entries,
            stop,
            snapshot,
            time,
            control,
        })
    }

    fn wal_encrypted(&self) -> bool {
        tde::wal_encrypted(&self.pgdata)
    }

    fn directories(&self) -> Vec<DirectoryEntry> {
        self.dirs
            .iter()
            .map(|d| DirectoryEntry {
                path_bytes: path_bytes(d.raw.as_deref()),
                path: d.rel.clone(),
                mode: d.mode,
            })
            .collect()
    }
}
