//! The retention policy as a pure function: which backups survive, why, and from which
//! backup on WAL is kept for point-in-time recovery.
//!
//! A backup survives if any rule keeps it or it is pinned. With no rule configured
//! nothing expires, and the newest backup always survives.
//!
//! The policy is evaluated as of a time `now` (`expire --now` can move it): backups that
//! stopped after `now` did not exist yet at that moment, so they fill no rule's slot
//! and are always kept.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Retention;
use chrono::{DateTime, Datelike, Duration, Utc};

/// What the policy needs to know of a backup.
#[derive(Clone, Debug)]
pub struct BackupFacts {
    pub label: String,
    pub stop_time: DateTime<Utc>,
    pub pinned: bool,
}

/// Why a backup survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Newest,
    KeepLast,
    RecoveryWindow,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Pinned,
    NoPolicy,
    /// Stopped after the time the policy is evaluated at.
    AfterNow,
    /// A database's dump in a `dump --all` run that is kept.
    PartOfRun,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Newest => "newest",
            Reason::KeepLast => "keep_last",
            Reason::RecoveryWindow => "recovery window",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::Yearly => "yearly",
            Reason::Pinned => "pinned",
            Reason::NoPolicy => "no retention rule",
            Reason::AfterNow => "made after --now",
            Reason::PartOfRun => "part of a kept dump --all run",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Surviving backups with their reasons.
    pub keep: BTreeMap<String, BTreeSet<Reason>>,
    /// Backups to remove, oldest first.
    pub expire: Vec<String>,
    /// The surviving backup from whose start WAL is kept without a gap; older survivors
    /// keep only the WAL from their start to their stop.
    pub wal_from: Option<String>,
}

/// The calendar period a time falls in, as a sortable key.
type Period = fn(&DateTime<Utc>) -> (i32, u32);

/// Applies `policy` at time `now` to `backups` (any order).
pub fn plan(policy: &Retention, backups: &[BackupFacts], now: DateTime<Utc>) -> Plan {
    let mut all: Vec<&BackupFacts> = backups.iter().collect();
    all.sort_by_key(|b| std::cmp::Reverse(b.stop_time)); // newest first
    let mut keep: BTreeMap<String, BTreeSet<Reason>> = BTreeMap::new();
    let mut mark = |b: &BackupFacts, r: Reason| {
        keep.entry(b.label.clone()).or_default().insert(r);
    };
    let (later, sorted): (Vec<&BackupFacts>, Vec<&BackupFacts>) =
        all.iter().partition(|b| b.stop_time > now);
    for b in &later {
        mark(b, Reason::AfterNow);
    }
    if let Some(newest) = sorted.first() {
        mark(newest, Reason::Newest);
    }
    for b in sorted.iter().filter(|b| b.pinned) {
        mark(b, Reason::Pinned);
    }
    if !policy.has_rules() {
        for b in &sorted {
            mark(b, Reason::NoPolicy);
        }
    }
    for b in sorted.iter().take(policy.keep_last.unwrap_or(0)) {
        mark(b, Reason::KeepLast);
    }
    let window_anchor = policy.recovery_window_days.and_then(|days| {
        let start = now - Duration::days(days.into());
        for b in sorted.iter().filter(|b| b.stop_time > start) {
            mark(b, Reason::RecoveryWindow);
        }
        // The newest backup consistent at or before the window's start covers it.
        let anchor = sorted.iter().find(|b| b.stop_time <= start)?;
        mark(anchor, Reason::RecoveryWindow);
        Some(anchor.stop_time)
    });
    let tiers: [(usize, Reason, Period); 4] = [
        (policy.daily, Reason::Daily, |t| (t.year(), t.ordinal())),
        (policy.weekly, Reason::Weekly, |t| {
            (t.iso_week().year(), t.iso_week().week())
        }),
        (policy.monthly, Reason::Monthly, |t| (t.year(), t.month())),
        (policy.yearly, Reason::Yearly, |t| (t.year(), 0)),
    ];
    for (count, reason, period) in tiers {
        let mut seen = BTreeSet::new();
        for b in &sorted {
            if seen.len() >= count {
                break;
            }
            // Newest first, so the first backup seen in a period is its newest.
            if seen.insert(period(&b.stop_time)) {
                mark(b, reason);
            }
        }
    }
    let expire: Vec<String> = sorted
        .iter()
        .rev()
        .filter(|b| !keep.contains_key(&b.label))
        .map(|b| b.label.clone())
        .collect();

    // WAL: from the oldest survivor, or from the newest survivor covering the WAL
    // window's start (but never later than the recovery window's anchor).
    let survivors: Vec<&BackupFacts> = all
        .iter()
        .copied()
        .filter(|b| keep.contains_key(&b.label))
        .collect();
    let mut wal_from = survivors.last().copied();
    if let Some(days) = policy.wal_window_days {
        let start = now - Duration::days(days.into());
        let covering = survivors
            .iter()
            .copied()
            .find(|b| b.stop_time <= start)
            .or(survivors.last().copied());
        wal_from = match (covering, window_anchor) {
            // The recovery window needs WAL from its anchor on, even if that is earlier.
            (Some(c), Some(anchor)) if c.stop_time > anchor => {
                survivors.iter().copied().find(|b| b.stop_time == anchor)
            }
            (c, _) => c,
        };
    }
    Plan {
        keep,
        expire,
        wal_from: wal_from.map(|b| b.label.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> DateTime<Utc> {
        format!("{s}T12:00:00Z").parse().unwrap()
    }

    /// Daily backups through 2026 (one on each date below), Nov 21 2026 "now".
    fn history() -> Vec<BackupFacts> {
        let dates = [
            "2024-06-01",
            "2025-03-15",
            "2025-12-31",
            "2026-01-10",
            "2026-01-31",
            "2026-02-14",
            "2026-03-01",
            "2026-09-30",
            "2026-10-31",
            "2026-11-01",
            "2026-11-08",
            "2026-11-09",
            "2026-11-15",
            "2026-11-16",
            "2026-11-18",
            "2026-11-19",
            "2026-11-20",
        ];
        dates
            .iter()
            .map(|d| BackupFacts {
                label: d.to_string(),
                stop_time: day(d),
                pinned: false,
            })
            .collect()
    }

    fn survivors(policy: Retention) -> Vec<String> {
        let p = plan(&policy, &history(), day("2026-11-21"));
        p.keep.keys().cloned().collect()
    }

    fn labels(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_rules_keep_everything() {
        assert_eq!(survivors(Retention::default()).len(), history().len());
    }

    #[test]
    fn keep_last() {
        let p = Retention {
            keep_last: Some(3),
            ..Default::default()
        };
        assert_eq!(
            survivors(p),
            labels(&["2026-11-18", "2026-11-19", "2026-11-20"])
        );
    }

    #[test]
    fn recovery_window_keeps_the_anchor_before_it() {
        let p = Retention {
            recovery_window_days: Some(5),
            ..Default::default()
        };
        // The window starts 2026-11-16 12:00: the backup of that moment covers its start.
        assert_eq!(
            survivors(p),
            labels(&["2026-11-16", "2026-11-18", "2026-11-19", "2026-11-20"])
        );
        let p = Retention {
            recovery_window_days: Some(4),
            ..Default::default()
        };
        // Starts 11-17 12:00: 11-16 is the newest before it.
        assert_eq!(
            survivors(p),
            labels(&["2026-11-16", "2026-11-18", "2026-11-19", "2026-11-20"])
        );
    }

    #[test]
    fn tiers() {
        let weekly = Retention {
            weekly: 3,
            ..Default::default()
        };
        // ISO weeks: 11-16..11-20 (week 47), 11-09..11-15 (46), 11-02..11-08 (45).
        assert_eq!(
            survivors(weekly),
            labels(&["2026-11-08", "2026-11-15", "2026-11-20"])
        );
        let monthly = Retention {
            monthly: 4,
            ..Default::default()
        };
        assert_eq!(
            survivors(monthly),
            labels(&["2026-03-01", "2026-09-30", "2026-10-31", "2026-11-20"])
        );
        let yearly = Retention {
            yearly: 2,
            ..Default::default()
        };
        assert_eq!(survivors(yearly), labels(&["2025-12-31", "2026-11-20"]));
        let daily = Retention {
            daily: 2,
            ..Default::default()
        };
        assert_eq!(survivors(daily), labels(&["2026-11-19", "2026-11-20"]));
    }

    #[test]
    fn combined_rules_are_a_union_with_pins() {
        let mut backups = history();
        backups[0].pinned = true;
        let p = Retention {
            keep_last: Some(2),
            monthly: 2,
            yearly: 3,
            ..Default::default()
        };
        let plan = plan(&p, &backups, day("2026-11-21"));
        let kept: Vec<String> = plan.keep.keys().cloned().collect();
        // keep_last: 11-19, 11-20; monthly: Nov, Oct; yearly: 2026, 2025 (12-31), 2024; pin.
        assert_eq!(
            kept,
            labels(&[
                "2024-06-01",
                "2025-12-31",
                "2026-10-31",
                "2026-11-19",
                "2026-11-20"
            ])
        );
        assert!(plan.keep["2024-06-01"].contains(&Reason::Pinned));
        assert!(plan.keep["2026-11-20"].contains(&Reason::Monthly));
        assert_eq!(plan.expire.first().map(String::as_str), Some("2025-03-15"));
        assert_eq!(plan.expire.len(), history().len() - 5);
        assert_eq!(plan.wal_from.as_deref(), Some("2024-06-01"));
    }

    #[test]
    fn backups_after_now_are_kept_and_fill_no_slot() {
        let mut backups = history();
        backups.push(BackupFacts {
            label: "later".into(),
            stop_time: day("2026-11-30"),
            pinned: false,
        });
        let p = Retention {
            keep_last: Some(2),
            weekly: 1,
            ..Default::default()
        };
        let plan = plan(&p, &backups, day("2026-11-21"));
        let kept: Vec<String> = plan.keep.keys().cloned().collect();
        assert_eq!(kept, labels(&["2026-11-19", "2026-11-20", "later"]));
        assert_eq!(plan.keep["later"], [Reason::AfterNow].into_iter().collect());
        assert!(plan.keep["2026-11-20"].contains(&Reason::Newest));
        assert!(plan.keep["2026-11-20"].contains(&Reason::Weekly));
        assert_eq!(plan.wal_from.as_deref(), Some("2026-11-19"));
    }

    #[test]
    fn wal_window_is_shorter_but_never_below_the_recovery_window() {
        let p = Retention {
            keep_last: Some(6),
            wal_window_days: Some(3),
            ..Default::default()
        };
        // Survivors 11-09 .. 11-20; WAL window starts 11-18 12:00: 11-18 covers it.
        assert_eq!(
            plan(&p, &history(), day("2026-11-21")).wal_from.as_deref(),
            Some("2026-11-18")
        );
        let p = Retention {
            keep_last: Some(6),
            wal_window_days: Some(3),
            recovery_window_days: Some(6),
            ..Default::default()
        };
        assert_eq!(
            plan(&p, &history(), day("2026-11-21")).wal_from.as_deref(),
            Some("2026-11-15")
        );
        let p = Retention {
            keep_last: Some(6),
            ..Default::default()
        };
        assert_eq!(
            plan(&p, &history(), day("2026-11-21")).wal_from.as_deref(),
            Some("2026-11-09")
        );
    }
}
