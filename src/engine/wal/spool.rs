//! Asynchronous archiving (`[archive] async = true`), as pgBackRest's archive-async: a
//! background pusher stores the files PostgreSQL marked ready
//! (`pg_wal/archive_status/*.ready`), `push_jobs` at a time, and archive-push only
//! waits for its file's status; archive-get takes segments a background fetcher brought
//! ahead of recovery.
//!
//! Invariants:
//! - A `.ok` status file is written only once its WAL file is durable in every
//!   repository, and records the BLAKE3 hash of what was stored: archive-push returns 0
//!   only for a file whose content has exactly that hash. A damaged or stale status file
//!   is never taken for success. Status files are not fsynced: a crash can only lose
//!   them, and a lost one means the file is stored again (an identical copy is success).
//! - The pusher reads only files still marked ready that have no status yet, so it
//!   never reads a segment PostgreSQL may have recycled (it recycles only what
//!   archive-push acknowledged, which needs a status).
//! - The spool holds status files and at most `get_ahead` prefetched segments, never WAL
//!   waiting for upload: pg_wal stays the one queue, and the spool's size is bounded.
//! - A prefetched segment is written under a temporary name and renamed, so archive-get
//!   never hands PostgreSQL a partial one.
//! - One pusher and one fetcher per cluster (locks in the spool); a call that finds none
//!   running starts one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::config::{ArchiveConfig, Config};
use crate::engine::parallel_map;
use crate::engine::repositories::Repositories;
use crate::engine::wal::archive;
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::lock::{LockGuard, LockMode, LockService};
use crate::repo::storage::LocalLocks;

/// How long an idle pusher waits for the next ready file before it exits: under a
/// steady load it stays up, so the repositories are opened once, not per segment.
const PUSHER_LINGER: Duration = Duration::from_secs(2);

/// How often a waiting archive-push looks for its status, and the pusher for work.
const POLL: Duration = Duration::from_millis(5);

/// The least time between two pushers an archive-push starts, should one exit without
/// storing its file (it found another pusher about to exit, say).
const RESTART_PAUSE: Duration = Duration::from_millis(100);

/// A cluster's spool directory: `out/` holds the pusher's status files, `in/` the
/// prefetched segments.
pub struct Spool {
    dir: PathBuf,
}

/// The command line of this pgkeep with the caller's config, cluster and repository
/// choice, to start the background pusher and fetcher.
pub struct Helper<'a> {
    pub config: &'a Config,
    pub cluster: &'a str,
    pub repo: Option<usize>,
}

impl Helper<'_> {
    /// Starts `pgkeep ... ARGS` in its own process group, detached from the caller's
    /// terminal and output, with its errors appended to `log`.
    fn start(&self, args: &[&std::ffi::OsStr], log: &Path) -> Result<Child> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("cannot find the pgkeep executable")?;
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--config")
            .arg(&self.config.path)
            .args(["--cluster", self.cluster]);
        if let Some(n) = self.repo {
            cmd.args(["--repo", &n.to_string()]);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .context("cannot start the background pgkeep")
    }
}

impl Spool {
    /// The spool of cluster `cluster`, created if missing.
    pub fn open(archive: &ArchiveConfig, cluster: &str) -> Result<Spool> {
        let dir = archive.spool_path.join(cluster);
        for sub in ["out", "in"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| {
                format!(
                    "cannot create the spool directory {} (archive.spool_path); create {} writable by the user running PostgreSQL, or set archive.spool_path",
                    dir.join(sub).display(),
                    archive.spool_path.display()
                )
            })?;
        }
        Ok(Spool { dir })
    }

    fn status(&self, name: &str, ok: bool) -> PathBuf {
        self.dir
            .join("out")
            .join(format!("{name}.{}", if ok { "ok" } else { "error" }))
    }

    fn prefetched(&self, name: &str) -> PathBuf {
        self.dir.join("in").join(name)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("background.log")
    }

    fn lock(&self, name: &str) -> Result<Option<LockGuard>> {
        LocalLocks::new(&self.dir).lock(name, LockMode::Exclusive, false)
    }

    /// Whether a process holds lock `name` (a pusher or fetcher is running).
    fn running(&self, name: &str) -> Result<bool> {
        Ok(self.lock(name)?.is_none())
    }

    /// Records the outcome of pushing `name`: its hash, or the error.
    fn record(&self, name: &str, outcome: &Result<blake3::Hash>) -> Result<()> {
        let (path, text) = match outcome {
            Ok(hash) => (self.status(name, true), hash.to_hex().to_string()),
            Err(e) => (self.status(name, false), format!("{e:#}")),
        };
        write_renamed(&path, text.as_bytes())
    }
}

/// Writes `data` to `path` through a temporary name, so a reader sees all or nothing.
fn write_renamed(path: &Path, data: &[u8]) -> Result<()> {
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&temp, data)
        .and_then(|()| fs::rename(&temp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The `.ready` marker PostgreSQL made for the WAL file at `path`, if it made one: only
/// such files are pushed ahead.
pub fn ready_marker(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let marker = path
        .parent()?
        .join("archive_status")
        .join(format!("{name}.ready"));
    marker.exists().then_some(marker)
}

/// archive-push of a file marked ready, answered from the pusher's status: waits up to
/// `timeout` for it, starting a pusher whenever none is running.
pub fn push(spool: &Spool, helper: &Helper, path: &Path, timeout: Duration) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let pg_wal = std::path::absolute(path.parent().unwrap_or(Path::new(".")))?;
    let deadline = Instant::now() + timeout;
    let mut pusher: Option<Child> = None;
    let mut started: Option<Instant> = None;
    loop {
        if let Ok(recorded) = fs::read_to_string(spool.status(name, true)) {
            if blake3::Hash::from_hex(recorded.trim()).ok() == Some(archive::hash_file(path)?) {
                return Ok(());
            }
            // Stored from other content (or damaged): drop it, and let a synchronous
            // push compare the file with the repository's copy.
            let _ = fs::remove_file(spool.status(name, true));
            bail!(
                "{name} changed after the background pusher stored it; PostgreSQL tries again, and the next attempt compares it with the archived copy"
            );
        }
        if let Ok(error) = fs::read_to_string(spool.status(name, false)) {
            let _ = fs::remove_file(spool.status(name, false));
            bail!("{error}");
        }
        let exited = match &mut pusher {
            Some(child) => child.try_wait()?,
            None => None,
        };
        if let Some(exit) = exited
            && !exit.success()
        {
            bail!(
                "the background pusher stopped ({exit}) before storing {name}; see {}",
                spool.log().display()
            );
        }
        let ours_alive = pusher.is_some() && exited.is_none();
        let may_start = started.is_none_or(|t| t.elapsed() > RESTART_PAUSE);
        if !ours_alive && may_start && !spool.running("pusher")? {
            started = Some(Instant::now());
            pusher = Some(helper.start(
                &["archive-pusher".as_ref(), pg_wal.as_os_str()],
                &spool.log(),
            )?);
        }
        if Instant::now() >= deadline {
            bail!(
                "the background pusher did not store {name} within {} s (archive.push_timeout; see {}); PostgreSQL keeps it and tries again",
                timeout.as_secs(),
                spool.log().display()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The background pusher: stores every file marked ready in `pg_wal` that has no
/// status yet, `jobs` at a time, oldest first (history files before segments, as
/// PostgreSQL's archiver orders them), and exits once nothing new came for a while.
/// Returns at once if another pusher runs.
pub fn run_pusher(spool: &Spool, repos: &Repositories, pg_wal: &Path, jobs: usize) -> Result<()> {
    let Some(_alone) = spool.lock("pusher")? else {
        return Ok(());
    };
    let mut idle_since = Instant::now();
    loop {
        let ready = ready_files(pg_wal)?;
        forget_acknowledged(spool, &ready)?;
        let todo: Vec<String> = ready
            .into_iter()
            .filter(|n| !spool.status(n, true).exists() && !spool.status(n, false).exists())
            .collect();
        if todo.is_empty() {
            if idle_since.elapsed() > PUSHER_LINGER {
                return Ok(());
            }
            std::thread::sleep(POLL * 10);
            continue;
        }
        parallel_map(todo, jobs, |name, _| {
            spool.record(&name, &archive::push(repos, &pg_wal.join(&name)))
        })?;
        idle_since = Instant::now();
    }
}

/// The names of the WAL files marked ready in `pg_wal`, history files first, then in
/// name order.
fn ready_files(pg_wal: &Path) -> Result<Vec<String>> {
    let status_dir = pg_wal.join("archive_status");
    let mut names: Vec<String> = fs::read_dir(&status_dir)
        .with_context(|| format!("cannot list {}", status_dir.display()))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let wal = name.strip_suffix(".ready")?;
            WalFile::parse(wal).map(|_| wal.to_string())
        })
        .collect();
    names.sort_by_key(|n| (!n.ends_with(".history"), n.clone()));
    Ok(names)
}

/// Removes the status of files no longer marked ready: PostgreSQL has them as done (or
/// a synchronous push stored them).
fn forget_acknowledged(spool: &Spool, ready: &[String]) -> Result<()> {
    let out = spool.dir.join("out");
    for entry in fs::read_dir(&out).with_context(|| format!("cannot list {}", out.display()))? {
        let entry = entry?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let Some((name, _)) = file.rsplit_once('.') else {
            continue;
        };
        if !ready.iter().any(|r| r == name) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// archive-get from the spool: moves the prefetched `name` to `dest` if there is one
/// (`Ok(false)` if not), and starts a fetcher for the segments after `name`.
pub fn take_prefetched(spool: &Spool, helper: &Helper, name: &str, dest: &Path) -> Result<bool> {
    let taken = take(&spool.prefetched(name), dest)?;
    if WalFile::parse(name).is_some_and(|f| matches!(f, WalFile::Segment { .. }))
        && !spool.running("fetcher")?
    {
        helper.start(&["archive-fetcher".as_ref(), name.as_ref()], &spool.log())?;
    }
    Ok(taken)
}

/// Moves `from` to `dest` (copying if they are on different filesystems).
fn take(from: &Path, dest: &Path) -> Result<bool> {
    match fs::rename(from, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let temp = dest.with_extension(format!("pgkeep{}", std::process::id()));
            fs::copy(from, &temp)
                .and_then(|_| fs::rename(&temp, dest))
                .with_context(|| format!("cannot write {}", dest.display()))?;
            let _ = fs::remove_file(from);
            Ok(true)
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot move {} to {}", from.display(), dest.display()))
        }
    }
}

/// The background fetcher: brings the `ahead` segments after `after` (on its timeline)
/// into the spool, in parallel, skipping those the archive lacks; removes
/// prefetched segments recovery has passed. Returns at once if another fetcher runs.
pub fn run_fetcher(spool: &Spool, repos: &Repositories, after: &str, ahead: usize) -> Result<()> {
    let Some(_alone) = spool.lock("fetcher")? else {
        return Ok(());
    };
    let Some(WalFile::Segment { timeline, log, seg }) = WalFile::parse(after) else {
        bail!("'{after}' is not a WAL segment name");
    };
    let Some(size) =
        repos.first(|ctx| Ok(Some(SegmentSize(ctx.repo.require_info()?.wal_segment_size))))?
    else {
        return Ok(());
    };
    let first = size.segno_of(log, seg) + 1;
    let wanted: Vec<String> = (first..first + ahead as u64)
        .map(|segno| size.name(timeline, segno))
        .collect();
    remove_passed(spool, after)?;
    let missing: Vec<String> = wanted
        .into_iter()
        .filter(|n| !spool.prefetched(n).exists())
        .collect();
    parallel_map(missing, ahead.min(4), |name, _| {
        let Some(data) = repos.first(|ctx| ctx.repo.get_wal(&name))? else {
            return Ok(());
        };
        write_renamed(&spool.prefetched(&name), &data)
    })?;
    Ok(())
}

/// Removes prefetched segments at or before `name`: recovery has moved past them (or
/// took them from elsewhere).
fn remove_passed(spool: &Spool, name: &str) -> Result<()> {
    let dir = spool.dir.join("in");
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(|f| f <= name) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Empties the prefetched segments, so a restore never recovers from segments fetched
/// for an earlier one (from a repository since re-created, say).
pub fn clear_prefetched(archive: &ArchiveConfig, cluster: &str) -> Result<()> {
    let dir = archive.spool_path.join(cluster).join("in");
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot empty {}", dir.display())),
    }
}
