//! Cron schedules and the record of when each last fell due.
//!
//! Invariant: a schedule's due time is stored (durably) before its job starts, so a
//! restart never runs a job twice for one due time; a due time that passed while
//! `serve` was down is found at start (the next due time after the stored one is in
//! the past) and runs once, however many were missed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::jobs::Job;
use crate::config::Config;

/// One job of one cluster and when it runs.
pub struct Schedule {
    pub cluster: String,
    pub job: Job,
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// `cluster/job`, the schedule's name in the state file and in messages.
    pub fn key(&self) -> String {
        key(&self.cluster, self.job)
    }

    /// The first due time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(next.with_timezone(&Utc))
    }
}

/// The name of `job` of `cluster` in the state file and in messages.
pub fn key(cluster: &str, job: Job) -> String {
    format!("{cluster}/{}", job.name())
}

/// Every schedule in the config, or the first one that does not parse or never falls
/// due after `now`.
pub fn schedules(config: &Config, now: DateTime<Utc>) -> Result<Vec<Schedule>> {
    let mut out = Vec::new();
    for (cluster, c) in &config.cluster {
        let zone = Tz::from_str(&c.time_zone).map_err(|_| {
            anyhow!(
                "cluster.{cluster}.time_zone '{}' is not a time zone; give an IANA name such as UTC or Europe/Berlin",
                c.time_zone
            )
        })?;
        for (name, pattern) in c.schedule.entries() {
            let Some(pattern) = pattern else { continue };
            let cron = Cron::from_str(pattern).map_err(|e| {
                anyhow!(
                    "cluster.{cluster}.schedule.{name} '{pattern}' is not a cron expression ({e}); write five fields: minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\""
                )
            })?;
            let schedule = Schedule {
                cluster: cluster.clone(),
                job: Job::from_name(name).expect("JobTable names are jobs"),
                cron,
                zone,
            };
            if schedule.next_after(now).is_none() {
                bail!(
                    "cluster.{cluster}.schedule.{name} '{pattern}' never falls due (a day that no month has?); correct it"
                );
            }
            out.push(schedule);
        }
    }
    Ok(out)
}

/// When each schedule last fell due, by [`Schedule::key`], kept in `STATE/schedule.json`.
pub struct DueTimes {
    path: PathBuf,
    last: BTreeMap<String, DateTime<Utc>>,
}

impl DueTimes {
    /// The stored due times; none on the first start (nothing was missed yet).
    pub fn load(state: &Path) -> Result<DueTimes> {
        let path = state.join("schedule.json");
        let last = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; remove it (each schedule then starts afresh, missing no run but those missed so far)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(DueTimes { path, last })
    }

    /// When the schedule named `key` (see [`key`]) last fell due.
    pub fn last(&self, key: &str) -> Option<DateTime<Utc>> {
        self.last.get(key).copied()
    }

    /// Records, durably, that the schedule named `key` was dealt with for `due`.
    pub fn record(&mut self, key: &str, due: DateTime<Utc>) -> Result<()> {
        self.last.insert(key.to_string(), due);
        crate::os::write_renamed(&self.path, &serde_json::to_vec_pretty(&self.last)?, true)
    }
}

/// When `schedule` is next due, given when it last was: a time in the past means a
/// run was missed and is due now.
pub fn first_due(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match last {
        Some(last) => schedule.next_after(last),
        None => schedule.next_after(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(pattern: &str, zone: &str) -> Schedule {
        Schedule {
            cluster: "main".into(),
            job: Job::Backup,
            cron: Cron::from_str(pattern).unwrap(),
            zone: Tz::from_str(zone).unwrap(),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn due_times_follow_the_time_zone() {
        let daily = schedule("0 2 * * *", "Europe/Berlin");
        // 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer.
        assert_eq!(
            daily.next_after(at("2026-12-03T12:00:00Z")),
            Some(at("2026-12-04T01:00:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2026-07-03T12:00:00Z")),
            Some(at("2026-07-04T00:00:00Z"))
        );
    }

    #[test]
    fn a_time_skipped_or_repeated_by_daylight_saving_runs_once() {
        let at_half_past_two = schedule("30 2 * * *", "Europe/Berlin");
        // 2026-03-29 02:30 does not exist in Berlin (clocks go from 02:00 to 03:00).
        let spring = at_half_past_two
            .next_after(at("2026-03-28T12:00:00Z"))
            .unwrap();
        assert!(spring > at("2026-03-28T12:00:00Z") && spring < at("2026-03-30T12:00:00Z"));
        // 2026-10-25 02:30 happens twice; the job runs at the first.
        let autumn = at_half_past_two
            .next_after(at("2026-10-24T12:00:00Z"))
            .unwrap();
        assert_eq!(autumn, at("2026-10-25T00:30:00Z"));
        let after = at_half_past_two.next_after(autumn).unwrap();
        assert!(after > at("2026-10-25T12:00:00Z"), "ran twice: {after}");
    }

    #[test]
    fn a_missed_run_is_due_at_once_and_only_once() {
        let hourly = schedule("0 * * * *", "UTC");
        let now = at("2026-12-03T12:30:00Z");
        // Down since 09:10: 10:00, 11:00 and 12:00 were missed; one run is due now.
        let due = first_due(&hourly, Some(at("2026-12-03T09:00:00Z")), now).unwrap();
        assert!(due <= now);
        // Once it is recorded as run for now, the next is in the future.
        assert_eq!(hourly.next_after(now), Some(at("2026-12-03T13:00:00Z")));
        // Nothing stored: the first start waits for the next due time.
        assert_eq!(
            first_due(&hourly, None, now),
            Some(at("2026-12-03T13:00:00Z"))
        );
    }
}
