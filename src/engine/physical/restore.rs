//! `restore`: rebuild a data directory from a backup and set it up to recover to a target.
//!
//! Everything that can be checked is checked before the target directory is touched:
//! the directory is empty, the backup is complete in the repository, the WAL it needs to
//! become consistent is archived, and the target is reachable from it. `global/pg_control`
//! is written last, so a restore that stops half-way leaves a directory PostgreSQL refuses
//! to start.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, FixedOffset};
use indicatif::ProgressBar;

use super::target::{self, Target, TimelineChoice};
use crate::engine::wal::{scan as walscan, timelines};
use crate::engine::{Context, parallel_map, stopped};
use crate::format::history::TimelinePath;
use crate::format::wal::SegmentSize;
use crate::format::{guc, tablespace_map};
use crate::repo::chunk_store::ChunkStore;
use crate::repo::index::ChunkIndex;
use crate::repo::manifest::{FileEntry, Manifest};
use crate::repo::storage::sync_dir;

pub struct RestoreOptions {
    pub pgdata: PathBuf,
    pub backup: Option<String>,
    pub target: Target,
    pub action: Option<String>,
    pub timeline: TimelineChoice,
    /// Tablespace relocations, old location → new location.
    pub tablespace_map: Vec<(String, String)>,
    /// Whether the restored server archives WAL (`--archive on|off`); by default only a
    /// restore into the cluster's own configured `pgdata` does.
    pub archive: Option<bool>,
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
}

/// Settings pgkeep owns in `postgresql.auto.conf`; old values are removed so that a
/// leftover target from an earlier restore cannot conflict. (`archive_mode` is pgkeep's
/// only on a line it marked with [`ARCHIVE_OFF_MARK`].)
const RECOVERY_KEYS: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_lsn",
    "recovery_target_action",
    "recovery_target_timeline",
    "recovery_target_inclusive",
];

/// Ends the `archive_mode = 'off'` line that `--archive off` writes, so a later restore
/// of a backup of that copy knows the line is pgkeep's and not the DBA's.
const ARCHIVE_OFF_MARK: &str = "# pgkeep restore --archive off";
const SETTINGS_HEADER: &str = "# Recovery settings added by pgkeep restore";

/// Whether a line of `postgresql.auto.conf` is one an earlier pgkeep restore wrote.
fn is_pgkeep_line(line: &str) -> bool {
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    RECOVERY_KEYS.contains(&key.as_str())
        || line.starts_with(SETTINGS_HEADER)
        || (key == "archive_mode" && line.trim_end().ends_with(ARCHIVE_OFF_MARK))
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
            .map_or(t.location.clone(), |(_, n)| n.clone());
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

/// How much of a file is written before its writeback is started.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts writing back `len` bytes from `offset` (0: to the end) without waiting, as
/// PostgreSQL's `pg_flush_data` does: the disk works while the next chunks decode, and
/// the sync at the end has little left to wait for.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a descriptor we own; only a hint, so errors are ignored
    // (the final sync reports any).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Writes one file from its chunks (all-zero chunks become holes), its writeback started
/// but not waited for unless `fsync` (where a later syncfs would not report errors).
fn restore_file(
    chunks: &ChunkStore,
    entry: &FileEntry,
    dest: &Path,
    fsync: bool,
    progress: &ProgressBar,
    stop: &AtomicBool,
) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let (mut written, mut flushed_to) = (0, 0);
    for id in &entry.chunks {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let data = chunks
            .read(id)
            .with_context(|| format!("cannot restore {}", entry.path))?;
        if data.iter().all(|&b| b == 0) {
            file.seek(SeekFrom::Current(data.len() as i64))?;
        } else {
            file.write_all(&data)
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
        written += data.len() as u64;
        if written - flushed_to >= WRITEBACK_EVERY {
            start_writeback(&file, flushed_to, written - flushed_to);
            flushed_to = written;
        }
        progress.inc(data.len() as u64);
    }
    start_writeback(&file, flushed_to, 0);
    file.set_len(entry.size)?;
    file.set_permissions(fs::Permissions::from_mode(entry.mode))?;
    file.set_modified(UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64))?;
    if fsync {
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", dest.display()))?;
    }
    Ok(())
}

/// Appends the recovery settings to `postgresql.auto.conf`, dropping earlier ones.
fn write_recovery_settings(
    ctx: &Context,
    pgdata: &Path,
    manifest: &Manifest,
    opts: &RestoreOptions,
    archiving: bool,
) -> Result<()> {
    let path = pgdata.join("postgresql.auto.conf");
    // Bytes, not text: every other setting must survive whatever its encoding.
    let existing = fs::read(&path).unwrap_or_default();
    let mut kept: Vec<u8> = Vec::with_capacity(existing.len());
    for line in existing.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if !is_pgkeep_line(&String::from_utf8_lossy(line)) {
            kept.extend_from_slice(line);
            kept.push(b'\n');
        }
    }
    let mut text = String::new();
    text.push_str(&format!("{SETTINGS_HEADER} of backup {}\n", manifest.label));
    if !archiving {
        text.push_str(&format!("archive_mode = 'off' {ARCHIVE_OFF_MARK}\n"));
    }
    let restore_command = format!(
        "{} archive-get %f \"%p\"",
        guc::escape_percent(&ctx.self_command()?)
    );
    text.push_str(&format!(
        "restore_command = {}\n",
        guc::quote(&restore_command)
    ));
    let target = match &opts.target {
        Target::End => None,
        Target::Immediate => Some(("recovery_target", "immediate".to_string())),
        Target::Time(t) => Some(("recovery_target_time", target::format_time(t))),
        Target::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        Target::Name(n) => Some(("recovery_target_name", n.clone())),
        Target::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
    };
    if let Some((key, value)) = target {
        text.push_str(&format!("{key} = {}\n", guc::quote(&value)));
        if let Some(action) = &opts.action {
            text.push_str(&format!(
                "recovery_target_action = {}\n",
                guc::quote(action)
            ));
        }
    }
    let timeline = match opts.timeline {
        TimelineChoice::Latest => "latest".to_string(),
        TimelineChoice::Current => "current".to_string(),
        TimelineChoice::Id(n) => n.to_string(),
    };
    text.push_str(&format!(
        "recovery_target_timeline = {}\n",
        guc::quote(&timeline)
    ));
    kept.extend_from_slice(text.as_bytes());
    fs::write(&path, kept).with_context(|| format!("cannot write {}", path.display()))?;
    File::open(&path)?.sync_all()?;
    let signal = pgdata.join("recovery.signal");
    File::create(&signal)?.sync_all()?;
    Ok(())
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
    progress.set_length(plan.manifest.size);
    let use_syncfs = syncfs_reports_errors();
    write_files(ctx, &plan, &files, !use_syncfs, progress)?;
    if use_syncfs {
        filesystems.sync()?;
    }
    if !plan.locations.is_empty() && !opts.tablespace_map.is_empty() {
        write_tablespace_map(&plan)?;
    }
    write_recovery_settings(ctx, &plan.pgdata, plan.manifest, opts, plan.archiving)?;
    for dir in &dirs {
        sync_dir(dir)?;
    }
    // pg_control last: until it exists, PostgreSQL will not start on this directory.
    for entry in control {
        let temp = plan.pgdata.join("global/pg_control.pgkeep-tmp");
        restore_file(
            &plan.chunks,
            entry,
            &temp,
            true,
            progress,
            &AtomicBool::new(false),
        )?;
        fs::rename(&temp, plan.pgdata.join(entry.fs_path()))?;
        sync_dir(&plan.pgdata.join("global"))?;
    }
    progress.finish_and_clear();
    Ok(RestoreSummary {
        label: plan.manifest.label.clone(),
        bytes: plan.manifest.size,
        files: plan.manifest.files.len(),
        seconds: started.elapsed().as_secs_f64(),
        in_place: plan.in_place,
        archiving: plan.archiving,
    })
}

/// Every check that can be made before the target directory is touched: the options,
/// the directory, the backup for the target and that the target is reachable from it,
/// the tablespace locations, and that the backup and its WAL are in the repository.
fn plan<'m>(ctx: &Context, opts: &RestoreOptions, manifests: &'m [Manifest]) -> Result<Plan<'m>> {
    let info = ctx.repo.require_info()?;
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
    let locations = tablespace_locations(manifest, &opts.tablespace_map)?;
    let chunks = ChunkStore::open(&ctx.repo)?;
    preflight(ctx, manifest, &chunks.index)?;
    let in_place = same_directory(&pgdata, &ctx.cluster.pgdata);
    Ok(Plan {
        manifest,
        chunks,
        pgdata,
        locations,
        in_place,
        archiving: opts.archive.unwrap_or(in_place),
    })
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

/// Writes the files in parallel, largest first; [`Filesystems::sync`] makes them
/// durable, or an fsync of each where that would not report errors.
fn write_files(
    ctx: &Context,
    plan: &Plan,
    files: &[&FileEntry],
    fsync: bool,
    progress: &ProgressBar,
) -> Result<()> {
    let mut files = files.to_vec();
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    parallel_map(files, ctx.config.jobs(), |entry, stop| {
        let dest = plan.pgdata.join(entry.fs_path());
        restore_file(&plan.chunks, entry, &dest, fsync, progress, stop)
    })?;
    Ok(())
}

/// Whether `syncfs(2)` reports writeback errors: since Linux 5.8. Before, it could miss
/// an error an fsync per file would catch.
fn syncfs_reports_errors() -> bool {
    // SAFETY: uname fills the struct we own.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return false;
    }
    // SAFETY: release is NUL-terminated.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }.to_string_lossy();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (5, 8)
}

/// The filesystems a restore writes to, each held open from before the first write.
///
/// One `syncfs(2)` per filesystem makes every restored file durable: an fsync per file
/// costs a device cache flush each (a thousand files took a second on a small cluster).
/// An fd open since before the writes reports any writeback error since (Linux 5.8+),
/// as PostgreSQL's `recovery_init_sync_method = syncfs` relies on.
struct Filesystems(Vec<(PathBuf, File)>);

impl Filesystems {
    fn of(dirs: &[PathBuf]) -> Result<Filesystems> {
        use std::os::unix::fs::MetadataExt;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for dir in dirs {
            let file = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
            if seen.insert(file.metadata()?.dev()) {
                out.push((dir.clone(), file));
            }
        }
        Ok(Filesystems(out))
    }

    fn sync(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        for (dir, file) in &self.0 {
            // SAFETY: syncfs on a descriptor we own.
            if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!("cannot make the files under {} durable", dir.display())
                });
            }
        }
        Ok(())
    }
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync {}", path.display()))
}

/// `tablespace_map` naming the tablespaces' new locations.
fn write_tablespace_map(plan: &Plan) -> Result<()> {
    let entries: Vec<tablespace_map::Entry> = plan
        .locations
        .iter()
        .map(|(&oid, loc)| tablespace_map::Entry {
            oid,
            path: loc.clone(),
        })
        .collect();
    let path = plan.pgdata.join("tablespace_map");
    fs::write(&path, tablespace_map::render(&entries))?;
    sync_file(&path)
}
