//! `receive-wal`: WAL streamed from the server over a replication connection (with a
//! physical slot) into the repository, as pg_receivewal streams it into a directory.
//!
//! Local files (in the receive directory, one receiver per directory):
//! `NAME.receiving` is the segment being streamed, written from its start, zero-padded to
//! the segment size; `NAME` a whole segment waiting to be stored; `NAME.partial` the last
//! segment of a timeline that ended (a promotion), waiting to be stored.
//!
//! Invariants:
//! - The flush position reported to the server never passes what is fsynced locally, so
//!   the slot keeps on the server every byte not yet durable here.
//! - A segment is renamed from `.receiving` only once whole and fsynced, and its local
//!   file is removed only once it is stored in every repository (`archive::store`, the
//!   object archive-push makes: identical content already stored is success, different
//!   content is never overwritten).
//! - When streaming stops (the server went away, or pgkeep is told to stop), the
//!   segment being streamed is stored as the repository's streamed copy of it, which
//!   archive-get serves for a segment not archived whole. So what the server was told
//!   is flushed reaches the repository even if the server never comes back.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossbeam_channel::{Receiver, Sender};

use crate::engine::repositories::Repositories;
use crate::engine::wal::archive;
use crate::format::lsn::Lsn;
use crate::format::wal::{SegmentSize, WalFile};
use crate::os::sync_dir;
use crate::pg::conninfo::ConnParams;
use crate::pg::replication::{Replication, Streamed};
use crate::repo::lock::{LockMode, LockService};
use crate::repo::storage::LocalLocks;
use crate::repo::{ReceiverStatus, object};

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How often the stream loop looks at the stop flag while the server is quiet.
const STOP_CHECK: Duration = Duration::from_millis(500);

pub struct ReceiveOptions {
    pub slot: String,
    /// Local directory for the segment being streamed and those not yet stored.
    pub directory: PathBuf,
    /// Report the flush position as soon as WAL is fsynced, so the receiver can be a
    /// synchronous standby.
    pub synchronous: bool,
    /// The longest time between two status updates to the server.
    pub status_interval: Duration,
    /// WAL held by the slot on the server, in bytes, above which receive-wal and `info`
    /// raise the alarm.
    pub warn_slot_wal: u64,
}

/// What the uploader thread is asked to store.
enum Upload {
    /// A local file (`NAME` or `NAME.partial`) to archive and then remove.
    File(String),
    /// The streamed copy of segment `name` so far.
    Streamed { name: String, data: Vec<u8> },
    /// The receiver's state, for `info`: stored once, not retried.
    Status(Box<ReceiverStatus>),
}

/// How often the receiver records its state in the repositories.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A failure that reconnecting cannot mend (the wrong server, a logical slot).
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// The segment file being streamed into.
struct Receiving {
    file: File,
    timeline: u32,
    segno: u64,
}

struct WalReceiver<'a, 'c> {
    repos: &'a Repositories<'c>,
    options: &'a ReceiveOptions,
    seg: SegmentSize,
    system_identifier: u64,
    uploads: Sender<Upload>,
    current: Option<Receiving>,
    /// End of the WAL written locally, and of what is fsynced.
    written: Lsn,
    flushed: Lsn,
    status: ReceiverStatus,
    last_report: Instant,
}

/// Streams WAL until `stop` is set (SIGINT or SIGTERM), reconnecting with backoff
/// whenever the connection fails. Returns an error only for what reconnecting cannot
/// mend.
pub fn receive(
    repos: &Repositories,
    params: &ConnParams,
    options: &ReceiveOptions,
    stop: &AtomicBool,
) -> Result<()> {
    let info = repos
        .first(|ctx| ctx.repo.require_info().map(Some))?
        .context("no repository knows the cluster; run `pgkeep init` first")?;
    let dir = &options.directory;
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the receive directory {}; create it or name another with --directory",
            dir.display()
        )
    })?;
    let _lock = LocalLocks::new(dir)
        .lock("receiver", LockMode::Exclusive, false)?
        .with_context(|| {
            format!(
                "another receive-wal is running on {}; stop it or name another --directory",
                dir.display()
            )
        })?;
    let (uploads, queue) = crossbeam_channel::unbounded();
    for name in waiting_files(dir)? {
        uploads.send(Upload::File(name)).expect("queue is open");
    }
    std::thread::scope(|scope| {
        scope.spawn(|| store_uploads(repos, dir, &queue, stop));
        let mut receiver = WalReceiver {
            repos,
            options,
            seg: SegmentSize(info.wal_segment_size),
            system_identifier: info.system_identifier,
            uploads,
            current: None,
            written: Lsn(0),
            flushed: Lsn(0),
            status: ReceiverStatus {
                slot: options.slot.clone(),
                server: params.describe(),
                host: crate::os::host_name(),
                synchronous: options.synchronous,
                connected: false,
                error: None,
                timeline: 0,
                flushed: Lsn(0),
                server_end: Lsn(0),
                slot_retained: 0,
                updated: chrono::Utc::now(),
            },
            last_report: Instant::now(),
        };
        let result = receiver.run(params, stop);
        drop(receiver); // closes the queue: the uploader stores what is left and ends
        result
    })
}

/// Whole segments and ended timelines' partial segments left in `dir`, oldest first.
fn waiting_files(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            matches!(
                WalFile::parse(n),
                Some(WalFile::Segment { .. } | WalFile::Partial { .. })
            )
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The uploader: stores each queued file in every repository, retrying with backoff
/// until it is stored (or pgkeep is stopping: the file then waits for the next start).
fn store_uploads(repos: &Repositories, dir: &Path, queue: &Receiver<Upload>, stop: &AtomicBool) {
    for upload in queue {
        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = match &upload {
                Upload::File(name) => store_file(repos, dir, name),
                Upload::Streamed { name, data } => store_streamed(repos, name, data),
                Upload::Status(status) => {
                    if let Err(e) = repos.every(|ctx| ctx.repo.put_receiver_status(status)) {
                        tracing::warn!("cannot record receive-wal's state: {e:#}");
                    }
                    break;
                }
            };
            match outcome {
                Ok(()) => break,
                Err(e) if stop.load(Ordering::Relaxed) => {
                    tracing::error!("{e:#}; it is stored at the next start of receive-wal");
                    break;
                }
                Err(e) => {
                    tracing::error!("{e:#}; trying again in {}s", backoff.as_secs());
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn store_file(repos: &Repositories, dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    let file = WalFile::parse(name).expect("queued files have WAL names");
    let data = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    repos
        .every(|ctx| archive::store(ctx, name, &file, &data))
        .with_context(|| format!("streamed {name} is not archived"))?;
    if let WalFile::Segment { .. } = file {
        // The whole segment is archived: its streamed copy is of no more use.
        let _ = repos.every(|ctx| ctx.repo.delete_streamed(name));
    }
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    sync_dir(dir)?;
    tracing::info!("archived streamed {name}");
    Ok(())
}

fn store_streamed(repos: &Repositories, name: &str, data: &[u8]) -> Result<()> {
    repos
        .every(|ctx| {
            let encoded = object::encode(data, ctx.repo_config.compress_level)?;
            ctx.repo.put_streamed(name, &encoded)
        })
        .with_context(|| format!("the streamed copy of {name} is not stored"))?;
    tracing::info!("stored the streamed copy of {name}");
    Ok(())
}

impl WalReceiver<'_, '_> {
    fn run(&mut self, params: &ConnParams, stop: &AtomicBool) -> Result<()> {
        let mut backoff = Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) {
            let before = self.flushed;
            let outcome = self.stream(params, stop);
            self.stopped_streaming()?;
            self.status.connected = false;
            self.status.error = Some(match &outcome {
                Ok(()) => "receive-wal was stopped".into(),
                Err(e) => format!("{e:#}"),
            });
            self.report();
            match outcome {
                Ok(()) => break,
                Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
                Err(e) => {
                    if self.flushed > before {
                        backoff = Duration::from_secs(1);
                    }
                    tracing::warn!("{e:#}; reconnecting in {}s", backoff.as_secs());
                    sleep_unless_stopped(backoff, stop);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        Ok(())
    }

    /// One connection: from the right start point, through timeline switches, until
    /// stopped (`Ok`) or the connection fails.
    fn stream(&mut self, params: &ConnParams, stop: &AtomicBool) -> Result<()> {
        let mut conn = Replication::connect(params)?;
        let system = conn.identify_system()?;
        if system.system_identifier != self.system_identifier {
            bail!(Fatal(format!(
                "the server is database system {} but the repository's cluster is system {}; \
                 check `connection` in the pgkeep config",
                system.system_identifier, self.system_identifier
            )));
        }
        let slot = self.options.slot.as_str();
        let state = match conn.read_slot(slot)? {
            Some(state) if !state.physical => bail!(Fatal(format!(
                "replication slot '{slot}' is a logical slot; receive-wal needs a physical one: name another with --slot"
            ))),
            Some(state) => state,
            None => {
                conn.create_slot(slot)?;
                tracing::info!("created physical replication slot {slot}");
                conn.read_slot(slot)?
                    .context("the slot just created is not there")?
            }
        };
        let retained = state
            .restart_lsn
            .map_or(0, |r| system.position.0.saturating_sub(r.0));
        if retained > self.options.warn_slot_wal {
            tracing::error!(
                "slot {slot} holds {} of WAL on the server, more than [receive] warn_slot_wal_mb: \
                 the server keeps it until receive-wal has it; if this receiver is retired, drop the slot \
                 (SELECT pg_drop_replication_slot('{slot}')) before the server's disk fills",
                crate::engine::human_bytes(retained)
            );
        }
        self.status.connected = true;
        self.status.error = None;
        self.status.slot_retained = retained;
        self.status.server_end = system.position;
        let (mut timeline, mut start) = match self.resume_point()? {
            Some(point) => point,
            None => (
                state.restart_timeline.unwrap_or(system.timeline),
                state.restart_lsn.unwrap_or(system.position),
            ),
        };
        loop {
            start = self.seg.start_lsn(self.seg.segno(start));
            if timeline > 1 {
                self.archive_history(&mut conn, timeline)?;
            }
            tracing::info!("streaming timeline {timeline} from {start}");
            self.written = start;
            self.flushed = self.flushed.max(start);
            self.status.timeline = timeline;
            self.report();
            let next = match conn.start_replication(Some(slot), timeline, start)? {
                Streamed::TimelineEnd { timeline, start } => Some((timeline, start)),
                _ => self.follow(&mut conn, timeline, stop)?,
            };
            let Some((next_timeline, next_start)) = next else {
                return Ok(());
            };
            // The timeline's last segment is incomplete for good: it is archived as
            // NAME.partial, as PostgreSQL's archiver does at a promotion.
            self.finish_current(".partial")?;
            tracing::info!(
                "timeline {timeline} ended; timeline {next_timeline} starts at {next_start}"
            );
            (timeline, start) = (next_timeline, next_start);
        }
    }

    /// Where an earlier run stopped: the start of the segment it was streaming.
    fn resume_point(&self) -> Result<Option<(u32, Lsn)>> {
        let dir = &self.options.directory;
        let mut newest = None;
        for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let name = entry?.file_name();
            let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".receiving")) else {
                continue;
            };
            if let Some(WalFile::Segment { timeline, log, seg }) = WalFile::parse(name) {
                let point = (self.seg.segno_of(log, seg), timeline);
                newest = newest.max(Some(point));
            }
        }
        Ok(newest.map(|(segno, timeline)| (timeline, self.seg.start_lsn(segno))))
    }

    /// Streams one timeline: `Some(next timeline, its start)` when it ends, `None` when
    /// told to stop.
    fn follow(
        &mut self,
        conn: &mut Replication,
        timeline: u32,
        stop: &AtomicBool,
    ) -> Result<Option<(u32, Lsn)>> {
        let interval = self.options.status_interval;
        let mut last_status = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                self.flush()?;
                conn.send_status(self.written, self.flushed, false)?;
                return Ok(None);
            }
            if self.options.synchronous && self.written > self.flushed && !conn.has_pending() {
                self.flush()?;
                conn.send_status(self.written, self.flushed, false)?;
                last_status = Instant::now();
            }
            let wait = interval
                .saturating_sub(last_status.elapsed())
                .min(STOP_CHECK);
            match conn.next(wait)? {
                Streamed::Wal {
                    start,
                    server_end,
                    data,
                } => {
                    self.status.server_end = server_end;
                    self.write(timeline, start, &data)?;
                }
                Streamed::Keepalive { server_end, reply } => {
                    self.status.server_end = server_end;
                    if reply {
                        self.flush()?;
                        conn.send_status(self.written, self.flushed, false)?;
                        last_status = Instant::now();
                    }
                }
                Streamed::Idle => {}
                Streamed::TimelineEnd { timeline, start } => return Ok(Some((timeline, start))),
            }
            if last_status.elapsed() >= interval {
                self.flush()?;
                conn.send_status(self.written, self.flushed, false)?;
                last_status = Instant::now();
            }
            if self.last_report.elapsed() >= REPORT_EVERY {
                self.report();
            }
        }
    }

    /// Writes streamed WAL at its place, completing segments as they fill.
    fn write(&mut self, timeline: u32, start: Lsn, mut data: &[u8]) -> Result<()> {
        if start != self.written {
            bail!(
                "the server sent WAL from {start} but pgkeep has written up to {}",
                self.written
            );
        }
        while !data.is_empty() {
            let segno = self.seg.segno(self.written);
            let offset = self.written.0 - self.seg.start_lsn(segno).0;
            let n = data.len().min((self.seg.0 - offset) as usize);
            let receiving = self.receiving(timeline, segno, offset)?;
            receiving
                .file
                .write_all_at(&data[..n], offset)
                .with_context(|| {
                    format!(
                        "cannot write streamed WAL in {}",
                        self.options.directory.display()
                    )
                })?;
            self.written = Lsn(self.written.0 + n as u64);
            data = &data[n..];
            if offset + n as u64 == self.seg.0 {
                self.finish_current("")?;
            }
        }
        Ok(())
    }

    /// The file of segment `segno`, created (or, after a restart, reopened) when the
    /// stream reaches its start.
    fn receiving(&mut self, timeline: u32, segno: u64, offset: u64) -> Result<&Receiving> {
        let open = self
            .current
            .as_ref()
            .is_some_and(|r| r.timeline == timeline && r.segno == segno);
        if !open {
            if self.current.is_some() || offset != 0 {
                bail!("streamed WAL does not start at a segment's start; this is a bug in pgkeep");
            }
            let path = self.path(timeline, segno, ".receiving");
            let file = OpenOptions::new()
                .write(true)
                .read(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.set_len(self.seg.0)?;
            file.sync_all()?;
            sync_dir(&self.options.directory)?;
            self.current = Some(Receiving {
                file,
                timeline,
                segno,
            });
        }
        Ok(self.current.as_ref().expect("opened above"))
    }

    fn path(&self, timeline: u32, segno: u64, suffix: &str) -> PathBuf {
        let name = self.seg.name(timeline, segno);
        self.options.directory.join(format!("{name}{suffix}"))
    }

    /// fsyncs what is written.
    fn flush(&mut self) -> Result<()> {
        if self.written > self.flushed {
            if let Some(r) = &self.current {
                r.file.sync_data().context("cannot fsync streamed WAL")?;
            }
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Ends the current segment file: fsynced, renamed to `NAME` + `suffix` (a whole
    /// segment has none) and queued for the repositories.
    fn finish_current(&mut self, suffix: &str) -> Result<()> {
        let Some(r) = self.current.take() else {
            return Ok(());
        };
        r.file.sync_data().context("cannot fsync streamed WAL")?;
        self.flushed = self.written;
        let from = self.path(r.timeline, r.segno, ".receiving");
        let to = self.path(r.timeline, r.segno, suffix);
        fs::rename(&from, &to).with_context(|| format!("cannot rename {}", from.display()))?;
        sync_dir(&self.options.directory)?;
        let name = to
            .file_name()
            .and_then(|n| n.to_str())
            .expect("WAL names are text");
        self.uploads
            .send(Upload::File(name.to_string()))
            .expect("the uploader runs");
        Ok(())
    }

    /// Streaming stopped: the segment being streamed is fsynced and its copy so far
    /// queued for the repository; the next connection streams it again from its start.
    fn stopped_streaming(&mut self) -> Result<()> {
        self.flush()?;
        let Some(r) = self.current.take() else {
            return Ok(());
        };
        let path = self.path(r.timeline, r.segno, ".receiving");
        let data = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = self.seg.name(r.timeline, r.segno);
        self.uploads
            .send(Upload::Streamed { name, data })
            .expect("the uploader runs");
        Ok(())
    }

    /// Queues the receiver's state for the repositories.
    fn report(&mut self) {
        self.status.flushed = self.flushed;
        self.status.updated = chrono::Utc::now();
        let status = Box::new(self.status.clone());
        self.uploads
            .send(Upload::Status(status))
            .expect("the uploader runs");
        self.last_report = Instant::now();
    }

    /// Stores the history file of `timeline` from the server, if the archive lacks it.
    fn archive_history(&self, conn: &mut Replication, timeline: u32) -> Result<()> {
        let (name, content) = conn.timeline_history(timeline)?;
        let file = WalFile::parse(&name)
            .filter(|f| matches!(f, WalFile::History { .. }))
            .with_context(|| format!("the server sent a history file named '{name}'"))?;
        self.repos
            .every(|ctx| archive::store(ctx, &name, &file, &content))
            .with_context(|| format!("history file {name} is not archived"))
    }
}

fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) {
    let until = Instant::now() + pause;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STOP_CHECK.min(until - Instant::now()));
    }
}

/// Sets `STOPPING` on SIGINT and SIGTERM (without SA_RESTART, so a blocked read returns
/// and the stream loop sees it).
pub fn stop_on_signals() -> &'static AtomicBool {
    extern "C" fn on_signal(_: libc::c_int) {
        STOPPING.store(true, Ordering::Relaxed);
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    &STOPPING
}

static STOPPING: AtomicBool = AtomicBool::new(false);

/// The slot of cluster `cluster` when the config names none: slot names may hold only
/// lower-case letters, digits and underscores.
pub fn default_slot(cluster: &str) -> String {
    let name: String = cluster
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .collect();
    format!("pgkeep_{name}").chars().take(63).collect()
}

/// Refuses a slot name PostgreSQL would refuse (it also names the receiver's record).
pub fn check_slot_name(slot: &str) -> Result<()> {
    let valid = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        bail!(
            "replication slot name '{slot}' is not valid: use up to 63 lower-case letters, digits and underscores"
        );
    }
    Ok(())
}
