//! `restore`: rebuild a data directory from a backup and set it up to recover to a target.
//!
//! Everything that can be checked is checked before the target directory is touched:
//! the directory is empty, the backup is complete in the repository, the WAL it needs to
//! become consistent is archived, and the target is reachable from it. `global/pg_control`
//! is written last, so a restore that stops half-way leaves a directory PostgreSQL refuses
//! to start.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, FixedOffset};
use indicatif::ProgressBar;

use super::target::{self, Target, TimelineChoice};
use crate::engine::Context;
use crate::engine::wal::{scan as walscan, timelines};
use crate::format::history::TimelinePath;
use crate::format::wal::SegmentSize;
use crate::os::sync_dir;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::index::ChunkIndex;
use crate::repo::manifest::{FileEntry, Manifest};

use self::files::{Filesystems, restore_file, syncfs_reports_errors, write_files, write_hollow};
use self::settings::{write_recovery_settings, write_tablespace_map};

mod databases;
mod files;
mod settings;

pub use self::settings::restore_command;

pub struct RestoreOptions {
    pub pgdata: PathBuf,
    pub backup: Option<String>,
    pub target: Target,
    pub action: Option<String>,
    pub timeline: TimelineChoice,
    /// Tablespace relocations, old location → new location.
    pub tablespace_map: Vec<(String, String)>,
    /// Every tablespace not in `tablespace_map` goes to `DIR/OID` (a scratch restore
    /// beside the live cluster, whose tablespaces are in use).
    pub tablespaces_into: Option<PathBuf>,
    /// Whether the restored server archives WAL (`--archive on|off`); by default only a
    /// restore into the cluster's own configured `pgdata` does.
    pub archive: Option<bool>,
    /// Restore only this database's files (and the cluster-wide ones); the other
    /// databases' relation files are left empty ([`databases`]).
    pub only_database: Option<String>,
}

pub struct RestoreSummary {
    pub label: String,
    pub bytes: u64,
    pub files: usize,
    pub seconds: f64,
    /// The directory restored into is the cluster's configured `pgdata`.
    pub in_place: bool,
    /// The restored server keeps `archive_mode` as the backup had it.
    pub archiving: bool,
    /// The backup holds pg_tde's keys (`pg_tde/`), which need their key provider.
    pub tde_keys: bool,
}

/// Whether two paths name the same directory. Either may not exist yet: then its
/// parent is resolved (links and all) and its name appended.
fn same_directory(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        p.canonicalize()
            .or_else(|_| match (p.parent(), p.file_name()) {
                (Some(parent), Some(name)) => parent.canonicalize().map(|d| d.join(name)),
                _ => Err(std::io::ErrorKind::NotFound.into()),
            })
            .unwrap_or(p)
    };
    resolve(a) == resolve(b)
}

/// Whether a failed restore into `pgdata` left it as an empty or missing directory, so
/// that another repository may restore there.
pub fn nothing_written(pgdata: &Path) -> bool {
    is_empty_dir(pgdata).unwrap_or(false)
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The new location of each tablespace OID.
fn tablespace_locations(
    manifest: &Manifest,
    map: &[(String, String)],
    into: Option<&Path>,
) -> Result<BTreeMap<u32, String>> {
    for (old, new) in map {
        if !manifest.tablespaces.iter().any(|t| &t.location == old) {
            bail!(
                "--tablespace-map names {old}, but backup {} has no tablespace there (it has: {})",
                manifest.label,
                manifest
                    .tablespaces
                    .iter()
                    .map(|t| t.location.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !Path::new(new).is_absolute() {
            bail!("--tablespace-map target {new} must be an absolute path");
        }
    }
    let mut out = BTreeMap::new();
    for t in &manifest.tablespaces {
        let new = map
            .iter()
            .find(|(old, _)| old == &t.location)
            .map(|(_, n)| n.clone())
            .or_else(|| into.map(|dir| dir.join(t.oid.to_string()).to_string_lossy().into_owned()))
            .unwrap_or_else(|| t.location.clone());
        if !is_empty_dir(Path::new(&new))? {
            bail!(
                "tablespace {} would be restored into {new}, which is not empty; empty it or relocate it with --tablespace-map {}=NEWDIR",
                t.name,
                t.location
            );
        }
        out.insert(t.oid, new);
    }
    Ok(out)
}

/// Checks, before anything is written, that the backup and the WAL it needs are there.
fn preflight(ctx: &Context, manifest: &Manifest, index: &ChunkIndex) -> Result<()> {
    for f in &manifest.files {
        let Some(lost) = f.chunks.iter().find(|c| !index.chunks.contains_key(c)) else {
            continue;
        };
        if index.damaged.contains_key(lost) {
            bail!(
                "backup {} is damaged: chunk {lost} of {} is corrupt in the repository (found by verify or a full backup); \
                 restore another backup, or run `pgkeep verify` if the repository was repaired since",
                manifest.label,
                f.path
            );
        }
        bail!(
            "backup {} is damaged: chunk {lost} of {} is missing from the repository; run `pgkeep verify` and restore another backup",
            manifest.label,
            f.path
        );
    }
    let seg = SegmentSize(manifest.wal_segment_size);
    for segno in seg.segno(manifest.start_lsn)..=seg.segno_before(manifest.stop_lsn) {
        let name = seg.name(manifest.timeline, segno);
        if !ctx.repo.has_wal(&name)? {
            bail!(
                "WAL segment {name}, which backup {} needs to become consistent, is missing from the archive; restore another backup",
                manifest.label
            );
        }
    }
    Ok(())
}

/// A target time is reached only at a transaction that ends after it, once the backup is
/// consistent; without one PostgreSQL replays everything and then refuses to start. Say
/// so before touching anything.
fn check_time_reachable(
    ctx: &Context,
    manifest: &Manifest,
    paths: &BTreeMap<u32, TimelinePath>,
    choice: TimelineChoice,
    time: &DateTime<FixedOffset>,
) -> Result<()> {
    if manifest.files.iter().any(|f| f.path == "pg_tde/wal_keys") {
        tracing::warn!(
            "pg_tde encrypts this cluster's WAL, so pgkeep cannot check that {time} is reached; PostgreSQL will"
        );
        return Ok(());
    }
    let seg = SegmentSize(manifest.wal_segment_size);
    let tli = match choice {
        TimelineChoice::Current => manifest.timeline,
        TimelineChoice::Id(n) => n,
        TimelineChoice::Latest => *paths.keys().next_back().unwrap_or(&manifest.timeline),
    };
    let path = paths
        .get(&tli)
        .cloned()
        .unwrap_or_else(|| TimelinePath::single(tli));
    let archive = walscan::archived_segments(ctx, seg)?;
    let Some(end) = walscan::path_end(&archive, seg, &path, seg.segno(manifest.start_lsn)) else {
        return Ok(()); // preflight names the missing segment
    };
    let target = target::format_time(time);
    let archive_first = "the newest WAL is not archived yet: run `pgkeep check` (or `SELECT pg_switch_wal()` on the server), then restore again";
    walscan::last_transaction_time(&ctx.repo, seg, &path, manifest.stop_lsn, end)?.map_or_else(
        || {
            bail!(
                "no transaction after backup {} became consistent is in the archive, so recovery could never tell it reached {target}; \
                 {archive_first} (if nothing was committed since the backup, restore it with --target immediate)",
                manifest.label
            )
        },
        |last| {
            if *time >= last {
                bail!(
                    "target time {target} is not before the last archived transaction ({}), so recovery could never reach it; \
                     if the server has committed since, {archive_first}; otherwise choose an earlier time, or leave out the target to replay all archived WAL",
                    last.format("%Y-%m-%d %H:%M:%S%.6f+00")
                );
            }
            Ok(())
        },
    )
}

/// What the checks before writing anything decided: the backup and where it goes.
struct Plan<'m> {
    manifest: &'m Manifest,
    chunks: ChunkStore,
    pgdata: PathBuf,
    /// Tablespace OID → the directory it is restored into.
    locations: BTreeMap<u32, String>,
    in_place: bool,
    archiving: bool,
    /// The databases whose files are written (`None`: all).
    kept: Option<BTreeSet<u32>>,
}

impl Plan<'_> {
    /// Whether `file` is restored empty: a relation file of a database left out.
    fn hollow(&self, file: &FileEntry) -> bool {
        self.kept
            .as_ref()
            .is_some_and(|kept| databases::is_hollow(file, kept))
    }

    /// Where `file` is restored: under its tablespace's location or the data directory.
    fn root_of(&self, file: &FileEntry) -> PathBuf {
        let tablespace = file
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|oid| oid.parse::<u32>().ok());
        tablespace
            .and_then(|oid| self.locations.get(&oid))
            .map_or_else(|| self.pgdata.clone(), PathBuf::from)
    }
}

/// Refuses a restore that would not fit: the bytes written to each file system (files
/// at their full size, an upper bound where chunks of zeros become holes) against its
/// free space.
fn check_space(plan: &Plan) -> Result<()> {
    let mut by_root: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for file in plan.manifest.files.iter().filter(|f| !plan.hollow(f)) {
        *by_root.entry(plan.root_of(file)).or_default() += file.size;
    }
    let mut need: BTreeMap<u64, (PathBuf, u64, u64)> = BTreeMap::new();
    for (root, bytes) in by_root {
        let (device, free) = crate::os::free_space(&root)?;
        need.entry(device).or_insert((root, free, 0)).2 += bytes;
    }
    for (root, free, bytes) in need.values() {
        if bytes > free {
            bail!(
                "restoring backup {} needs {} in {}, but its file system has {} free; free space there or restore elsewhere",
                plan.manifest.label,
                crate::engine::human_bytes(*bytes),
                root.display(),
                crate::engine::human_bytes(*free)
            );
        }
    }
    Ok(())
}

pub fn restore(
    ctx: &Context,
    opts: &RestoreOptions,
    progress: &ProgressBar,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    // Held to the end: collection cannot remove packs while they are read, even those
    // of a backup `expire` removes meanwhile.
    let _data_lock = ctx.repo.lock_data_shared()?;
    let manifests = ctx.repo.readable_manifests(opts.backup.as_deref())?;
    let plan = plan(ctx, opts, &manifests)?;
    tracing::info!(
        "restoring backup {} into {}",
        plan.manifest.label,
        plan.pgdata.display()
    );
    let dirs = create_directories(&plan)?;
    let filesystems = Filesystems::of(&dirs)?;
    let (control, files): (Vec<&FileEntry>, Vec<&FileEntry>) = plan
        .manifest
        .files
        .iter()
        .partition(|f| f.path == "global/pg_control");
    let (hollow, files): (Vec<&FileEntry>, Vec<&FileEntry>) =
        files.into_iter().partition(|f| plan.hollow(f));
    let bytes = files.iter().chain(&control).map(|f| f.size).sum();
    progress.set_length(bytes);
    let use_syncfs = syncfs_reports_errors();
    write_hollow(&plan, &hollow, !use_syncfs)?;
    write_files(ctx, &plan, &files, !use_syncfs, progress)?;
    if use_syncfs {
        filesystems.sync()?;
    }
    if !plan.locations.is_empty()
        && (!opts.tablespace_map.is_empty() || opts.tablespaces_into.is_some())
    {
        write_tablespace_map(&plan)?;
    }
    write_recovery_settings(ctx, &plan.pgdata, plan.manifest, opts, plan.archiving)?;
    for dir in &dirs {
        sync_dir(dir)?;
    }
    // pg_control last: until it exists, PostgreSQL will not start on this directory.
    for entry in control {
        write_control_file(&plan, entry, progress)?;
    }
    progress.finish_and_clear();
    Ok(RestoreSummary {
        label: plan.manifest.label.clone(),
        bytes,
        files: plan.manifest.files.len() - hollow.len(),
        seconds: started.elapsed().as_secs_f64(),
        in_place: plan.in_place,
        archiving: plan.archiving,
        tde_keys: plan
            .manifest
            .files
            .iter()
            .any(|f| f.path.starts_with("pg_tde/")),
    })
}

/// Writes `global/pg_control` durably under a temporary name, then renames it into place.
fn write_control_file(plan: &Plan, entry: &FileEntry, progress: &ProgressBar) -> Result<()> {
    let temp = plan.pgdata.join("global/pg_control.pgkeep-tmp");
    restore_file(
        &plan.chunks,
        entry,
        &temp,
        plan.manifest.chunk_size,
        true,
        progress,
    )?;
    fs::rename(&temp, plan.pgdata.join(entry.fs_path()))?;
    sync_dir(&plan.pgdata.join("global"))
}

/// The backup a restore with `opts` would restore, checked to reach the target.
pub fn choose_backup<'m>(
    ctx: &Context,
    opts: &RestoreOptions,
    manifests: &'m [Manifest],
) -> Result<&'m Manifest> {
    let info = ctx.repo.require_info()?;
    let paths = timelines::timeline_paths(&ctx.repo)?;
    let restore_points = match &opts.target {
        Target::Name(name) => {
            let path = target::target_path(&paths, opts.timeline, manifests).with_context(|| "the target timeline has no history file in the archive; `pgkeep info` lists the timelines")?;
            let found = walscan::find_restore_points(
                &ctx.repo,
                SegmentSize(info.wal_segment_size),
                &path,
                manifests,
                name,
            )?;
            if found.is_empty() {
                bail!(
                    "no restore point named '{name}' is in the archived WAL on timeline {}; names are case-sensitive, and the WAL holding it must be archived (pg_switch_wal)",
                    path.timeline
                );
            }
            found
        }
        _ => Vec::new(),
    };
    let manifest = target::choose(
        manifests,
        opts.backup.as_deref(),
        &opts.target,
        opts.timeline,
        &paths,
        &restore_points,
    )?;
    if let Target::Time(t) = &opts.target {
        check_time_reachable(ctx, manifest, &paths, opts.timeline, t)?;
    }
    Ok(manifest)
}

/// Every check that can be made before the target directory is touched: the options,
/// the directory, the backup for the target and that the target is reachable from it,
/// the tablespace locations, and that the backup and its WAL are in the repository.
fn plan<'m>(ctx: &Context, opts: &RestoreOptions, manifests: &'m [Manifest]) -> Result<Plan<'m>> {
    if let Some(action) = &opts.action
        && !["promote", "pause", "shutdown"].contains(&action.as_str())
    {
        bail!("--target-action must be promote, pause or shutdown, not '{action}'");
    }
    let pgdata = std::path::absolute(&opts.pgdata)?;
    if pgdata.is_file() || !is_empty_dir(&pgdata)? {
        bail!(
            "restore directory {} is not empty; pgkeep restores only into an empty or new directory, so choose another --pgdata or empty it",
            pgdata.display()
        );
    }
    let manifest = choose_backup(ctx, opts, manifests)?;
    let locations = tablespace_locations(
        manifest,
        &opts.tablespace_map,
        opts.tablespaces_into.as_deref(),
    )?;
    let chunks = ChunkStore::open(&ctx.repo)?;
    preflight(ctx, manifest, &chunks.index)?;
    let in_place = (ctx.cluster.pgdata.as_deref()).is_some_and(|p| same_directory(&pgdata, p));
    let kept = opts.only_database.as_deref().and_then(|database| {
        let kept = databases::kept(manifest, database);
        if kept.is_none() {
            tracing::warn!(
                "backup {} does not list database {database} (it was created later, or the backup was made by an older pgkeep), so every database is restored",
                manifest.label
            );
        }
        kept
    });
    let plan = Plan {
        manifest,
        chunks,
        pgdata,
        locations,
        in_place,
        archiving: opts.archive.unwrap_or(in_place),
        kept,
    };
    check_space(&plan)?;
    Ok(plan)
}

/// Creates the data directory and the backup's directories, with tablespace links in
/// place of `pg_tblspc/OID`; returns every directory to fsync.
fn create_directories(plan: &Plan) -> Result<Vec<PathBuf>> {
    let pgdata = &plan.pgdata;
    fs::create_dir_all(pgdata).with_context(|| format!("cannot create {}", pgdata.display()))?;
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))?;
    let mut dirs: Vec<PathBuf> = vec![pgdata.clone()];
    for d in &plan.manifest.directories {
        let dest = pgdata.join(d.fs_path());
        let oid = d
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|o| o.parse::<u32>().ok());
        if let Some(location) = oid.and_then(|o| plan.locations.get(&o)) {
            fs::create_dir_all(location)
                .with_context(|| format!("cannot create tablespace directory {location}"))?;
            fs::set_permissions(location, fs::Permissions::from_mode(0o700))?;
            std::os::unix::fs::symlink(location, &dest)
                .with_context(|| format!("cannot link {} to {location}", dest.display()))?;
            dirs.push(PathBuf::from(location));
        } else {
            fs::create_dir(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(d.mode))?;
            dirs.push(dest);
        }
    }
    Ok(dirs)
}
