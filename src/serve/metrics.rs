//! `/metrics`: the last status snapshot and the jobs' counts as OpenMetrics text.
//! Ages are given beside timestamps (some monitoring tools cannot subtract), computed
//! at the scrape. Everything is a gauge: an OpenMetrics counter's HELP line names it
//! without `_total`, which Prometheus' text parser (and `promtool check metrics`)
//! takes for a metric without help.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::jobs::Job;
use super::watch::Snapshot;

/// What `serve` counted of one cluster's job since it started.
#[derive(Default, Clone)]
pub struct JobStat {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub running: bool,
    pub last_seconds: Option<f64>,
    pub last_end: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
}

pub type JobStats = BTreeMap<(String, Job), JobStat>;

type Labels = Vec<(String, String)>;
type Values = Family<Labels, Gauge<f64, AtomicU64>>;

/// Gauges registered under their names, set by label set.
struct Gauges<'r> {
    registry: &'r mut Registry,
    families: BTreeMap<&'static str, Values>,
}

impl Gauges<'_> {
    fn set(&mut self, name: &'static str, help: &str, labels: &Labels, value: f64) {
        let family = self.families.entry(name).or_insert_with(|| {
            let family = Values::default();
            self.registry.register(name, help, family.clone());
            family
        });
        family.get_or_create(labels).set(value);
    }

    /// A moment as `NAME_timestamp_seconds` and, as of `now`, `NAME_age_seconds`;
    /// `what` completes "When ..." and "Seconds since ...".
    fn moment(
        &mut self,
        names: [&'static str; 2],
        what: &str,
        labels: &Labels,
        t: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        self.set(names[0], &format!("When {what}"), labels, seconds(t));
        self.set(
            names[1],
            &format!("Seconds since {what}"),
            labels,
            age(now, t),
        );
    }
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (now - t).num_milliseconds() as f64 / 1000.0
}

/// The OpenMetrics text of `snapshot` and `jobs` as of `now`.
pub fn render(snapshot: &Snapshot, jobs: &JobStats, now: DateTime<Utc>) -> String {
    let mut registry = Registry::with_prefix("pgkeep");
    let mut g = Gauges {
        registry: &mut registry,
        families: BTreeMap::new(),
    };
    if let Some(taken) = snapshot.taken {
        g.set(
            "status_refresh_timestamp_seconds",
            "When the status below was computed",
            &vec![],
            seconds(taken),
        );
    }
    for view in &snapshot.views {
        let labels = vec![
            ("cluster".to_string(), view.cluster.clone()),
            ("repository".to_string(), view.repository.clone()),
        ];
        g.set(
            "status",
            "Overall state: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios' codes)",
            &labels,
            f64::from(view.level().nagios_code()),
        );
        let Ok(report) = &view.report else { continue };
        g.set(
            "backups",
            "Physical backups in the repository",
            &labels,
            report.info.backups.len() as f64,
        );
        g.set(
            "dumps",
            "Logical backups in the repository",
            &labels,
            report.info.dumps.len() as f64,
        );
        g.set(
            "stored_bytes",
            "Bytes the kept backups and dumps added to the repository (compressed, deduplicated)",
            &labels,
            (report.info.backups.iter().map(|b| b.stored_size))
                .chain(report.info.dumps.iter().map(|d| d.stored_size))
                .sum::<u64>() as f64,
        );
        if let Some(b) = &report.newest_backup {
            g.moment(
                [
                    "backup_newest_timestamp_seconds",
                    "backup_newest_age_seconds",
                ],
                "the newest backup finished",
                &labels,
                b.finished,
                now,
            );
        }
        if let Some(d) = &report.newest_dump {
            g.moment(
                ["dump_newest_timestamp_seconds", "dump_newest_age_seconds"],
                "the newest dump finished",
                &labels,
                d.finished,
                now,
            );
        }
        if let Some(rpo) = &report.rpo {
            g.set(
                "rpo_bytes",
                "WAL the server wrote that is not yet durable in the repository or a receive-wal",
                &labels,
                rpo.bytes as f64,
            );
            if let Some(s) = rpo.seconds {
                g.set(
                    "rpo_seconds",
                    "How long the WAL not yet durable has been accumulating",
                    &labels,
                    s,
                );
            }
        }
        if let Some(w) = &report.recoverable {
            g.set(
                "recoverable_start_timestamp_seconds",
                "The earliest moment a restore can reach",
                &labels,
                seconds(w.from_time),
            );
            g.set(
                "recoverable_end_timestamp_seconds",
                "The latest moment a restore can reach",
                &labels,
                seconds(w.to_time),
            );
            g.set(
                "recoverable_end_age_seconds",
                "Seconds since the latest moment a restore can reach",
                &labels,
                age(now, w.to_time),
            );
            g.set(
                "recoverable_window_seconds",
                "Length of the recoverable window",
                &labels,
                age(w.to_time, w.from_time),
            );
        }
        g.set(
            "wal_gaps",
            "Runs of missing WAL segments in the archive",
            &labels,
            report.info.wal.iter().map(|t| t.gaps.len()).sum::<usize>() as f64,
        );
        if let Some(a) = &report.archiver {
            g.set(
                "archiver_failing",
                "1 while the server's last archive_command attempt failed",
                &labels,
                f64::from(u8::from(a.failing())),
            );
            g.set(
                "archiver_failed",
                "pg_stat_archiver.failed_count: archive_command failures since the server's statistics were reset",
                &labels,
                a.failed_count as f64,
            );
            g.set(
                "archiver_archived",
                "pg_stat_archiver.archived_count",
                &labels,
                a.archived_count as f64,
            );
        }
        if let Some(p) = &report.last_proof {
            g.set(
                "proof_newest_passed",
                "1 if the newest restore proof passed, 0 if it failed",
                &labels,
                f64::from(u8::from(p.passed)),
            );
            g.moment(
                ["proof_newest_timestamp_seconds", "proof_newest_age_seconds"],
                "the newest restore proof finished",
                &labels,
                p.finished,
                now,
            );
            if let Some(rto) = p.rto_seconds {
                g.set(
                    "proof_rto_seconds",
                    "Restore and recovery time the newest restore proof measured",
                    &labels,
                    rto,
                );
            }
        }
        if let Some(rto) = report.estimated_rto_seconds {
            g.set(
                "rto_estimated_seconds",
                "Estimated restore and recovery time now, at the rates proofs measured",
                &labels,
                rto,
            );
        }
    }
    render_jobs(&mut g, jobs, now);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

fn render_jobs(g: &mut Gauges, jobs: &JobStats, now: DateTime<Utc>) {
    for ((cluster, job), stat) in jobs {
        let labels = vec![
            ("cluster".to_string(), cluster.clone()),
            // Not `job`: Prometheus gives that label to the scrape job.
            ("task".to_string(), job.name().to_string()),
        ];
        for (result, n) in [
            ("passed", stat.passed),
            ("failed", stat.failed),
            ("skipped", stat.skipped),
        ] {
            let mut with = labels.clone();
            with.push(("result".into(), result.into()));
            g.set(
                "job_runs",
                "Runs of the job since serve started, by result (passed, failed, skipped)",
                &with,
                n as f64,
            );
        }
        g.set(
            "job_running",
            "1 while the job runs",
            &labels,
            f64::from(u8::from(stat.running)),
        );
        if let Some(s) = stat.last_seconds {
            g.set(
                "job_last_duration_seconds",
                "How long the job's last run took",
                &labels,
                s,
            );
        }
        if let Some(t) = stat.last_end {
            g.set(
                "job_last_end_timestamp_seconds",
                "When the job's last run ended",
                &labels,
                seconds(t),
            );
        }
        if let Some(t) = stat.last_success {
            g.moment(
                [
                    "job_last_success_timestamp_seconds",
                    "job_last_success_age_seconds",
                ],
                "the job last succeeded",
                &labels,
                t,
                now,
            );
        }
    }
}
