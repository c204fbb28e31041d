//! `backup`: an online physical backup, read straight from the data directory or
//! streamed by the server over a replication connection (`remote`).
//!
//! Pipeline: N workers read files (up to their size at listing time), validate page
//! checksums, cut them into chunks, hash and compress the chunks not yet in the
//! repository, and hand them to one pack writer. The manifest is published last, and
//! only once every WAL segment from the backup's start to its stop is archived.
//!
//! With a parent backup (see `parent`), files and chunks proven unchanged since the
//! parent started are taken from it without reading.

mod changes;
mod parent;
mod reader;
mod remote;
mod replicate;
mod source;
mod summary;
mod tde;
mod walchanges;

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use indicatif::ProgressBar;

use self::changes::ChangedBlocks;
use self::parent::Parent;
use self::reader::{FileReader, Stats};
use self::remote::Remote;
pub use self::replicate::{Replicated, replicate};
use self::source::{DataDirectory, Server, Source, Stop, epoch_to_time};
use crate::config::BackupSource;
use crate::engine::wal::archive::{self, wait_for_wal};
use crate::engine::wal::timelines;
use crate::engine::{Context, human_bytes};
use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::format::wal::{SegmentSize, WalFile};
use crate::format::{control, label, tablespace_map};
use crate::pg::session::BackupStop;
use crate::repo::ClusterInfo;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::manifest::{FileEntry, MANIFEST_VERSION, Manifest, TablespaceEntry};

/// Files are cut into chunks of this size: small enough that an incremental backup
/// stores little for a scattered change, large enough to compress well.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Checks that the copied `pg_control` belongs to the server that ran the backup: the
/// same system, in production (in archive recovery for a standby), with the checkpoint
/// (restartpoint) `pg_backup_start` used or a later one. A standby behind the primary's
/// host name and path (after a failover) fails this, and so does the reverse.
fn check_control_file(ctx: &Context, bytes: &[u8], server: &Server, checkpoint: Lsn) -> Result<()> {
    let control = control::parse(bytes).context("the copied global/pg_control is too short")?;
    let state = if server.standby {
        control::DB_IN_ARCHIVE_RECOVERY
    } else {
        control::DB_IN_PRODUCTION
    };
    if control.system_identifier != server.system_identifier
        || control.state != state
        || control.checkpoint < checkpoint
    {
        bail!(
            "the files in {} are not those of the server at `connection` (pg_control: system {}, state {}, checkpoint {} \
             before the backup's {checkpoint}); point `connection` and `pgdata` at the same server. The backup was not published",
            (ctx.cluster.pgdata.as_deref())
                .map_or("the stream".into(), |p| p.display().to_string()),
            control.system_identifier,
            control.state,
            control.checkpoint
        );
    }
    Ok(())
}

/// The tablespaces a backup contains, from the `tablespace_map` that `pg_backup_stop`
/// returned, named from the catalog where it knows them.
fn parse_tablespace_map(map: &str, names: &HashMap<u32, String>) -> Result<Vec<TablespaceEntry>> {
    let entries = tablespace_map::parse(map)
        .map_err(|e| anyhow!("pg_backup_stop returned a tablespace_map pgkeep cannot read: {e}"))?;
    Ok(entries
        .into_iter()
        .map(|e| TablespaceEntry {
            oid: e.oid,
            name: names
                .get(&e.oid)
                .cloned()
                .unwrap_or_else(|| e.oid.to_string()),
            location: e.path,
        })
        .collect())
}

/// Archives the current timeline's history file if the archive lacks it (a failover
/// before this cluster was archived by pgkeep): recovery along the timeline needs it.
fn archive_history_file(ctx: &Context, source: &mut impl Source, timeline: u32) -> Result<()> {
    if timeline == 1 {
        return Ok(());
    }
    if let Some((name, data)) = source.timeline_history(timeline)?
        && ctx.repo.get_wal_object(&name)?.is_none()
    {
        let file = WalFile::parse(&name).context("a history file name parses")?;
        archive::store(ctx, &name, &file, &data)?;
    }
    Ok(())
}

/// The blocks changed between the parent's start (`from`) and this backup's (`to`), from
/// WAL summaries where the server keeps them, or else from the WAL; `None` if neither
/// can show every change. The WAL is not scanned when there is more of it than data
/// (the source's size): reading the changed files is then cheaper; nor when pg_tde
/// encrypts it.
fn changed_blocks(
    ctx: &Context,
    source: &mut impl Source,
    path: &TimelinePath,
    seg: SegmentSize,
    Range {
        start: from,
        end: to,
    }: Range<Lsn>,
) -> Result<Option<ChangedBlocks>> {
    let started = Instant::now();
    let tablespace_dir = source.server().tablespace_dir.clone();
    let (data_size, wal_encrypted) = (source.size(), source.wal_encrypted());
    let session = source.session();
    // Block numbers map to files and chunks only with 8 KiB pages in 1 GB files.
    let layout = session.text(
        "SELECT current_setting('block_size') || ' ' || pg_size_bytes(current_setting('segment_size'))",
    )?;
    if layout != "8192 1073741824" {
        tracing::info!(
            "pages and relation files of other sizes ({layout}): reading every changed file"
        );
        return Ok(None);
    }
    let empty = || ChangedBlocks::new(&tablespace_dir, CHUNK_SIZE as u64);
    // Changes on the current timeline's history: its ancestors and itself.
    let timelines: Vec<u32> = path
        .ancestors
        .iter()
        .map(|a| a.timeline)
        .chain([path.timeline])
        .collect();
    let wait = Duration::from_secs(ctx.config.backup.archive_timeout);
    let changes = match summary::query(session, from, to, &timelines, wait, empty())? {
        Some(changes) => Some(changes),
        None if wal_encrypted => {
            tracing::info!("pg_tde encrypts the WAL: reading every changed file");
            None
        }
        None if to.0.saturating_sub(from.0) > data_size => {
            tracing::info!(
                "{} of WAL since the parent, more than the data: reading every changed file",
                human_bytes(to.0.saturating_sub(from.0))
            );
            None
        }
        None => walchanges::scan(ctx, seg, path, from, to, empty()),
    };
    tracing::info!(
        "changed blocks since {from} {} in {:.2} s",
        if changes.is_some() {
            "known"
        } else {
            "unknown"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(changes)
}

/// What `backup` did, for the summary line.
pub struct BackupOutcome {
    pub manifest: Manifest,
    pub read: u64,
    pub unread: u64,
    /// Bytes of chunks the repository did not have (before compression).
    pub new: u64,
    /// Chunks stored again because their stored copy was corrupt.
    pub stored_again: usize,
}

/// Takes a backup and returns its published manifest. Incremental when the repository
/// has a usable parent, unless `full` is set.
pub fn backup(ctx: &Context, full: bool, progress: &ProgressBar) -> Result<BackupOutcome> {
    let info = ctx.repo.require_info()?;
    let _backing_up = ctx.repo.try_lock_backup()?.with_context(|| {
        format!(
            "another `pgkeep backup` of cluster '{}' is running; wait for it to finish",
            ctx.cluster_name
        )
    })?;
    match ctx.cluster.backup_source() {
        BackupSource::DataDirectory => {
            let mut source = DataDirectory::connect(ctx, &info)?;
            take(ctx, &info, &mut source, full, progress)
        }
        BackupSource::Replication => {
            let mut source = Remote::connect(ctx, &info)?;
            take(ctx, &info, &mut source, full, progress)
        }
    }
}

/// Takes a backup from `source`: the phases every source shares.
fn take(
    ctx: &Context,
    info: &ClusterInfo,
    source: &mut impl Source,
    full: bool,
    progress: &ProgressBar,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    // Held until the manifest is published: garbage collection cannot remove chunks this
    // backup finds in the index and refers to.
    let _data_lock = ctx.repo.lock_data_shared()?;
    let store = ChunkStore::open(&ctx.repo)?;
    store.write_missing_indexes()?;
    let label = ctx.new_label("")?;
    let seg = SegmentSize(info.wal_segment_size);
    // A source that needs the parent to start (a server sending what changed) has it
    // chosen on the timeline the server is on. The timeline's history is archived
    // first: the parent may lie on an earlier timeline.
    let early_timeline = source.timeline_before_start();
    if let Some(timeline) = early_timeline {
        archive_history_file(ctx, source, timeline)?;
    }
    let early = (early_timeline)
        .map(|timeline| choose_parent(ctx, source.server(), timeline, full))
        .transpose()?;
    let start = source.start(&label, early.as_ref().and_then(|(_, p)| p.as_ref()))?;
    tracing::info!(
        "backup {label} started at {} on timeline {}",
        start.lsn,
        start.timeline
    );
    if early_timeline != Some(start.timeline) {
        archive_history_file(ctx, source, start.timeline)?;
    }
    // A standby's backup may start on the timeline of its last restartpoint, older than
    // the one it replays; a server that took the parent (it checks the parent's WAL
    // against its history) keeps it, else the parent is chosen for the start's timeline.
    let (path, parent) = match early {
        Some(chosen) if start.from_parent || chosen.0.timeline == start.timeline => chosen,
        _ => choose_parent(ctx, source.server(), start.timeline, full)?,
    };
    let size = source.size();
    progress.set_length(size);
    let changed = match &parent {
        Some(p) if source.skips_unchanged() => {
            changed_blocks(ctx, source, &path, seg, p.start_lsn()..start.lsn)?
        }
        _ => None,
    };

    // From here every path finishes the chunk writer before returning.
    let chunks = store.writer(ctx.repo_config.compress_level, full);
    let stats = Stats::default();
    let reader = FileReader {
        chunks: &chunks,
        checksums_from: source.server().data_checksums.then_some(start.lsn),
        parent: parent.as_ref(),
        changed: changed.as_ref(),
        progress,
        stats: &stats,
    };
    let copied = (|| -> Result<(Vec<FileEntry>, Stop)> {
        let entries = source.copy(&reader, ctx.config.jobs())?;
        Ok((entries, source.stop(&chunks)?))
    })();
    // A writer failure explains a worker's "pack writer stopped", so report it first.
    let written = chunks.finish()?;
    let (mut entries, stop) = copied?;
    progress.finish_and_clear();

    let parsed = check_stop(ctx, source.server(), &stop)?;
    wait_for_backup_wal(ctx, seg, &label, &parsed, stop.stop.stop_lsn)?;
    entries.extend(stop.entries);
    entries.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut manifest = Manifest {
        version: MANIFEST_VERSION,
        label,
        parent: parent.map(|p| p.label),
        system_identifier: source.server().system_identifier,
        pg_version: source.server().version_num,
        timeline: parsed.start_timeline,
        start_lsn: parsed.start_lsn,
        checkpoint_lsn: parsed.checkpoint_lsn,
        stop_lsn: stop.stop.stop_lsn,
        start_time: start.time,
        stop_time: epoch_to_time(stop.time),
        wal_segment_size: info.wal_segment_size,
        chunk_size: CHUNK_SIZE as u64,
        snapshot_at_stop: stop.snapshot,
        data_checksums: source.server().data_checksums,
        size: entries.iter().map(|f| f.size).sum(),
        stored_size: written.stored_bytes,
        tablespaces: tablespaces(&stop.stop, source.server())?,
        databases: start.databases,
        directories: source.directories(),
        files: entries,
    };
    manifest.version = manifest.needed_version();
    ctx.repo.publish_manifest(&manifest)?;
    tracing::info!(
        "backup {} published after {:.1} s",
        manifest.label,
        started.elapsed().as_secs_f64()
    );
    Ok(BackupOutcome {
        manifest,
        read: Stats::get(&stats.read),
        unread: Stats::get(&stats.unread),
        new: Stats::get(&stats.stored),
        stored_again: written.stored_again,
    })
}

/// The timeline path of `timeline` as the repository knows it, and the backup on it to
/// take unchanged data from (none with `full`).
fn choose_parent(
    ctx: &Context,
    server: &Server,
    timeline: u32,
    full: bool,
) -> Result<(TimelinePath, Option<Parent>)> {
    let path = timelines::timeline_paths(&ctx.repo)?
        .remove(&timeline)
        .unwrap_or_else(|| TimelinePath::single(timeline));
    let parent = match full {
        true => None,
        false => Parent::choose(
            ctx.repo.readable_manifests(None)?,
            &path,
            server.version_num / 10000,
            CHUNK_SIZE as u64,
            server.data_checksums,
        ),
    };
    Ok((path, parent))
}

/// Checks what the server returned at the stop and the copied `pg_control`; returns the
/// parsed label.
fn check_stop(ctx: &Context, server: &Server, stop: &Stop) -> Result<label::BackupLabel> {
    let parsed = label::parse(&stop.stop.label_file)
        .map_err(|e| anyhow!("pg_backup_stop returned a bad label: {e}"))?;
    check_control_file(ctx, &stop.control, server, parsed.checkpoint_lsn)?;
    Ok(parsed)
}

/// Waits until every WAL segment from the backup's start to its stop is archived: the
/// backup restores only with them, so it is not published before.
fn wait_for_backup_wal(
    ctx: &Context,
    seg: SegmentSize,
    label: &str,
    parsed: &label::BackupLabel,
    stop_lsn: Lsn,
) -> Result<()> {
    let timeout = Duration::from_secs(ctx.config.backup.archive_timeout);
    let waiting = std::time::Instant::now();
    for segno in seg.segno(parsed.start_lsn)..=seg.segno_before(stop_lsn) {
        let name = seg.name(parsed.start_timeline, segno);
        if !wait_for_wal(ctx, &name, timeout)? {
            bail!(
                "WAL segment {name}, needed to restore backup {label}, did not reach the archive within {} s; \
                 the backup was not published: run `pgkeep check` and look at the PostgreSQL log for archive_command errors",
                timeout.as_secs()
            );
        }
    }
    tracing::info!(
        "backup {label}: its WAL was in the archive after {:.1} s",
        waiting.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The tablespaces the backup holds, from the map the stop returned.
fn tablespaces(stop: &BackupStop, server: &Server) -> Result<Vec<TablespaceEntry>> {
    Ok(stop
        .tablespace_map
        .as_deref()
        .map(|map| parse_tablespace_map(map, &server.tablespace_names))
        .transpose()?
        .unwrap_or_default())
}
