//! `verify`: re-reads everything in the repository and checks it against its checksums,
//! then checks that WAL continues without a gap from every backup. Each problem names
//! the backups it breaks.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::Context;
use super::walscan::{archived_segments, gaps};
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::manifest::Manifest;
use crate::repo::pack::{ChunkId, ChunkIndex, ChunkLocation, decode_chunk};

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

/// Which backups (and which file) use each chunk, to name what a bad chunk breaks.
fn chunk_users(manifests: &[Manifest]) -> BTreeMap<ChunkId, (BTreeSet<String>, String)> {
    let mut users: BTreeMap<ChunkId, (BTreeSet<String>, String)> = BTreeMap::new();
    for m in manifests {
        for f in &m.files {
            for c in &f.chunks {
                let entry = users
                    .entry(*c)
                    .or_insert_with(|| (BTreeSet::new(), f.path.clone()));
                entry.0.insert(m.label.clone());
            }
        }
    }
    users
}

/// Problems in one pack: missing, unreadable, bad chunks (by id), or a changed byte
/// outside chunk data (the pack's name is the hash of all its bytes).
fn check_pack(
    ctx: &Context,
    index: &ChunkIndex,
    pack: u32,
    chunks: &[(ChunkId, ChunkLocation)],
) -> Vec<(Option<ChunkId>, String)> {
    let key = index.pack_key(&ctx.repo.packs_prefix(), pack);
    let bytes = match ctx.repo.storage.get(&key) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return chunks
                .iter()
                .map(|(id, _)| (Some(*id), format!("pack {key} is missing")))
                .collect();
        }
        Err(e) => return vec![(None, format!("pack {key} is unreadable: {e:#}"))],
    };
    let mut found = Vec::new();
    for (id, loc) in chunks {
        let payload = bytes.get(loc.offset as usize..(loc.offset + loc.stored_len as u64) as usize);
        let intact = match (payload, loc.delta) {
            (None, _) => false,
            (Some(p), None) => decode_chunk(id, loc, p, None).is_ok(),
            // A delta is read through its bases.
            (Some(_), Some(_)) => index
                .read(&*ctx.repo.storage, &ctx.repo.packs_prefix(), id)
                .is_ok(),
        };
        if !intact {
            found.push((
                Some(*id),
                format!(
                    "chunk {id} in pack {key} is corrupt: its content does not match its checksum"
                ),
            ));
        }
    }
    if found.is_empty() && blake3::hash(&bytes).to_hex().as_str() != index.pack_name(pack) {
        found.push((
            None,
            format!("pack {key} is corrupt outside its chunk data (its chunks are intact)"),
        ));
    }
    found
}

fn check_chunks(
    ctx: &Context,
    index: &ChunkIndex,
    manifests: &[Manifest],
    problems: &mut Vec<Problem>,
) -> Result<usize> {
    let users = chunk_users(manifests);
    let packs = index.by_pack();
    let jobs = ctx.config.jobs();
    let found: Vec<(Option<ChunkId>, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|worker| {
                let packs = &packs;
                scope.spawn(move || {
                    (worker..packs.len())
                        .step_by(jobs)
                        .flat_map(|p| check_pack(ctx, index, p as u32, &packs[p]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verify worker panicked"))
            .collect()
    });
    for (chunk, what) in found {
        let (breaks, what) = match chunk.and_then(|c| users.get(&c)) {
            Some((labels, path)) => (
                labels.iter().cloned().collect(),
                format!("{what} (data of {path})"),
            ),
            None => (Vec::new(), what),
        };
        problems.push(Problem { what, breaks });
    }
    for (id, (labels, path)) in &users {
        if !index.chunks.contains_key(id) {
            problems.push(Problem {
                what: format!("chunk {id} of {path} is referenced but missing from the repository"),
                breaks: labels.iter().cloned().collect(),
            });
        }
    }
    Ok(index.chunks.len())
}

pub fn verify(ctx: &Context) -> Result<VerifyReport> {
    let info = ctx.repo.require_info()?;
    // Collection waits meanwhile: a pack it removes mid-check would read as missing.
    let _data_lock = ctx.repo.lock_data_shared()?;
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
        Ok(index) => {
            for (name, why) in &index.unreadable {
                problems.push(Problem {
                    what: format!("pack {name} has no readable index ({why}); its chunks are lost"),
                    breaks: Vec::new(),
                });
            }
            check_chunks(ctx, &index, &manifests, &mut problems)?
        }
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
    // Below the floor, expire removed WAL on purpose (the WAL window).
    let floor = ctx.repo.wal_floor()?.unwrap_or(0);
    for (&timeline, segments) in &archive {
        for (from, to) in gaps(segments).into_iter().filter(|&(_, to)| to >= floor) {
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
