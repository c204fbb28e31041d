//! Which archived WAL a backup needs: `expire` keeps it, `verify` checks it is there.
//!
//! Invariant: WAL is needed per timeline, never by one floor for all. Every backup
//! needs its own WAL, from its start to its stop on its own timeline. A backup that
//! serves point-in-time recovery (one inside the WAL window) also needs everything after
//! its start along every timeline whose history contains its consistency point: on the
//! timeline it was taken on and on every later one that branched off after it, through
//! the newest archived segment. A timeline whose history file is missing could descend
//! from any backup, so its WAL is kept from the oldest such backup's start.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::scan::Segments;
use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::ClusterRepo;
use crate::repo::manifest::BackupSummary;

/// What one backup needs of the archive.
#[derive(Clone, Debug)]
pub struct Need {
    pub label: String,
    pub timeline: u32,
    /// First and last segment of the backup's own WAL.
    pub start: u64,
    pub stop: u64,
    stop_lsn: Lsn,
    /// Whether the backup serves point-in-time recovery (else only its consistency point).
    pub pitr: bool,
}

/// A run of missing segments on the way of a backup's recovery along a timeline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gap {
    /// The timeline recovery follows.
    pub path: u32,
    /// The timeline whose segments are missing, and which ones.
    pub timeline: u32,
    pub first: u64,
    pub last: u64,
}

/// Whether `path` is a timeline whose ancestry is unknown (no history file archived).
fn unknown_history(path: &TimelinePath) -> bool {
    path.timeline > 1 && path.ancestors.is_empty()
}

impl Need {
    pub fn of(m: &BackupSummary, seg: SegmentSize, pitr: bool) -> Need {
        Need {
            label: m.label.clone(),
            timeline: m.timeline,
            start: seg.segno(m.start_lsn),
            stop: seg.segno_before(m.stop_lsn),
            stop_lsn: m.stop_lsn,
            pitr,
        }
    }

    /// Whether recovery from this backup can follow `path`.
    pub fn on_path(&self, path: &TimelinePath) -> bool {
        path.contains(self.timeline, self.stop_lsn)
    }

    /// The timelines recovery from this backup can follow.
    fn paths<'p>(
        &self,
        paths: &'p BTreeMap<u32, TimelinePath>,
    ) -> impl Iterator<Item = &'p TimelinePath> {
        paths.values().filter(|p| self.on_path(p))
    }

    /// Whether recovery from this backup reads segment `segno` of timeline `timeline`.
    pub fn reads(
        &self,
        paths: &BTreeMap<u32, TimelinePath>,
        seg: SegmentSize,
        timeline: u32,
        segno: u64,
    ) -> bool {
        if timeline == self.timeline && (self.start..=self.stop).contains(&segno) {
            return true;
        }
        self.pitr
            && segno >= self.start
            && self
                .paths(paths)
                .any(|p| p.timeline_of_segment(seg, segno) == timeline)
    }

    /// Gaps after this backup's own WAL on the timelines it can be recovered along: a
    /// missing run followed by more archived WAL, which recovery cannot cross.
    pub fn gaps(
        &self,
        paths: &BTreeMap<u32, TimelinePath>,
        seg: SegmentSize,
        archive: &BTreeMap<u32, Segments>,
    ) -> Vec<Gap> {
        if !self.pitr {
            return Vec::new();
        }
        let mut out = Vec::new();
        for path in self.paths(paths) {
            let present = |segno: u64| {
                archive
                    .get(&path.timeline_of_segment(seg, segno))
                    .is_some_and(|s| s.contains_key(&segno))
            };
            // The newest archived segment that recovery along this path reads.
            let newest = path
                .ancestors
                .iter()
                .map(|a| (a.timeline, seg.segno(a.switch_point)))
                .chain([(path.timeline, u64::MAX)])
                .filter_map(|(t, bound)| {
                    archive
                        .get(&t)?
                        .range(..=bound)
                        .rev()
                        .map(|(&s, _)| s)
                        .find(|&s| path.timeline_of_segment(seg, s) == t)
                })
                .max();
            let Some(newest) = newest else { continue };
            let mut segno = self.start;
            while segno < newest {
                if present(segno) {
                    segno += 1;
                    continue;
                }
                let first = segno;
                while segno < newest && !present(segno) {
                    segno += 1;
                }
                if present(segno) {
                    out.push(Gap {
                        path: path.timeline,
                        timeline: path.timeline_of_segment(seg, first),
                        first,
                        last: segno - 1,
                    });
                }
            }
        }
        out
    }
}

/// A gap recovery cannot cross: the timelines it blocks and the backups it limits.
pub struct Limit {
    pub timeline: u32,
    pub first: u64,
    pub last: u64,
    along: BTreeSet<u32>,
    pub backups: Vec<String>,
}

impl Limit {
    pub fn describe(&self, seg: SegmentSize) -> String {
        let along: Vec<String> = self.along.iter().map(u32::to_string).collect();
        format!(
            "WAL gap on timeline {}: {} .. {} are missing, so recovery along timeline {} cannot pass {}; \
             put the segments back from a copy if one exists (archive-push them), else the backups before the gap restore only up to it",
            self.timeline,
            seg.name(self.timeline, self.first),
            seg.name(self.timeline, self.last),
            along.join(", "),
            seg.start_lsn(self.first)
        )
    }
}

/// Every gap after the backups' own WAL that limits recovery, once each.
pub fn limits(
    needs: &[Need],
    paths: &BTreeMap<u32, TimelinePath>,
    seg: SegmentSize,
    archive: &BTreeMap<u32, Segments>,
) -> Vec<Limit> {
    let mut out: BTreeMap<(u32, u64, u64), Limit> = BTreeMap::new();
    for n in needs {
        for g in n.gaps(paths, seg, archive) {
            let limit = out.entry((g.timeline, g.first, g.last)).or_insert(Limit {
                timeline: g.timeline,
                first: g.first,
                last: g.last,
                along: BTreeSet::new(),
                backups: Vec::new(),
            });
            limit.along.insert(g.path);
            if !limit.backups.contains(&n.label) {
                limit.backups.push(n.label.clone());
            }
        }
    }
    out.into_values().collect()
}

/// Where the WAL window starts: backups that became consistent before it keep only their
/// own WAL, later ones serve point-in-time recovery. From what `expire` recorded: the
/// time (`wal-window`) or, in repositories written before it, a segment floor (ignored
/// once a time is recorded: one floor for all timelines is what lost WAL).
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pitr_from: Option<DateTime<Utc>>,
    floor: Option<u64>,
}

impl Window {
    /// The recorded window; a damaged record counts as none and is returned to report.
    pub fn read(repo: &ClusterRepo) -> (Window, Vec<anyhow::Error>) {
        let mut damaged = Vec::new();
        // A damaged window keeps all WAL: the old floor must not stand in for it.
        let (pitr_from, window_damaged) = match repo.wal_window() {
            Ok(t) => (t, false),
            Err(e) => {
                damaged.push(e);
                (None, true)
            }
        };
        let floor = match pitr_from.is_none() && !window_damaged {
            true => repo.wal_floor().unwrap_or_else(|e| {
                damaged.push(e);
                None
            }),
            false => None,
        };
        (Window { pitr_from, floor }, damaged)
    }

    pub fn pitr(&self, m: &BackupSummary, seg: SegmentSize) -> bool {
        self.pitr_from.is_none_or(|t| m.stop_time >= t)
            && self.floor.is_none_or(|f| seg.segno(m.start_lsn) >= f)
    }

    /// What each backup needs under this window.
    pub fn needs(&self, backups: &[BackupSummary], seg: SegmentSize) -> Vec<Need> {
        backups
            .iter()
            .map(|m| Need::of(m, seg, self.pitr(m, seg)))
            .collect()
    }
}

/// Whether any of `needs` reads this segment; a timeline with an unknown history keeps
/// everything from the oldest point-in-time backup's start.
pub fn needed(
    needs: &[Need],
    paths: &BTreeMap<u32, TimelinePath>,
    seg: SegmentSize,
    timeline: u32,
    segno: u64,
) -> bool {
    let unknown = paths.get(&timeline).is_none_or(unknown_history);
    needs
        .iter()
        .any(|n| n.reads(paths, seg, timeline, segno) || (unknown && n.pitr && segno >= n.start))
}

/// Segment number and timeline of an archived WAL file; `None` for history files, which
/// are kept forever.
pub fn wal_position(name: &str, file: &WalFile, seg: SegmentSize) -> Option<(u32, u64)> {
    match *file {
        WalFile::Segment {
            timeline,
            log,
            seg: s,
        }
        | WalFile::Partial {
            timeline,
            log,
            seg: s,
        } => Some((timeline, seg.segno_of(log, s))),
        WalFile::BackupHistory { .. } => match WalFile::parse(name.get(..24)?)? {
            WalFile::Segment {
                timeline,
                log,
                seg: s,
            } => Some((timeline, seg.segno_of(log, s))),
            _ => None,
        },
        WalFile::History { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::history;

    const SEG: SegmentSize = SegmentSize(16 << 20);

    fn lsn(segno: u64) -> Lsn {
        Lsn(segno * SEG.0 + 0x28)
    }

    fn need(label: &str, timeline: u32, start: u64, stop: u64, pitr: bool) -> Need {
        Need {
            label: label.into(),
            timeline,
            start,
            stop,
            stop_lsn: lsn(stop),
            pitr,
        }
    }

    /// Timeline 2 branched off timeline 1 in segment 3 (an in-place PITR to an older
    /// point after backups up to segment 12 on timeline 1).
    fn branched() -> BTreeMap<u32, TimelinePath> {
        let mut paths = BTreeMap::new();
        paths.insert(1, TimelinePath::single(1));
        paths.insert(
            2,
            TimelinePath {
                timeline: 2,
                ancestors: history::parse(&format!("1\t{}\tx\n", lsn(3))).unwrap(),
            },
        );
        paths
    }

    #[test]
    fn wal_is_needed_per_timeline() {
        let paths = branched();
        // B2 on timeline 1 after the branch, B3 on timeline 2.
        let b2 = need("b2", 1, 10, 10, true);
        let b3 = need("b3", 2, 4, 4, true);
        let needs = [b2.clone(), b3.clone()];
        // Timeline 2's segments after B3 are below B2's start, and still needed.
        for segno in 4..9 {
            assert!(needed(&needs, &paths, SEG, 2, segno), "{segno}");
        }
        assert!(
            !needed(&needs, &paths, SEG, 2, 3),
            "before B3, on timeline 2"
        );
        assert!(!needed(&needs, &paths, SEG, 1, 9), "timeline 1 before B2");
        assert!(needed(&needs, &paths, SEG, 1, 10) && needed(&needs, &paths, SEG, 1, 30));
        // A backup before the branch needs timeline 1 up to the branch and timeline 2 on.
        let b1 = need("b1", 1, 1, 1, true);
        assert!(b1.reads(&paths, SEG, 1, 2) && b1.reads(&paths, SEG, 2, 3));
        assert!(
            b1.reads(&paths, SEG, 1, 7),
            "timeline 1 goes on past the branch"
        );
        // Outside the WAL window: only its own WAL.
        let old = need("old", 1, 1, 2, false);
        assert!(old.reads(&paths, SEG, 1, 2) && !old.reads(&paths, SEG, 1, 3));
        // A timeline without a history file may descend from any backup.
        let mut unknown = paths.clone();
        unknown.insert(3, TimelinePath::single(3));
        assert!(needed(&needs, &unknown, SEG, 3, 4) && !needed(&needs, &unknown, SEG, 3, 3));
    }

    #[test]
    fn gaps_on_every_path_a_backup_can_follow() {
        let paths = branched();
        let mut archive: BTreeMap<u32, Segments> = BTreeMap::new();
        archive.insert(1, (1..=12).map(|s| (s, 0)).collect());
        archive.insert(2, [3, 4, 6].into_iter().map(|s| (s, 0)).collect());
        let b1 = need("b1", 1, 1, 1, true);
        assert_eq!(
            b1.gaps(&paths, SEG, &archive),
            [Gap {
                path: 2,
                timeline: 2,
                first: 5,
                last: 5
            }]
        );
        let b3 = need("b3", 2, 4, 4, true);
        assert_eq!(b3.gaps(&paths, SEG, &archive).len(), 1);
        assert!(
            need("b2", 1, 10, 10, true)
                .gaps(&paths, SEG, &archive)
                .is_empty()
        );
        assert!(
            need("b1", 1, 1, 1, false)
                .gaps(&paths, SEG, &archive)
                .is_empty()
        );
    }
}
