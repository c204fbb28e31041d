//! Reading the archived WAL itself: which segments are there, where restore points are,
//! and when the last transaction committed.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::engine::Context;
use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::format::wal::{SegmentSize, WalFile};
use crate::format::walrecord::{self, RecordReader, restore_point};
use crate::repo::ClusterRepo;
use crate::repo::manifest::Manifest;

/// Archived segments of one timeline: segment number → archive time.
pub type Segments = BTreeMap<u64, i64>;

/// Archived segments of every timeline.
pub fn archived_segments(ctx: &Context, seg: SegmentSize) -> Result<BTreeMap<u32, Segments>> {
    let mut out: BTreeMap<u32, Segments> = BTreeMap::new();
    for (_, file, meta) in ctx.repo.wal_files()? {
        if let WalFile::Segment {
            timeline,
            log,
            seg: s,
        } = file
        {
            out.entry(timeline)
                .or_default()
                .insert(seg.segno_of(log, s), meta.modified);
        }
    }
    Ok(out)
}

/// Missing runs between the first and last archived segment.
pub fn gaps(segments: &Segments) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut prev: Option<u64> = None;
    for &s in segments.keys() {
        if let Some(p) = prev
            && s > p + 1
        {
            out.push((p + 1, s - 1));
        }
        prev = Some(s);
    }
    out
}

/// The last segment reachable without a gap from `start` on `timeline`, if `start` is there.
pub fn contiguous_end(segments: Option<&Segments>, start: u64) -> Option<(u64, i64)> {
    let segments = segments?;
    segments.get(&start)?;
    let mut end = start;
    while segments.contains_key(&(end + 1)) {
        end += 1;
    }
    Some((end, segments[&end]))
}

/// The last segment reachable without a gap from `start` along `path` (switching
/// timelines where the path does), or `None` if `start` itself is missing.
pub fn path_end(
    archive: &BTreeMap<u32, Segments>,
    seg: SegmentSize,
    path: &TimelinePath,
    start: u64,
) -> Option<u64> {
    let present = |segno: u64| {
        archive
            .get(&path.timeline_of_segment(seg, segno))
            .is_some_and(|s| s.contains_key(&segno))
    };
    if !present(start) {
        return None;
    }
    let mut end = start;
    while present(end + 1) {
        end += 1;
    }
    Some(end)
}

/// The time of the last commit or abort at or after `after` in the archived (or
/// streamed) WAL along `path`, looking back from segment `end` (in the newest segment
/// that holds one, the latest time). A recovery target time at or after it is never reached: PostgreSQL
/// stops before the first transaction later than the target and fails if there is none.
pub fn last_transaction_time(
    repo: &ClusterRepo,
    seg: SegmentSize,
    path: &TimelinePath,
    after: Lsn,
    end: u64,
) -> Result<Option<DateTime<Utc>>> {
    // Streamed copies of the segments after the archived ones continue the WAL.
    let name_of = |segno: u64| seg.name(path.timeline_of_segment(seg, segno), segno);
    let mut end = end;
    while repo.get_streamed(&name_of(end + 1))?.is_some() {
        end += 1;
    }
    for segno in (seg.segno(after)..=end).rev() {
        let name = name_of(segno);
        // A damaged segment ends the search as a missing one does (verify names it).
        let bytes = match repo.get_segment_or_streamed(&name) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("{e:#}");
                break;
            }
        };
        let mut latest: Option<i64> = None;
        RecordReader::default().feed(segno, &bytes, |rec| {
            if rec.lsn >= after {
                latest = latest.max(walrecord::xact_time(&rec));
            }
        });
        if let Some(us) = latest {
            return Ok(DateTime::from_timestamp_micros(us));
        }
    }
    Ok(None)
}

/// Positions of every restore point called `name` in the archived (or streamed) WAL
/// along `path`, reading from the start of each backup onwards until WAL runs out.
pub fn find_restore_points(
    repo: &ClusterRepo,
    seg: SegmentSize,
    path: &TimelinePath,
    manifests: &[Manifest],
    name: &str,
) -> Result<Vec<Lsn>> {
    let mut starts: Vec<u64> = manifests.iter().map(|m| seg.segno(m.start_lsn)).collect();
    starts.sort_unstable();
    let mut found = Vec::new();
    let mut reader = RecordReader::default();
    let mut next = starts.first().copied();
    while let Some(segno) = next {
        let wal_name = seg.name(path.timeline_of_segment(seg, segno), segno);
        next = match repo.get_segment_or_streamed(&wal_name)? {
            Some(bytes) => {
                reader.feed(segno, &bytes, |rec| {
                    if restore_point(&rec).is_some_and(|(n, _)| n == name) {
                        found.push(rec.lsn);
                    }
                });
                Some(segno + 1)
            }
            // A gap: go on from the next backup that starts after it.
            None => starts.iter().copied().find(|&s| s > segno),
        };
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_runs() {
        let s: Segments = [(3, 10), (4, 11), (7, 12), (9, 13)].into_iter().collect();
        assert_eq!(gaps(&s), vec![(5, 6), (8, 8)]);
        assert_eq!(contiguous_end(Some(&s), 3), Some((4, 11)));
        assert_eq!(contiguous_end(Some(&s), 5), None);
    }
}
