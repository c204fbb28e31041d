//! `status`: how much would be lost if the server died now (RPO), how long getting it
//! back would take (RTO, measured by proofs and estimated for now), what can be
//! recovered to, and whether backups and proofs are recent, each judged OK, WARNING or
//! CRITICAL against `[status]`.
//!
//! RPO counts WAL the server has written that is not durable on pgkeep's side: in the
//! repository (archived segments) or fsynced by a receive-wal that the server reports
//! as flushed. With a synchronous receive-wal streaming, no committed transaction can
//! be lost, so RPO is 0 by construction.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::Context;
use crate::engine::catalog::{Catalog, WalListing};
use crate::engine::info::{self, Window};
use crate::engine::wal::receive;
use crate::format::lsn::Lsn;
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::manifest::BackupSummary;
use crate::repo::proof::Proof;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok,
    Unknown,
    Warning,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Unknown => "UNKNOWN",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }

    /// Nagios' plugin exit code.
    pub fn nagios_code(self) -> i32 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
            Level::Unknown => 3,
        }
    }

    /// The level of `value` against a warning and a critical threshold.
    fn of(value: f64, warning: f64, critical: f64) -> Level {
        if value > critical {
            Level::Critical
        } else if value > warning {
            Level::Warning
        } else {
            Level::Ok
        }
    }
}

/// One judged matter: what it is about, its level, and one sentence.
#[derive(Serialize, Debug)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
}

#[derive(Serialize)]
pub struct StatusReport {
    pub cluster: String,
    pub repository: String,
    /// The worst level of the findings.
    pub level: Level,
    pub findings: Vec<Finding>,
    pub newest_backup: Option<Newest>,
    pub newest_dump: Option<Newest>,
    /// `null` when the server could not be asked.
    pub rpo: Option<Rpo>,
    pub archiver: Option<Archiver>,
    pub recoverable: Option<Window>,
    pub last_proof: Option<ProofSummary>,
    /// Restore of the newest backup and replay of the WAL since, at the rates the
    /// newest passed proof measured.
    pub estimated_rto_seconds: Option<f64>,
    /// What the status was judged from (for `serve`'s metrics and web view).
    #[serde(skip)]
    pub info: info::InfoReport,
}

#[derive(Serialize)]
pub struct Newest {
    pub label: String,
    pub finished: DateTime<Utc>,
    pub age_seconds: f64,
}

#[derive(Serialize)]
pub struct Rpo {
    /// The end of the server's WAL (on a standby, of what it received).
    pub server_lsn: Lsn,
    /// The end of the WAL durable on pgkeep's side.
    pub durable_lsn: Option<Lsn>,
    pub bytes: u64,
    /// Since the repository's WAL last grew (the last segment archived), or the
    /// receiver's flush lag: how long the WAL not yet durable has been accumulating.
    pub seconds: Option<f64>,
    /// `archive`, `receive-wal`, or `synchronous receive-wal`.
    pub via: String,
}

/// The server's `pg_stat_archiver`.
#[derive(Serialize)]
pub struct Archiver {
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
}

impl Archiver {
    /// Whether the last attempt failed.
    pub fn failing(&self) -> bool {
        self.last_failed_time
            .is_some_and(|failed| self.last_archived_time.is_none_or(|ok| failed > ok))
    }
}

#[derive(Serialize)]
pub struct ProofSummary {
    pub backup: String,
    pub finished: DateTime<Utc>,
    pub age_seconds: f64,
    pub passed: bool,
    pub rto_seconds: Option<f64>,
}

/// What the server says about its WAL, or why it could not be asked.
struct ServerWal {
    lsn: Lsn,
    archiver: Archiver,
    /// A receive-wal on the cluster's slot: flushed position, synchronous, flush lag.
    receiver: Option<(Lsn, bool, Option<f64>)>,
}

pub fn status(ctx: &Context, now: DateTime<Utc>) -> Result<StatusReport> {
    let catalog = Catalog::read(ctx, WalListing::Changes)?;
    let report = info::report(ctx, &catalog)?;
    let (manifests, proofs) = (&catalog.backups, &catalog.proofs);
    let limits = &ctx.config.status;
    let mut findings = Vec::new();
    let mut find = |check, level, message: String| {
        findings.push(Finding {
            check,
            level,
            message,
        })
    };
    let age = |t: DateTime<Utc>| (now - t).num_milliseconds() as f64 / 1000.0;

    let newest = manifests.iter().max_by_key(|m| m.stop_time);
    let newest_backup = newest.map(|m| Newest {
        label: m.label.clone(),
        finished: m.stop_time,
        age_seconds: age(m.stop_time),
    });
    match &newest_backup {
        None => find(
            "backup",
            Level::Critical,
            "no backup yet: run `pgkeep backup`".into(),
        ),
        Some(b) => find(
            "backup",
            Level::of(
                b.age_seconds / 3600.0,
                limits.backup_age_warning_hours,
                limits.backup_age_critical_hours,
            ),
            format!(
                "newest backup {} finished {} ago (warning after {} h, critical after {} h)",
                b.label,
                duration(b.age_seconds),
                limits.backup_age_warning_hours,
                limits.backup_age_critical_hours
            ),
        ),
    }
    let newest_dump = report
        .dumps
        .iter()
        .max_by_key(|d| d.stop_time)
        .map(|d| Newest {
            label: d.label.clone(),
            finished: d.stop_time,
            age_seconds: age(d.stop_time),
        });

    let seg = SegmentSize(catalog.info.wal_segment_size);
    let archive_end = report.wal.iter().max_by_key(|t| t.timeline).and_then(|t| {
        let WalFile::Segment { log, seg: s, .. } = WalFile::parse(&t.last_segment)? else {
            return None;
        };
        Some(seg.start_lsn(seg.segno_of(log, s) + 1))
    });
    let (rpo, archiver) = match server_wal(ctx) {
        Ok(server) => {
            let rpo = rpo_of(&server, archive_end, now);
            judge_rpo(&rpo, limits, &mut find);
            if server.archiver.failing() {
                find(
                    "archiver",
                    Level::Critical,
                    format!(
                        "archive_command is failing: {} failed at {} (pg_stat_archiver); see the server's log and run `pgkeep check`",
                        server
                            .archiver
                            .last_failed_wal
                            .as_deref()
                            .unwrap_or("a file"),
                        server.archiver.last_failed_time.map_or(String::new(), |t| t
                            .format("%Y-%m-%d %H:%M:%S UTC")
                            .to_string())
                    ),
                );
            }
            (Some(rpo), Some(server.archiver))
        }
        Err(e) => {
            find(
                "rpo",
                Level::Unknown,
                format!("cannot ask the server for its WAL position: {e:#}"),
            );
            (None, None)
        }
    };

    match &report.recoverable {
        None => find(
            "recoverable",
            Level::Critical,
            "nothing can be recovered: no backup has its WAL in the repository".into(),
        ),
        Some(w) => find(
            "recoverable",
            Level::Ok,
            format!(
                "recoverable from {} to {} UTC",
                w.from_time.format("%Y-%m-%d %H:%M:%S"),
                w.to_time.format("%Y-%m-%d %H:%M:%S")
            ),
        ),
    }
    for limit in &report.wal_limits {
        find("wal", Level::Warning, limit.clone());
    }

    let last_proof = proofs.last().map(|p| ProofSummary {
        backup: p.backup.clone(),
        finished: p.finished,
        age_seconds: age(p.finished),
        passed: p.passed,
        rto_seconds: p.rto_seconds(),
    });
    judge_proofs(&report.backups, last_proof.as_ref(), limits, &mut find);
    let estimated_rto_seconds = newest.and_then(|m| estimate_rto(m, proofs, rpo.as_ref()));

    let level = findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    Ok(StatusReport {
        cluster: ctx.cluster_name.to_string(),
        repository: ctx.repo_config.path.to_string(),
        level,
        findings,
        newest_backup,
        newest_dump,
        rpo,
        archiver,
        recoverable: report.recoverable.clone(),
        last_proof,
        estimated_rto_seconds,
        info: report,
    })
}

/// The server's WAL position, archiver state and the receiver on the cluster's slot.
fn server_wal(ctx: &Context) -> Result<ServerWal> {
    let mut session = ctx.connect()?;
    let row = &session.rows(
        "SELECT CASE WHEN pg_is_in_recovery() \
                     THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                     ELSE pg_current_wal_lsn() END::text, \
                archived_count::text, coalesce(last_archived_wal, ''), \
                coalesce(extract(epoch FROM last_archived_time)::text, ''), \
                failed_count::text, coalesce(last_failed_wal, ''), \
                coalesce(extract(epoch FROM last_failed_time)::text, '') \
         FROM pg_stat_archiver",
    )?[0];
    let text = |i: usize| Some(row[i].clone()).filter(|s| !s.is_empty());
    let time = |i: usize| {
        text(i)
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(|secs| DateTime::from_timestamp_millis((secs * 1000.0) as i64))
    };
    let archiver = Archiver {
        archived_count: row[1].parse().unwrap_or(0),
        last_archived_wal: text(2),
        last_archived_time: time(3),
        failed_count: row[4].parse().unwrap_or(0),
        last_failed_wal: text(5),
        last_failed_time: time(6),
    };
    let slot = receive::slot_of(&ctx.config.receive, ctx.cluster_name);
    let receiver = session
        .rows_with(
            "SELECT coalesce(r.flush_lsn::text, ''), r.sync_state, \
                    coalesce(extract(epoch FROM r.flush_lag)::text, '') \
             FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&slot],
        )?
        .first()
        .and_then(|r| {
            let flushed: Lsn = r[0].parse().ok()?;
            // Under quorum commit a commit may be acknowledged without this receiver.
            let synchronous = r[1] == "sync";
            Some((flushed, synchronous, r[2].parse().ok()))
        });
    Ok(ServerWal {
        lsn: row[0].parse().map_err(anyhow::Error::msg)?,
        archiver,
        receiver,
    })
}

fn rpo_of(server: &ServerWal, archive_end: Option<Lsn>, now: DateTime<Utc>) -> Rpo {
    if let Some((flushed, true, _)) = server.receiver {
        return Rpo {
            server_lsn: server.lsn,
            durable_lsn: Some(flushed),
            bytes: 0,
            seconds: Some(0.0),
            via: "synchronous receive-wal".into(),
        };
    }
    let received = server.receiver.map(|(flushed, _, _)| flushed);
    let durable = archive_end.max(received);
    let bytes = durable.map_or(server.lsn.0, |d| server.lsn.0.saturating_sub(d.0));
    let by_receiver = received.is_some() && received == durable;
    let seconds = if bytes == 0 {
        Some(0.0)
    } else if by_receiver {
        server.receiver.and_then(|(_, _, lag)| lag).or(Some(0.0))
    } else {
        server
            .archiver
            .last_archived_time
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    };
    Rpo {
        server_lsn: server.lsn,
        durable_lsn: durable,
        bytes,
        seconds,
        via: if by_receiver {
            "receive-wal"
        } else {
            "archive"
        }
        .into(),
    }
}

fn judge_rpo(
    rpo: &Rpo,
    limits: &crate::config::StatusConfig,
    find: &mut impl FnMut(&'static str, Level, String),
) {
    let Some(seconds) = rpo.seconds else {
        find(
            "rpo",
            Level::Warning,
            format!(
                "{} of WAL is not in the repository and nothing was ever archived; run `pgkeep check`",
                crate::engine::human_bytes(rpo.bytes)
            ),
        );
        return;
    };
    find(
        "rpo",
        Level::of(
            seconds,
            limits.rpo_warning_seconds,
            limits.rpo_critical_seconds,
        ),
        format!(
            "RPO {} ({} of WAL not yet durable, via {}; warning after {} s, critical after {} s)",
            duration(seconds),
            crate::engine::human_bytes(rpo.bytes),
            rpo.via,
            limits.rpo_warning_seconds,
            limits.rpo_critical_seconds
        ),
    );
}

fn judge_proofs(
    backups: &[info::BackupInfo],
    last: Option<&ProofSummary>,
    limits: &crate::config::StatusConfig,
    find: &mut impl FnMut(&'static str, Level, String),
) {
    for b in backups {
        if let Some(p) = b.proof.as_ref().filter(|p| !p.passed) {
            find(
                "proof",
                Level::Critical,
                format!(
                    "backup {} FAILED its restore proof at {}: {}",
                    b.label,
                    p.finished.format("%Y-%m-%d %H:%M:%S UTC"),
                    p.failure
                        .as_deref()
                        .and_then(|f| f.lines().next())
                        .unwrap_or("no reason recorded")
                ),
            );
        }
    }
    let Some(last) = last else {
        find(
            "proof",
            Level::Warning,
            "no restore proof yet: run `pgkeep prove`".into(),
        );
        return;
    };
    find(
        "proof",
        Level::of(
            last.age_seconds / 86400.0,
            limits.proof_age_warning_days,
            limits.proof_age_critical_days,
        ),
        format!(
            "newest restore proof {} ago, of backup {}: {}{} (warning after {} days, critical after {})",
            duration(last.age_seconds),
            last.backup,
            if last.passed { "passed" } else { "FAILED" },
            last.rto_seconds
                .map(|s| format!(", RTO {}", duration(s)))
                .unwrap_or_default(),
            limits.proof_age_warning_days,
            limits.proof_age_critical_days
        ),
    );
}

/// Restoring `newest` and replaying the WAL since its start, at the newest passed
/// proof's restore and replay rates.
fn estimate_rto(newest: &BackupSummary, proofs: &[Proof], rpo: Option<&Rpo>) -> Option<f64> {
    let p = proofs
        .iter()
        .rev()
        .find(|p| p.passed && p.restore_seconds > 0.0)?;
    let restore_rate = p.restored_bytes as f64 / p.restore_seconds;
    let replay_rate = p.wal_replayed_bytes? as f64 / p.recovery_seconds?.max(0.001);
    let wal = rpo.map_or(0, |r| r.server_lsn.0.saturating_sub(newest.start_lsn.0));
    Some(newest.size as f64 / restore_rate.max(1.0) + wal as f64 / replay_rate.max(1.0))
}

/// Seconds as a person reads them: 1.5 s, 42 s, 7.5 min, 3.2 h, 2.1 days.
pub fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 10.0 => format!("{s:.1} s"),
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86400.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(lsn: u64, receiver: Option<(Lsn, bool, Option<f64>)>) -> ServerWal {
        ServerWal {
            lsn: Lsn(lsn),
            archiver: Archiver {
                archived_count: 3,
                last_archived_wal: None,
                last_archived_time: DateTime::from_timestamp(1000, 0),
                failed_count: 0,
                last_failed_wal: None,
                last_failed_time: None,
            },
            receiver,
        }
    }

    #[test]
    fn rpo_counts_what_is_not_durable() {
        let now = DateTime::from_timestamp(1060, 0).unwrap();
        let archived = rpo_of(&server(5000, None), Some(Lsn(4000)), now);
        assert_eq!((archived.bytes, archived.seconds), (1000, Some(60.0)));
        assert_eq!(archived.via, "archive");
        let caught_up = rpo_of(&server(4000, None), Some(Lsn(4000)), now);
        assert_eq!((caught_up.bytes, caught_up.seconds), (0, Some(0.0)));
        let streaming = rpo_of(
            &server(5000, Some((Lsn(4900), false, Some(0.5)))),
            Some(Lsn(4000)),
            now,
        );
        assert_eq!((streaming.bytes, streaming.seconds), (100, Some(0.5)));
        assert_eq!(streaming.via, "receive-wal");
        let synchronous = rpo_of(&server(5000, Some((Lsn(4900), true, None))), None, now);
        assert_eq!(synchronous.bytes, 0);
        let nothing = rpo_of(&server(5000, None), None, now);
        assert_eq!(nothing.bytes, 5000);
    }

    #[test]
    fn levels_follow_thresholds() {
        assert_eq!(Level::of(1.0, 2.0, 3.0), Level::Ok);
        assert_eq!(Level::of(2.5, 2.0, 3.0), Level::Warning);
        assert_eq!(Level::of(3.5, 2.0, 3.0), Level::Critical);
        assert!(Level::Critical > Level::Warning && Level::Warning > Level::Unknown);
    }

    #[test]
    fn a_failing_archiver_is_one_whose_last_attempt_failed() {
        let mut a = server(0, None).archiver;
        assert!(!a.failing());
        a.last_failed_time = DateTime::from_timestamp(900, 0);
        assert!(!a.failing());
        a.last_failed_time = DateTime::from_timestamp(1100, 0);
        assert!(a.failing());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(1.53), "1.5 s");
        assert_eq!(duration(42.0), "42 s");
        assert_eq!(duration(450.0), "7.5 min");
        assert_eq!(duration(3.2 * 3600.0), "3.2 h");
        assert_eq!(duration(3.0 * 86400.0), "3.0 days");
    }
}
