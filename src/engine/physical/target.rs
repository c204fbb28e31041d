//! Recovery targets, and the choice of the backup to restore for one.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, FixedOffset, Utc};

use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::repo::manifest::Manifest;

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Replay all archived WAL.
    End,
    /// Stop as soon as the backup is consistent.
    Immediate,
    Time(DateTime<FixedOffset>),
    Xid(u64),
    Name(String),
    Lsn(Lsn),
}

/// Which timeline recovery follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimelineChoice {
    Latest,
    Current,
    Id(u32),
}

impl std::str::FromStr for TimelineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(TimelineChoice::Latest),
            "current" => Ok(TimelineChoice::Current),
            n => n
                .parse()
                .ok()
                .filter(|&n: &u32| n > 0)
                .map(TimelineChoice::Id)
                .ok_or_else(|| {
                    format!("target timeline '{s}' is not 'latest', 'current' or a timeline number")
                }),
        }
    }
}

/// Parses a target time; a time zone is required so the target means the same thing on
/// every server.
pub fn parse_time(s: &str) -> Result<DateTime<FixedOffset>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f %#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Ok(t);
        }
    }
    if s.ends_with(" UTC") || s.ends_with("Z") {
        let bare = s.trim_end_matches(" UTC").trim_end_matches('Z');
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(bare, "%Y-%m-%d %H:%M:%S%.f") {
            return Ok(t.and_utc().fixed_offset());
        }
    }
    bail!(
        "target time '{s}' is not a timestamp with a time zone; write it like 2026-11-21 09:30:00+00"
    )
}

/// Formats a target time the way `recovery_target_time` accepts it.
pub fn format_time(t: &DateTime<FixedOffset>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string()
}

/// Whether transaction `xid` committed after the backup became consistent, judged from
/// the snapshot taken right after `pg_backup_stop`: it had not started (>= xmax) or was
/// still running.
pub fn xid_after(snapshot: &str, xid: u64) -> bool {
    let mut parts = snapshot.split(':');
    let (Some(_xmin), Some(xmax), Some(xip)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(xmax) = xmax.parse::<u64>() else {
        return false;
    };
    // A 32-bit xid is placed in the epoch that puts it nearest xmax, either side.
    let full = if xid >> 32 == 0 {
        let candidate = (xmax & !0xFFFF_FFFF) | xid;
        if candidate > xmax + (1 << 31) && candidate >= 1 << 32 {
            candidate - (1 << 32)
        } else if candidate + (1 << 31) < xmax {
            candidate + (1 << 32)
        } else {
            candidate
        }
    } else {
        xid
    };
    full >= xmax || xip.split(',').any(|x| x.parse::<u64>() == Ok(full))
}

/// Whether recovery from `backup` can reach `target`. For a named target, `restore_points`
/// are the positions of the restore points with that name: recovery stops at the first
/// one after the backup's start, which must lie at or after its consistency point.
pub fn reaches(backup: &Manifest, target: &Target, restore_points: &[Lsn]) -> bool {
    match target {
        Target::End | Target::Immediate => true,
        Target::Name(_) => restore_points
            .iter()
            .find(|&&l| l >= backup.start_lsn)
            .is_some_and(|&l| l >= backup.stop_lsn),
        Target::Time(t) => backup.stop_time < t.with_timezone(&Utc),
        Target::Lsn(l) => backup.stop_lsn <= *l,
        Target::Xid(x) => xid_after(&backup.snapshot_at_stop, *x),
    }
}

/// The timeline path recovery follows for `choice` (for `current`, the newest backup's).
pub fn target_path(
    paths: &BTreeMap<u32, TimelinePath>,
    choice: TimelineChoice,
    manifests: &[Manifest],
) -> Option<TimelinePath> {
    let tli = match choice {
        TimelineChoice::Latest => *paths.keys().next_back()?,
        TimelineChoice::Id(n) => n,
        TimelineChoice::Current => manifests.iter().max_by_key(|m| m.stop_time)?.timeline,
    };
    paths.get(&tli).cloned()
}

/// Picks the backup to restore: the named one (checked), or the newest that is on the
/// target timeline's path and ends before the target.
pub fn choose<'m>(
    manifests: &'m [Manifest],
    label: Option<&str>,
    target: &Target,
    timeline: TimelineChoice,
    paths: &BTreeMap<u32, TimelinePath>,
    restore_points: &[Lsn],
) -> Result<&'m Manifest> {
    if manifests.is_empty() {
        bail!("the repository has no backups of this cluster yet; run `pgkeep backup` first");
    }
    let path_for = |tli: u32| -> Result<TimelinePath> {
        paths.get(&tli).cloned().with_context(|| {
            format!("timeline {tli} has no history file in the archive, so it cannot be recovered to; `pgkeep info` lists the timelines")
        })
    };
    let on_timeline = |m: &Manifest| -> Result<bool> {
        Ok(match timeline {
            TimelineChoice::Current => true,
            TimelineChoice::Latest => {
                let latest = *paths.keys().next_back().unwrap();
                path_for(latest.max(m.timeline))?.contains(m.timeline, m.stop_lsn)
            }
            TimelineChoice::Id(tli) => path_for(tli)?.contains(m.timeline, m.stop_lsn),
        })
    };
    if let Some(label) = label {
        let m = manifests
            .iter()
            .find(|m| m.label == label)
            .with_context(|| {
                format!("backup '{label}' does not exist; `pgkeep info` lists the backups")
            })?;
        if !on_timeline(m)? {
            bail!(
                "backup {label} is not on the path of the target timeline; choose another backup or --target-timeline"
            );
        }
        if !reaches(m, target, restore_points) {
            bail!(
                "backup {label} ends after the recovery target, so it cannot recover to it; choose an older backup or leave out --backup"
            );
        }
        return Ok(m);
    }
    let mut best: Option<&Manifest> = None;
    for m in manifests {
        if on_timeline(m)?
            && reaches(m, target, restore_points)
            && best.is_none_or(|b| m.stop_time > b.stop_time)
        {
            best = Some(m);
        }
    }
    best.with_context(|| {
        if let Target::Name(name) = target {
            let at: Vec<String> = restore_points.iter().map(Lsn::to_string).collect();
            return format!(
                "restore point '{name}' (at {}) is not after the end of any backup on the target timeline; \
                 choose a later restore point or another --target-timeline",
                at.join(", ")
            );
        }
        let oldest = manifests.iter().min_by_key(|m| m.stop_time).unwrap();
        format!(
            "no backup can recover to that target: the oldest backup, {}, became consistent at {} (LSN {}); \
             choose a later target",
            oldest.label,
            oldest.stop_time.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
            oldest.stop_lsn
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_need_a_zone() {
        assert!(parse_time("2026-11-21 09:30:00+00").is_ok());
        assert!(parse_time("2026-11-21 09:30:00.123456+01:00").is_ok());
        assert!(parse_time("2026-11-21T09:30:00Z").is_ok());
        assert!(parse_time("2026-11-21 09:30:00 UTC").is_ok());
        assert!(parse_time("2026-11-21 09:30:00").is_err());
        let t = parse_time("2026-11-21 09:30:00.5+02").unwrap();
        assert_eq!(format_time(&t), "2026-11-21 09:30:00.500000+02:00");
    }

    #[test]
    fn xid_against_snapshot() {
        assert!(xid_after("100:105:100,103", 105));
        assert!(xid_after("100:105:100,103", 103));
        assert!(!xid_after("100:105:100,103", 104));
        assert!(!xid_after("100:105:100,103", 50));
        // 32-bit xid in epoch 1.
        let snap = format!("{}:{}:", (1u64 << 32) + 10, (1u64 << 32) + 20);
        assert!(xid_after(&snap, 25));
        assert!(!xid_after(&snap, 15));
        // Just past the wrap into the next epoch.
        let snap = format!("{}:{}:", u32::MAX as u64 - 20, u32::MAX as u64 - 10);
        assert!(xid_after(&snap, 5));
        assert!(!xid_after(&snap, u32::MAX as u64 - 15));
    }

    #[test]
    fn timeline_choice() {
        assert_eq!("latest".parse(), Ok(TimelineChoice::Latest));
        assert_eq!("3".parse(), Ok(TimelineChoice::Id(3)));
        assert!("0".parse::<TimelineChoice>().is_err());
    }
}
