//! `verify`: re-reads everything in the repository and checks it against its checksums,
//! then checks that WAL continues without a gap from every backup. Each problem names
//! the backups it breaks.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::Context;
use super::info::{archived_segments, gaps};
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::manifest::Manifest;
use crate::repo::pack::{ChunkId, ChunkIndex};

pub struct Problem {
    pub what: String,
    /// Labels of the backups this problem makes unrestorable or limits.
    pub breaks: Vec<String>,
}

pub struct VerifyReport {
    pub problems: Vec<Problem>,
    pub backups: usize,
    pub chunks: usize,
    pub wal_files: usize,
}

fn check_chunks(
    ctx: &Context,
    index: &ChunkIndex,
    manifests: &[Manifest],
    problems: &mut Vec<Problem>,
) -> Result<usize> {
    let prefix = ctx.repo.packs_prefix();
    let mut users: BTreeMap<ChunkId, BTreeSet<String>> = BTreeMap::new();
    for m in manifests {
        for f in &m.files {
            for c in &f.chunks {
                users.entry(*c).or_default().insert(m.label.clone());
            }
        }
    }
    let ids: Vec<&ChunkId> = index.chunks.keys().collect();
    let jobs = ctx.config.jobs();
    let bad: Vec<(ChunkId, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(ids.len().div_ceil(jobs).max(1))
            .map(|part| {
                let prefix = &prefix;
                scope.spawn(move || {
                    part.iter()
                        .filter_map(|id| {
                            index
                                .read(&*ctx.repo.storage, prefix, id)
                                .err()
                                .map(|e| (**id, format!("{e:#}")))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (id, err) in bad {
        let breaks = users
            .get(&id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        problems.push(Problem { what: err, breaks });
    }
    for (id, labels) in &users {
        if !index.chunks.contains_key(id) {
            problems.push(Problem {
                what: format!("chunk {id} is referenced but missing from the repository"),
                breaks: labels.iter().cloned().collect(),
            });
        }
    }
    Ok(ids.len())
}

pub fn verify(ctx: &Context) -> Result<VerifyReport> {
    let info = ctx.repo.require_info()?;
    let seg = SegmentSize(info.wal_segment_size);
    let mut problems = Vec::new();
    let mut manifests = Vec::new();
    for label in ctx.repo.backup_labels()? {
        match ctx.repo.load_manifest(&label) {
            Ok(m) => manifests.push(m),
            Err(e) => problems.push(Problem {
                what: format!("{e:#}"),
                breaks: vec![label],
            }),
        }
    }
    let index = ChunkIndex::load(&*ctx.repo.storage, &ctx.repo.packs_prefix());
    let chunks = match index {
        Ok(index) => check_chunks(ctx, &index, &manifests, &mut problems)?,
        Err(e) => {
            problems.push(Problem {
                what: format!("{e:#}"),
                breaks: manifests.iter().map(|m| m.label.clone()).collect(),
            });
            0
        }
    };

    // Every archived WAL file decodes and matches its checksum.
    let files = ctx.repo.wal_files()?;
    for (name, file, _) in &files {
        if let Err(e) = ctx.repo.get_wal(name) {
            problems.push(Problem {
                what: format!("{e:#}"),
                breaks: affected(&manifests, seg, file),
            });
        }
    }

    // Continuity: each backup's own WAL, then gaps after it.
    let archive = archived_segments(ctx, seg)?;
    for m in &manifests {
        let segments = archive.get(&m.timeline);
        for segno in seg.segno(m.start_lsn)..=seg.segno_before(m.stop_lsn) {
            if !segments.is_some_and(|s| s.contains_key(&segno)) {
                problems.push(Problem {
                    what: format!(
                        "WAL segment {} is missing from the archive",
                        seg.name(m.timeline, segno)
                    ),
                    breaks: vec![m.label.clone()],
                });
            }
        }
    }
    for (&timeline, segments) in &archive {
        for (from, to) in gaps(segments) {
            let limited: Vec<String> = manifests
                .iter()
                .filter(|m| m.timeline == timeline && seg.segno(m.start_lsn) < from)
                .map(|m| m.label.clone())
                .collect();
            problems.push(Problem {
                what: format!(
                    "WAL gap on timeline {timeline}: {} .. {} are missing, so recovery cannot pass {}",
                    seg.name(timeline, from),
                    seg.name(timeline, to),
                    seg.start_lsn(from)
                ),
                breaks: limited,
            });
        }
    }
    Ok(VerifyReport {
        problems,
        backups: manifests.len(),
        chunks,
        wal_files: files.len(),
    })
}

/// Backups whose recovery reads this WAL file.
fn affected(manifests: &[Manifest], seg: SegmentSize, file: &WalFile) -> Vec<String> {
    match *file {
        WalFile::Segment {
            timeline,
            log,
            seg: s,
        } => {
            let segno = seg.segno_of(log, s);
            manifests
                .iter()
                .filter(|m| m.timeline <= timeline && seg.segno(m.start_lsn) <= segno)
                .map(|m| m.label.clone())
                .collect()
        }
        WalFile::History { timeline } => manifests
            .iter()
            .filter(|m| m.timeline < timeline)
            .map(|m| m.label.clone())
            .collect(),
        _ => Vec::new(),
    }
}
