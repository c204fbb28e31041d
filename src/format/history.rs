//! Timeline history files (`TTTTTTTT.history`).
//!
//! Each line names a parent timeline and the LSN at which the next timeline branched off:
//! `1\t0/3000160\tno recovery target specified`.

use super::lsn::Lsn;
use super::wal::SegmentSize;

/// One ancestor of a timeline: `timeline` was left at `switch_point`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ancestor {
    pub timeline: u32,
    pub switch_point: Lsn,
}

/// Parses a history file into its ancestors, oldest first.
pub fn parse(text: &str) -> Result<Vec<Ancestor>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let bad = || {
            format!(
                "line {} of the timeline history is malformed: '{line}'",
                n + 1
            )
        };
        let timeline = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let switch_point = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        out.push(Ancestor {
            timeline,
            switch_point,
        });
    }
    Ok(out)
}

/// A timeline together with its ancestors: which WAL positions belong to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelinePath {
    pub timeline: u32,
    pub ancestors: Vec<Ancestor>,
}

impl TimelinePath {
    /// A timeline followed on its own, ignoring where it came from.
    pub fn single(timeline: u32) -> TimelinePath {
        TimelinePath {
            timeline,
            ancestors: Vec::new(),
        }
    }

    /// Whether the WAL position `lsn` of timeline `tli` lies on this path, i.e. recovery
    /// along this timeline passes through it.
    pub fn contains(&self, tli: u32, lsn: Lsn) -> bool {
        if tli == self.timeline {
            return true;
        }
        self.ancestors
            .iter()
            .any(|a| a.timeline == tli && lsn <= a.switch_point)
    }

    /// The timeline that WAL at `lsn` is read from when recovering along this path.
    pub fn timeline_at(&self, lsn: Lsn) -> u32 {
        self.ancestors
            .iter()
            .find(|a| lsn < a.switch_point)
            .map_or(self.timeline, |a| a.timeline)
    }

    /// The timeline whose file recovery reads for segment `segno`: the newest one that
    /// began at or before the segment (a segment holding a switch point is read from the
    /// new timeline, which has a copy of the old timeline's part).
    pub fn timeline_of_segment(&self, seg: SegmentSize, segno: u64) -> u32 {
        self.timeline_at(Lsn(seg.start_lsn(segno + 1).0 - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_history() {
        let text = "1\t0/3000160\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-11-21 10:00:00+00\n";
        let anc = parse(text).unwrap();
        assert_eq!(anc.len(), 2);
        assert_eq!(
            anc[1],
            Ancestor {
                timeline: 2,
                switch_point: "0/5000000".parse().unwrap()
            }
        );
        assert!(parse("1 zz").is_err());
    }

    #[test]
    fn path_follows_switch_points() {
        let path = TimelinePath {
            timeline: 3,
            ancestors: parse("1\t0/3000000\tx\n2\t0/5000000\ty").unwrap(),
        };
        assert!(path.contains(1, "0/2000000".parse().unwrap()));
        assert!(!path.contains(1, "0/4000000".parse().unwrap()));
        assert!(path.contains(2, "0/4000000".parse().unwrap()));
        assert_eq!(path.timeline_at("0/1000000".parse().unwrap()), 1);
        assert_eq!(path.timeline_at("0/3000000".parse().unwrap()), 2);
        assert_eq!(path.timeline_at("0/6000000".parse().unwrap()), 3);
        let seg = SegmentSize(16 << 20);
        assert_eq!(path.timeline_of_segment(seg, 2), 1);
        assert_eq!(
            path.timeline_of_segment(seg, 3),
            2,
            "switch point at the segment start"
        );
        assert_eq!(path.timeline_of_segment(seg, 5), 3);
    }
}
