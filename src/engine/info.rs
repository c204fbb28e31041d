//! `info`: backups, the WAL archive per timeline, and the window one can restore to.
//! The JSON shape is documented in `docs/INFO-JSON.md` and kept stable.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::Context;
use super::catalog::{Catalog, WalListing, joined};
use super::wal::need as walneed;
use super::wal::scan::{self as walscan, contiguous_end, gaps};
use super::wal::timelines;
use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::ReceiverStatus;
use crate::repo::logical::DumpManifest;
use crate::repo::manifest::BackupSummary;
use crate::repo::proof::Proof;

#[derive(Serialize)]
pub struct InfoReport {
    pub cluster: String,
    /// A string: 64-bit identifiers do not survive JSON number parsing everywhere.
    pub system_identifier: String,
    pub pg_version: u32,
    pub status: Status,
    pub backups: Vec<BackupInfo>,
    /// Logical backups (pg_dump archives), oldest first.
    pub dumps: Vec<DumpInfo>,
    pub wal: Vec<TimelineInfo>,
    pub recoverable: Option<Window>,
    /// What each receive-wal last reported.
    pub receivers: Vec<ReceiverInfo>,
    /// The sentences of `status.attention` about missing WAL that limits recovery.
    #[serde(skip)]
    pub wal_limits: Vec<String>,
    /// The cluster's WAL segment size, to place segments by LSN.
    #[serde(skip)]
    pub segment_size: SegmentSize,
}

/// A receive-wal's last report, with how far it is behind the server.
#[derive(Serialize)]
pub struct ReceiverInfo {
    #[serde(flatten)]
    pub status: ReceiverStatus,
    /// Bytes of WAL the server had that the receiver had not yet fsynced.
    pub behind: u64,
}

/// A receiver that has not reported for this long is taken for stopped.
const RECEIVER_SILENCE: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The repository in one line: ok, or what needs attention.
#[derive(Serialize)]
pub struct Status {
    pub ok: bool,
    /// One sentence each, with what to do.
    pub attention: Vec<String>,
}

#[derive(Serialize)]
pub struct BackupInfo {
    pub label: String,
    /// Pinned backups are kept whatever the retention policy says.
    pub pinned: bool,
    /// The backup it took unchanged data from (`null` for a full backup).
    pub parent: Option<String>,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: u32,
    pub size: u64,
    pub stored_size: u64,
    pub files: usize,
    pub bad_blocks: usize,
    /// Whether the cluster had page checksums, so the backup validated its pages.
    pub data_checksums: bool,
    /// The newest restore proof of this backup (`pgkeep prove`), if it has one.
    pub proof: Option<ProofInfo>,
}

/// A restore proof in short.
#[derive(Serialize)]
pub struct ProofInfo {
    pub finished: DateTime<Utc>,
    pub target: String,
    pub passed: bool,
    /// Restore and recovery until the copy was open, if it opened.
    pub rto_seconds: Option<f64>,
    /// The first failed check and why.
    pub failure: Option<String>,
}

impl ProofInfo {
    fn of(p: &Proof) -> ProofInfo {
        ProofInfo {
            finished: p.finished,
            target: p.target.clone(),
            passed: p.passed,
            rto_seconds: p.rto_seconds(),
            failure: p.failure(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone)]
pub struct DumpInfo {
    pub label: String,
    /// Empty for a dump of the globals.
    pub database: String,
    /// A dump of the globals (roles, tablespaces), not of a database.
    pub globals: bool,
    /// The globals dump of the `dump --all` run this dump is part of.
    pub set: Option<String>,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// The server's `server_version_num`.
    pub pg_version: u32,
    pub size: u64,
    pub stored_size: u64,
    /// What was dumped, in pg_dump's options ("all" when nothing was narrowed).
    pub selection: String,
}

impl DumpInfo {
    pub fn of(d: &DumpManifest) -> DumpInfo {
        DumpInfo {
            label: d.label.clone(),
            database: d.database.clone(),
            globals: d.globals,
            set: d.set.clone(),
            start_time: d.start_time,
            stop_time: d.stop_time,
            pg_version: d.pg_version,
            size: d.size,
            stored_size: d.stored_size,
            selection: match &d.imported_from {
                Some(from) => format!("imported from {from} ({} format)", d.format.name()),
                None => d.selection.describe(),
            },
        }
    }
}

#[derive(Serialize)]
pub struct TimelineInfo {
    pub timeline: u32,
    pub first_segment: String,
    pub last_segment: String,
    pub segments: usize,
    /// Runs of missing segments between the first and the last: `[first, last]`.
    pub gaps: Vec<[String; 2]>,
    pub last_archived: DateTime<Utc>,
}

/// From the end of the oldest restorable backup to the last WAL that continues, without a
/// gap, from a backup. `to_time` is the last commit in that WAL (when the last 16
/// segments hold none, the time the last segment was archived).
#[derive(Serialize, Clone)]
pub struct Window {
    pub from_time: DateTime<Utc>,
    pub from_backup: String,
    pub to_time: DateTime<Utc>,
    pub to_segment: String,
}

/// How many segments back from the window's end to look for its last transaction.
const TRANSACTION_SEARCH_SEGMENTS: u64 = 16;

fn to_time(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// The report of `ctx`'s repository now, from its catalog.
pub fn current(ctx: &Context) -> Result<InfoReport> {
    report(ctx, &Catalog::read(ctx, WalListing::Changes)?)
}

pub fn report(ctx: &Context, catalog: &Catalog) -> Result<InfoReport> {
    let info = &catalog.info;
    let seg = SegmentSize(info.wal_segment_size);
    let archive = &catalog.wal;
    let manifests = &catalog.backups;
    // At once: on object storage each is a round trip.
    let (pinned, receivers, window, paths) = std::thread::scope(|s| {
        let pinned = s.spawn(|| ctx.repo.pinned());
        let receivers = s.spawn(|| ctx.repo.receiver_statuses());
        let window = s.spawn(|| walneed::Window::read(&ctx.repo).0);
        let histories = catalog.histories.iter().copied();
        let (paths, _) = timelines::paths_of(&ctx.repo, histories, archive.keys().copied());
        (joined(pinned), joined(receivers), joined(window), paths)
    });
    let pinned = pinned?;
    let wal = archive
        .iter()
        .map(|(&timeline, segments)| TimelineInfo {
            timeline,
            first_segment: seg.name(timeline, *segments.keys().next().unwrap()),
            last_segment: seg.name(timeline, *segments.keys().next_back().unwrap()),
            segments: segments.len(),
            gaps: gaps(segments)
                .into_iter()
                .map(|(a, b)| [seg.name(timeline, a), seg.name(timeline, b)])
                .collect(),
            last_archived: to_time(*segments.values().max().unwrap()),
        })
        .collect();
    // Where each consistent backup's WAL runs to without a gap; the window ends at the
    // furthest such point and starts at the oldest backup whose WAL reaches it.
    let runs: Vec<(&BackupSummary, u64, i64)> = manifests
        .iter()
        .filter_map(|m| {
            let (end, archived) = contiguous_end(archive.get(&m.timeline), seg.segno(m.start_lsn))?;
            (end >= seg.segno_before(m.stop_lsn)).then_some((m, end, archived))
        })
        .collect();
    let mut recoverable =
        runs.iter()
            .max_by_key(|(_, _, archived)| *archived)
            .map(|&(last, end, archived)| {
                let oldest = runs
                    .iter()
                    .filter(|(m, e, _)| m.timeline == last.timeline && *e == end)
                    .map(|(m, _, _)| *m)
                    .min_by_key(|m| m.stop_time)
                    .unwrap_or(last);
                Window {
                    from_time: oldest.stop_time,
                    from_backup: oldest.label.clone(),
                    to_time: to_time(archived),
                    to_segment: seg.name(last.timeline, end),
                }
            });
    if let Some(w) = recoverable.as_mut()
        && let Some(WalFile::Segment {
            timeline,
            log,
            seg: s,
        }) = WalFile::parse(&w.to_segment)
    {
        let end = seg.segno_of(log, s);
        let find = || {
            walscan::last_transaction_time(
                &ctx.repo,
                seg,
                &TimelinePath::single(timeline),
                seg.start_lsn(end.saturating_sub(TRANSACTION_SEARCH_SEGMENTS - 1)),
                end,
            )
        };
        // WAL streamed past the archive's end is still growing: searched each time.
        let last = match ctx.repo.has_streamed(&seg.name(timeline, end + 1))? {
            true => find()?,
            false => catalog.last_commit(&w.to_segment, find)?,
        };
        if let Some(last) = last {
            w.to_time = last;
        }
    }
    let receivers: Vec<ReceiverInfo> = receivers?
        .into_iter()
        .map(|status| ReceiverInfo {
            behind: status.server_end.0.saturating_sub(status.flushed.0),
            status,
        })
        .collect();
    // Oldest first, so each backup ends up with its newest.
    let mut proofs: BTreeMap<String, ProofInfo> = BTreeMap::new();
    for p in &catalog.proofs {
        proofs.insert(p.backup.clone(), ProofInfo::of(p));
    }
    let wal_limits = wal_limits(&window.needs(manifests, seg), &paths, seg, archive);
    let mut attention = attention(manifests, recoverable.is_some());
    attention.extend(wal_limits.iter().cloned());
    attention.extend(proof_attention(manifests, &proofs));
    attention.extend(receiver_attention(ctx, &receivers, Utc::now()));
    Ok(InfoReport {
        cluster: ctx.cluster_name.to_string(),
        system_identifier: info.system_identifier.to_string(),
        pg_version: info.pg_version,
        status: Status {
            ok: attention.is_empty(),
            attention,
        },
        backups: manifests
            .iter()
            .map(|m| BackupInfo {
                label: m.label.clone(),
                pinned: pinned.contains(&m.label),
                parent: m.parent.clone(),
                start_time: m.start_time,
                stop_time: m.stop_time,
                start_lsn: m.start_lsn,
                stop_lsn: m.stop_lsn,
                timeline: m.timeline,
                size: m.size,
                stored_size: m.stored_size,
                files: m.files,
                bad_blocks: m.bad_blocks,
                data_checksums: m.data_checksums,
                proof: proofs.remove(&m.label),
            })
            .collect(),
        dumps: catalog.dumps.clone(),
        wal,
        recoverable,
        receivers,
        wal_limits,
        segment_size: seg,
    })
}

/// Backups whose newest proof failed.
fn proof_attention(
    manifests: &[BackupSummary],
    proofs: &BTreeMap<String, ProofInfo>,
) -> Vec<String> {
    manifests
        .iter()
        .filter_map(|m| {
            let p = proofs.get(&m.label).filter(|p| !p.passed)?;
            Some(format!(
                "backup {} FAILED its restore proof at {} ({}); restore another backup until the cause is found (`pgkeep verify`), then prove it again",
                m.label,
                p.finished.format("%Y-%m-%d %H:%M:%S UTC"),
                p.failure
                    .as_deref()
                    .and_then(|f| f.lines().next())
                    .unwrap_or("no reason recorded")
            ))
        })
        .collect()
}

/// What needs attention about the receivers: one not streaming, one silent, a slot
/// holding too much WAL on the server.
fn receiver_attention(
    ctx: &Context,
    receivers: &[ReceiverInfo],
    now: DateTime<Utc>,
) -> Vec<String> {
    let limit = ctx.config.receive.warn_slot_wal_mb.saturating_mul(1 << 20);
    let mut out = Vec::new();
    for r in receivers.iter().map(|r| &r.status) {
        let who = format!(
            "receive-wal on {} (slot {}, from {})",
            r.host, r.slot, r.server
        );
        if !r.connected {
            out.push(format!(
                "{who} is not streaming since {}: {}",
                r.updated.format("%Y-%m-%d %H:%M:%S UTC"),
                r.error.as_deref().unwrap_or("no reason recorded")
            ));
        } else if now - r.updated > RECEIVER_SILENCE {
            out.push(format!(
                "{who} has not reported since {}: check that it runs",
                r.updated.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        if r.slot_retained > limit {
            out.push(format!(
                "{who}: the slot held {} of WAL on the server, more than [receive] warn_slot_wal_mb; \
                 if the receiver is retired, drop the slot before the server's disk fills",
                super::human_bytes(r.slot_retained)
            ));
        }
    }
    out
}

/// What needs the DBA's attention, one sentence each.
fn attention(manifests: &[BackupSummary], recoverable: bool) -> Vec<String> {
    let mut out = Vec::new();
    let Some(newest) = manifests.iter().max_by_key(|m| m.stop_time) else {
        out.push("no backup yet: run `pgkeep backup`".into());
        return out;
    };
    if !recoverable {
        out.push(
            "no backup can be restored yet: the WAL from its start to its stop is not all archived; run `pgkeep check`"
                .into(),
        );
    }
    if !newest.data_checksums {
        out.push(
            "the cluster has no data checksums, so backups cannot validate pages; enable them with pg_checksums --enable (server stopped)"
                .into(),
        );
    }
    for m in manifests.iter().filter(|m| m.bad_blocks > 0) {
        out.push(format!(
            "backup {} holds {} blocks that failed page checksum validation; check the cluster with pg_amcheck",
            m.label, m.bad_blocks
        ));
    }
    out
}

/// Missing WAL that limits what backups can recover to, one sentence each.
fn wal_limits(
    needs: &[walneed::Need],
    paths: &BTreeMap<u32, TimelinePath>,
    seg: SegmentSize,
    archive: &BTreeMap<u32, walscan::Segments>,
) -> Vec<String> {
    walneed::limits(needs, paths, seg, archive)
        .iter()
        .map(|limit| {
            format!(
                "{} (limits backups {}); run `pgkeep verify`",
                limit.describe(seg),
                limit.backups.join(", ")
            )
        })
        .collect()
}

/// The report as text for a terminal.
pub fn render(r: &InfoReport) -> String {
    use super::human_bytes;
    let mut out = format!(
        "cluster {} (system {}, PostgreSQL {})\n",
        r.cluster,
        r.system_identifier,
        r.pg_version / 10000
    );
    if r.status.ok {
        out.push_str("status: ok\n");
    } else {
        out.push_str("status: ATTENTION\n");
        for a in &r.status.attention {
            out.push_str(&format!("  - {a}\n"));
        }
    }
    out.push_str("\nbackups (times UTC):\n");
    if r.backups.is_empty() {
        out.push_str("  none\n");
    }
    for b in &r.backups {
        out.push_str(&format!(
            "  {}  {} .. {}  tl {}  lsn {} .. {}  size {}  stored {}  {}{}\n",
            b.label,
            b.start_time.format("%Y-%m-%d %H:%M:%S"),
            b.stop_time.format("%H:%M:%S"),
            b.timeline,
            b.start_lsn,
            b.stop_lsn,
            human_bytes(b.size),
            human_bytes(b.stored_size),
            b.parent
                .as_ref()
                .map_or("full".to_string(), |p| format!("parent {p}"))
                + if b.pinned { "  PINNED" } else { "" },
            if b.bad_blocks > 0 {
                format!("  {} BAD BLOCKS", b.bad_blocks)
            } else if !b.data_checksums {
                "  no page checksums".to_string()
            } else {
                String::new()
            }
        ));
        if let Some(p) = &b.proof {
            out.push_str(&format!(
                "      {} {} (target {}){}\n",
                if p.passed { "proved" } else { "PROOF FAILED" },
                p.finished.format("%Y-%m-%d %H:%M:%S"),
                p.target,
                p.rto_seconds
                    .map(|s| format!(", RTO {s:.1} s"))
                    .unwrap_or_default()
            ));
        }
    }
    out.push_str("\nlogical backups (times UTC):\n");
    if r.dumps.is_empty() {
        out.push_str("  none\n");
    }
    for d in &r.dumps {
        out.push_str(&format!(
            "  {}  {} .. {}  {}  size {}  stored {}  {}\n",
            d.label,
            d.start_time.format("%Y-%m-%d %H:%M:%S"),
            d.stop_time.format("%H:%M:%S"),
            match d.globals {
                true => "globals".to_string(),
                false => format!("database {}", d.database),
            },
            human_bytes(d.size),
            human_bytes(d.stored_size),
            d.selection
        ));
    }
    out.push_str("\nWAL archive:\n");
    if r.wal.is_empty() {
        out.push_str("  empty\n");
    }
    for t in &r.wal {
        out.push_str(&format!(
            "  timeline {}: {} .. {} ({} segments, last archived {})\n",
            t.timeline,
            t.first_segment,
            t.last_segment,
            t.segments,
            t.last_archived.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        for [a, b] in &t.gaps {
            out.push_str(&format!("    GAP: {a} .. {b} missing\n"));
        }
    }
    match &r.recoverable {
        Some(w) => out.push_str(&format!(
            "\nrecoverable: {} UTC .. {} UTC\n",
            w.from_time.format("%Y-%m-%d %H:%M:%S"),
            w.to_time.format("%Y-%m-%d %H:%M:%S")
        )),
        None => out.push_str("\nrecoverable: nothing yet (no backup with its WAL archived)\n"),
    }
    if !r.receivers.is_empty() {
        out.push_str("\nreceive-wal:\n");
    }
    for ReceiverInfo { status: s, behind } in &r.receivers {
        out.push_str(&format!(
            "  slot {} on {} from {}: {}, timeline {}, flushed {}, {} behind the server{}, reported {}\n",
            s.slot,
            s.host,
            s.server,
            if s.connected { "streaming" } else { "NOT STREAMING" },
            s.timeline,
            s.flushed,
            human_bytes(*behind),
            if s.synchronous { ", synchronous" } else { "" },
            s.updated.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    out
}
