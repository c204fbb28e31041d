//! `receive-wal`: WAL streamed from the server over a replication connection (with a
//! physical slot) into the repository, as pg_receivewal streams it into a directory.
//! This thread streams into local files; `upload` stores them.
//!
//! Local files (in the receive directory, one receiver per directory):
//! `NAME.receiving` is the segment being streamed, written from its start, zero-padded to
//! the segment size; `NAME` a whole segment waiting to be stored; `NAME.partial` the last
//! segment of a timeline that ended (a promotion), waiting to be stored.
//!
//! Invariants:
//! - The flush position reported to the server never passes what is fsynced locally on
//!   the timeline being streamed, so the slot keeps on the server every byte not yet
//!   durable here, and a synchronous primary acknowledges only commits that are.
//! - A segment is renamed from `.receiving` only once whole and fsynced (and the
//!   uploader removes it only once stored in every repository).
//! - When streaming stops, and at start for a `.receiving` an earlier run left, the
//!   segment being streamed is stored as the repository's streamed copy of it, which
//!   archive-get serves for a segment not archived whole. So what the server was told
//!   is flushed reaches the repository even if the server never comes back.
//! - A server that sends nothing, not even the keepalive asked for, for
//!   `SILENCE_INTERVALS` status intervals is taken for gone: the connection is dropped.

mod upload;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crossbeam_channel::Sender;

use self::upload::{Upload, store_uploads};
use crate::config::{Encryption, ReceiveConfig};
use crate::engine::repositories::Repositories;
use crate::engine::wal::archive;
use crate::format::lsn::Lsn;
use crate::format::wal::{SegmentSize, WalFile};
use crate::os::sync_dir;
use crate::pg::conninfo::ConnParams;
use crate::pg::replication::{Replication, SlotState, Streamed, SystemId};
use crate::pg::session::Session;
use crate::repo::ReceiverStatus;
use crate::repo::lock::{LockMode, LockService};
use crate::repo::storage::LocalLocks;

/// The longest wait between reconnection attempts (and between upload attempts).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How often the stream loop looks at the stop flag while the server is quiet.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// How often the receiver records its state in the repositories.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Status intervals without a word from the server after which it is taken for gone.
const SILENCE_INTERVALS: u32 = 3;

/// How receive-wal runs (from `[receive]` and the command line).
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

/// The stream side of receive-wal: one connection at a time, its position and files.
struct WalReceiver<'a, 'c> {
    repos: &'a Repositories<'c>,
    options: &'a ReceiveOptions,
    seg: SegmentSize,
    system_identifier: u64,
    uploads: Sender<Upload>,
    current: Option<Receiving>,
    /// End of the WAL written locally, of what is fsynced, and of what the server was
    /// last told is flushed (all on the timeline being streamed).
    written: Lsn,
    flushed: Lsn,
    reported: Lsn,
    last_status: Instant,
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
    for upload in left_behind(dir)? {
        uploads.send(upload).expect("queue is open");
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
            reported: Lsn(0),
            last_status: Instant::now(),
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

/// What an earlier run left in `dir`, oldest first: whole segments and ended timelines'
/// partial segments to archive, and the streamed copy of a segment it was streaming.
fn left_behind(dir: &Path) -> Result<Vec<Upload>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .filter_map(|name| match WalFile::parse(&name) {
            Some(WalFile::Segment { .. } | WalFile::Partial { .. }) => Some(Upload::File(name)),
            _ => {
                let segment = name.strip_suffix(".receiving")?;
                matches!(WalFile::parse(segment), Some(WalFile::Segment { .. }))
                    .then(|| Upload::Streamed(segment.to_string()))
            }
        })
        .collect())
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
                Err(_) if stop.load(Ordering::Relaxed) => break,
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
        self.refuse_decrypted_wal_into_plain_repositories(params)?;
        let state = self.slot(&mut conn, &system)?;
        self.status.server = conn.server().to_string();
        self.status.connected = true;
        self.status.error = None;
        self.status.server_end = system.position;
        let (mut timeline, mut start) = match self.resume_point()? {
            Some(point) => point,
            None => (
                state.restart_timeline.unwrap_or(system.timeline),
                state.restart_lsn.unwrap_or(system.position),
            ),
        };
        loop {
            // Always from a segment's start, so a local file never has a hole.
            start = self.seg.start_lsn(self.seg.segno(start));
            if timeline > 1 {
                self.archive_history(&mut conn, timeline)?;
            }
            tracing::info!("streaming timeline {timeline} from {start}");
            (self.written, self.flushed, self.reported) = (start, start, start);
            self.status.timeline = timeline;
            self.report();
            let next = match conn.start_replication(&self.options.slot, timeline, start)? {
                Some(ended) => Some(ended),
                None => self.follow(&mut conn, timeline, stop)?,
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

    /// pg_tde encrypts WAL on disk, but a walsender sends it decrypted: streamed into a
    /// repository that is not encrypted, it would lie there in the clear.
    fn refuse_decrypted_wal_into_plain_repositories(&self, params: &ConnParams) -> Result<()> {
        if !Session::connect(params)?.has_tde_wal_keys() {
            return Ok(());
        }
        self.repos
            .every(|ctx| match ctx.repo_config.encryption {
                Encryption::None => bail!(
                    "the server encrypts its WAL with pg_tde (it has pg_tde/wal_keys), and a replication \
                     connection sends WAL decrypted, so receive-wal does not store it in this repository, \
                     which is not encrypted: use an encrypted repository, or archive_command, which stores \
                     WAL as PostgreSQL wrote it"
                ),
                _ => Ok(()),
            })
            .map_err(|e| anyhow::anyhow!(Fatal(format!("{e:#}"))))
    }

    /// The slot's state, the slot created if missing; warns loudly when it holds more
    /// WAL on the server than `warn_slot_wal`.
    fn slot(&mut self, conn: &mut Replication, system: &SystemId) -> Result<SlotState> {
        let slot = self.options.slot.as_str();
        let state = match conn.read_slot(slot)? {
            Some(state) if !state.physical => bail!(Fatal(format!(
                "replication slot '{slot}' is a logical slot; receive-wal needs a physical one: name another in [receive] slot"
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
        self.status.slot_retained = retained;
        Ok(state)
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
        let mut last_heard = Instant::now();
        self.last_status = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                self.confirm(conn, false)?;
                return Ok(None);
            }
            if self.options.synchronous && !conn.has_pending() && self.unconfirmed() {
                self.confirm(conn, false)?;
            }
            let wait = interval
                .saturating_sub(self.last_status.elapsed())
                .min(STOP_CHECK);
            let message = conn.next(wait)?;
            if !matches!(message, Streamed::Idle) {
                last_heard = Instant::now();
            }
            match message {
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
                        self.confirm(conn, false)?;
                    }
                }
                Streamed::Idle => {}
                Streamed::TimelineEnd { timeline, start } => return Ok(Some((timeline, start))),
            }
            if last_heard.elapsed() > interval * SILENCE_INTERVALS {
                bail!(
                    "{} has sent nothing for {} s, not even the keepalive asked for; taking it for gone",
                    conn.server(),
                    last_heard.elapsed().as_secs()
                );
            }
            if self.last_status.elapsed() >= interval {
                // Asking for a reply proves the server is still there.
                self.confirm(conn, true)?;
            }
            if self.last_report.elapsed() >= REPORT_EVERY {
                self.report();
            }
        }
    }

    /// Whether WAL is written or flushed beyond what the server was told.
    fn unconfirmed(&self) -> bool {
        self.written > self.flushed || self.flushed > self.reported
    }

    /// fsyncs what is written and tells the server; `ask` requests a keepalive back.
    fn confirm(&mut self, conn: &mut Replication, ask: bool) -> Result<()> {
        self.flush()?;
        conn.send_status(self.written, self.flushed, ask)?;
        self.reported = self.flushed;
        self.last_status = Instant::now();
        Ok(())
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
        let name = self.seg.name(r.timeline, r.segno) + suffix;
        self.uploads
            .send(Upload::File(name))
            .expect("the uploader runs");
        Ok(())
    }

    /// Streaming stopped: the segment being streamed is fsynced and queued as a
    /// streamed copy; the next connection streams it again from its start.
    fn stopped_streaming(&mut self) -> Result<()> {
        self.flush()?;
        let Some(r) = self.current.take() else {
            return Ok(());
        };
        let name = self.seg.name(r.timeline, r.segno);
        self.uploads
            .send(Upload::Streamed(name))
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

/// The slot receive-wal uses for cluster `cluster`: the configured one, or the default.
pub fn slot_of(receive: &ReceiveConfig, cluster: &str) -> String {
    (receive.slot.clone()).unwrap_or_else(|| default_slot(cluster))
}

/// The slot of cluster `cluster` when the config names none: slot names may hold only
/// lower-case letters, digits and underscores.
fn default_slot(cluster: &str) -> String {
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
