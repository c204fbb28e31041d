//! Asynchronous archiving (`[archive] async = true`), as pgBackRest's archive-async: a
//! background pusher stores the files PostgreSQL marked ready
//! (`pg_wal/archive_status/*.ready`), `push_jobs` at a time, and archive-push only
//! waits for its file's status; archive-get takes segments a background fetcher brought
//! ahead of recovery. Each data directory has a spool of its own
//! (`SPOOL/CLUSTER/HASH-OF-PGDATA`), so two servers never share one.
//!
//! Invariants:
//! - A `.ok` status file is written only once its WAL file is durable in every
//!   repository the pusher's config names, and records the BLAKE3 hash of what was
//!   stored and that config (its file's hash and `--repo`): archive-push returns 0 only
//!   for a file whose content has exactly that hash, under the config it runs with. A
//!   pusher exits when the config changes. A damaged or stale status file is never
//!   taken for success; status files are not fsynced, so a crash can lose or empty
//!   them, and then the file is stored again (an identical copy is success).
//! - The pusher reads only files still marked ready that have no status yet, so it
//!   never reads a segment PostgreSQL may have recycled (it recycles only what
//!   archive-push acknowledged, which needs a status).
//! - The spool never holds WAL waiting for upload: pg_wal stays the one queue. It holds
//!   status files and prefetched segments (`get_ahead` beyond the last asked for).
//! - A prefetched segment is fsynced under a temporary name and renamed, and is taken
//!   only if its long page header matches its name and length; anything else is
//!   fetched from the repository instead.
//! - One pusher and one fetcher per spool (locks in it); a call that finds none
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
use crate::format::wal::{self, SegmentSize, WalFile};
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
    /// What a status file must have been written under: the config file's content and
    /// the repository choice.
    fn identity(&self) -> Result<String> {
        let text = fs::read(&self.config.path)
            .with_context(|| format!("cannot read {}", self.config.path.display()))?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&text);
        hasher.update(format!("{:?}", self.repo).as_bytes());
        Ok(hasher.finalize().to_hex()[..16].to_string())
    }

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
    /// The spool of cluster `cluster`'s data directory `pgdata`, created if missing.
    pub fn open(archive: &ArchiveConfig, cluster: &str, pgdata: &Path) -> Result<Spool> {
        let spool = Spool::of(archive, cluster, pgdata)?;
        for sub in ["out", "in"] {
            let dir = spool.dir.join(sub);
            fs::create_dir_all(&dir).with_context(|| {
                format!(
                    "cannot create the spool directory {} (archive.spool_path); create {} writable by the user running PostgreSQL, or set archive.spool_path",
                    dir.display(),
                    archive.spool_path.display()
                )
            })?;
        }
        Ok(spool)
    }

    fn of(archive: &ArchiveConfig, cluster: &str, pgdata: &Path) -> Result<Spool> {
        let pgdata = std::path::absolute(pgdata)?;
        let id = blake3::hash(pgdata.as_os_str().as_encoded_bytes()).to_hex();
        Ok(Spool {
            dir: archive.spool_path.join(cluster).join(&id.as_str()[..16]),
        })
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

    /// Records the outcome of pushing `name` under config `identity`: the hash of what
    /// was stored, or the error.
    fn record(&self, name: &str, identity: &str, outcome: &Result<blake3::Hash>) -> Result<()> {
        let (path, text) = match outcome {
            Ok(hash) => (
                self.status(name, true),
                format!("{} {identity}", hash.to_hex()),
            ),
            Err(e) => (self.status(name, false), format!("{e:#}")),
        };
        crate::os::write_renamed(&path, text.as_bytes(), false)
    }

    /// Removes every error status: they are retried by a new pusher.
    fn clear_errors(&self) -> Result<()> {
        self.remove_in("out", |file| file.ends_with(".error"))
    }

    /// Removes the files in `sub` whose names `remove` picks.
    fn remove_in(&self, sub: &str, remove: impl Fn(&str) -> bool) -> Result<()> {
        let dir = self.dir.join(sub);
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            if entry.file_name().to_str().is_some_and(&remove) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// Whether PostgreSQL marked the WAL file at `path` ready: only such files are pushed
/// ahead.
pub fn is_marked_ready(path: &Path) -> bool {
    let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
        return false;
    };
    let mut marker = name.to_os_string();
    marker.push(".ready");
    dir.join("archive_status").join(marker).exists()
}

/// The data directory whose pg_wal holds the WAL file at `path`.
pub fn data_directory_of(path: &Path) -> Result<PathBuf> {
    let pg_wal = std::path::absolute(path.parent().unwrap_or(Path::new(".")))?;
    Ok(pg_wal.parent().unwrap_or(&pg_wal).to_path_buf())
}

/// archive-push of a file marked ready, answered from the pusher's status: waits up to
/// `timeout` for it, starting a pusher whenever none is running.
pub fn push(spool: &Spool, helper: &Helper, path: &Path, timeout: Duration) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let pg_wal = std::path::absolute(path.parent().unwrap_or(Path::new(".")))?;
    let identity = helper.identity()?;
    let deadline = Instant::now() + timeout;
    let mut pusher: Option<Child> = None;
    let mut started: Option<Instant> = None;
    loop {
        if let Ok(recorded) = fs::read_to_string(spool.status(name, true)) {
            match recorded.trim().split_once(' ') {
                Some((hash, by)) if by == identity => {
                    if blake3::Hash::from_hex(hash).ok() == Some(archive::hash_file(path)?) {
                        return Ok(());
                    }
                    // Stored from other content: let the next attempt compare the file
                    // with the repository's copy.
                    let _ = fs::remove_file(spool.status(name, true));
                    bail!(
                        "{name} changed after the background pusher stored it; PostgreSQL tries again, and the next attempt compares it with the archived copy"
                    );
                }
                // Written under another config (or damaged): stored again under this one.
                _ => {
                    let _ = fs::remove_file(spool.status(name, true));
                }
            }
        }
        if let Ok(error) = fs::read_to_string(spool.status(name, false)) {
            let _ = fs::remove_file(spool.status(name, false));
            bail!("{}", error.trim());
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
/// PostgreSQL's archiver orders them), and exits once nothing new came for a while or
/// the config changed. Returns at once if another pusher runs.
pub fn run_pusher(
    spool: &Spool,
    helper: &Helper,
    repos: &Repositories,
    pg_wal: &Path,
    jobs: usize,
) -> Result<()> {
    let Some(_alone) = spool.lock("pusher")? else {
        return Ok(());
    };
    let identity = helper.identity()?;
    spool.clear_errors()?;
    let mut idle_since = Instant::now();
    loop {
        if helper.identity()? != identity {
            return Ok(()); // the next archive-push starts a pusher on the new config
        }
        let ready = ready_files(pg_wal)?;
        // The status of files PostgreSQL now has as done goes, and so do temporary files
        // a killed pusher left.
        spool.remove_in("out", |file| {
            match file
                .strip_suffix(".ok")
                .or_else(|| file.strip_suffix(".error"))
            {
                Some(name) => !ready.iter().any(|r| r == name),
                None => true,
            }
        })?;
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
            let pushed = archive::push(repos, &pg_wal.join(&name));
            spool.record(&name, &identity, &pushed)
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

/// archive-get from the spool: moves the prefetched `name` to `dest` if there is a
/// sound one (`Ok(false)` if not), and starts a fetcher for the segments after `name`.
pub fn take_prefetched(spool: &Spool, helper: &Helper, name: &str, dest: &Path) -> Result<bool> {
    let Some(WalFile::Segment { log, seg, .. }) = WalFile::parse(name) else {
        return Ok(false);
    };
    let path = spool.prefetched(name);
    let taken = match fs::read(&path) {
        Ok(data) if is_sound_segment(&data, log, seg) => {
            crate::os::write_renamed(dest, &data, false)?;
            true
        }
        Ok(_) => {
            tracing::warn!("prefetched {name} is damaged; fetching it from the repository");
            false
        }
        Err(_) => false,
    };
    let _ = fs::remove_file(&path);
    if !spool.running("fetcher")? {
        helper.start(&["archive-fetcher".as_ref(), name.as_ref()], &spool.log())?;
    }
    Ok(taken)
}

/// Whether `data` is a whole segment `log`/`seg`: its long page header says so, and its
/// length is the segment size the header names.
fn is_sound_segment(data: &[u8], log: u32, seg: u32) -> bool {
    wal::parse_long_header(data).is_some_and(|h| {
        let size = SegmentSize(u64::from(h.segment_size));
        h.segment_size as usize == data.len()
            && wal::valid_segment_size(size.0)
            && h.page_address == size.start_lsn(size.segno_of(log, seg))
    })
}

/// The background fetcher: brings the `ahead` segments after `after` (on its timeline)
/// into the spool, in parallel, skipping those the archive lacks, each fsynced before
/// it is renamed into place; removes prefetched segments recovery has passed. Returns
/// at once if another fetcher runs.
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
    // Passed by recovery (or taken from elsewhere), and temporary files of a killed
    // fetcher.
    spool.remove_in("in", |file| file <= after || file.contains(".tmp"))?;
    let missing: Vec<String> = wanted
        .into_iter()
        .filter(|n| !spool.prefetched(n).exists())
        .collect();
    parallel_map(missing, ahead.min(4), |name, _| {
        let Some(data) = repos.first(|ctx| ctx.repo.get_wal(&name))? else {
            return Ok(());
        };
        crate::os::write_renamed(&spool.prefetched(&name), &data, true)
    })?;
    Ok(())
}

/// Empties the prefetched segments of the data directory `pgdata`, so a restore there
/// never recovers from segments fetched for an earlier one.
pub fn clear_prefetched(archive: &ArchiveConfig, cluster: &str, pgdata: &Path) -> Result<()> {
    let dir = Spool::of(archive, cluster, pgdata)?.dir.join("in");
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot empty {}", dir.display())),
    }
}
