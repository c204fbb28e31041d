//! `verify`: re-reads everything in the repository and checks it against its checksums
//! (`chunks`), then checks that WAL continues without a gap from every backup. Each
//! problem names the backups (and logical backups) it breaks. It writes only damage
//! records, and the local catalog from a listing of everything (so reports see WAL
//! lost by other means than `expire`).

use std::collections::BTreeMap;

use anyhow::{Result, bail};

mod chunks;

use super::Context;
use super::catalog::{Catalog, WalListing};
use super::wal::need::{self as walneed, Need, wal_position};
use super::wal::scan::archived_segments;
use super::wal::timelines;
use crate::format::history::TimelinePath;
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::chunk_store::ChunkStore;

pub struct Problem {
    pub what: String,
    /// Labels of the backups this problem makes unrestorable or limits.
    pub breaks: Vec<String>,
}

pub struct VerifyReport {
    pub problems: Vec<Problem>,
    pub backups: usize,
    pub dumps: usize,
    pub chunks: usize,
    pub wal_files: usize,
    /// Backups lost chunks the database may still hold: a full backup stores them again.
    pub full_backup_heals: bool,
}

pub fn verify(ctx: &Context) -> Result<VerifyReport> {
    // Collection waits meanwhile: a pack it removes mid-check would read as missing.
    let _data_lock = ctx.repo.lock_data_shared()?;
    if let Err(e) = Catalog::read(ctx, WalListing::Everything) {
        tracing::warn!("cannot bring the catalog up to date: {e:#}");
    }
    let mut problems = Vec::new();
    let info = ctx.repo.info().unwrap_or_else(|e| {
        problems.push(Problem {
            what: format!("{e:#}"),
            breaks: Vec::new(),
        });
        None
    });
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
    let mut dumps = Vec::new();
    for label in ctx.repo.dump_labels()? {
        match ctx.repo.load_dump(&label) {
            Ok(d) => dumps.push(d),
            Err(e) => problems.push(Problem {
                what: format!("{e:#}"),
                breaks: vec![label],
            }),
        }
    }
    let Some(seg) = info
        .map(|i| i.wal_segment_size)
        .or(manifests.first().map(|m| m.wal_segment_size))
        .map(SegmentSize)
    else {
        ctx.repo.require_info()?;
        bail!(
            "repository cluster '{}' cannot be verified: its cluster.info and every manifest are unreadable",
            ctx.cluster_name
        );
    };
    for (label, e) in ctx.repo.damaged_pins()? {
        problems.push(Problem {
            what: format!("the pin of backup {label} is damaged ({e:#}); it still pins: run `pgkeep pin {label}` to write it again"),
            breaks: Vec::new(),
        });
    }
    if let Err(e) = ctx.repo.wal_epoch() {
        problems.push(Problem {
            what: format!(
                "{e:#}; reports list all WAL on every call until it is replaced: remove it"
            ),
            breaks: Vec::new(),
        });
    }
    for (key, e) in ctx.repo.damaged_records()? {
        problems.push(Problem {
            what: format!("the record {key} is damaged ({e:#}); `history`, `info` and `status` leave it out: remove it"),
            breaks: Vec::new(),
        });
    }
    let (chunks, full_backup_heals) = match ChunkStore::open_fresh(&ctx.repo) {
        Ok(store) => {
            for (name, why) in &store.index.unreadable {
                problems.push(Problem {
                    what: format!(
                        "pack {name} has no readable index ({why}); its chunks count as missing: put back a good copy of the pack if you have one"
                    ),
                    breaks: Vec::new(),
                });
            }
            chunks::check_chunks(&store, ctx.config.jobs(), &manifests, &dumps, &mut problems)
        }
        Err(e) => {
            problems.push(Problem {
                what: format!("{e:#}"),
                breaks: manifests
                    .iter()
                    .map(|m| m.label.clone())
                    .chain(dumps.iter().map(|d| d.label.clone()))
                    .collect(),
            });
            (0, false)
        }
    };

    // A damaged history file is named below, as a WAL file that does not decode.
    let (paths, _damaged) = timelines::readable_timeline_paths(&ctx.repo)?;
    let (window, damaged) = walneed::Window::read(&ctx.repo);
    for e in damaged {
        problems.push(Problem {
            what: format!("{e:#}; the next `pgkeep expire` that removes WAL writes it again"),
            breaks: Vec::new(),
        });
    }
    let summaries: Vec<_> = manifests.iter().map(|m| m.summary()).collect();
    let needs = window.needs(&summaries, seg);

    // Every archived WAL file decodes and matches its checksum.
    let files = ctx.repo.wal_files()?;
    for (name, file, _) in &files {
        if let Err(e) = ctx.repo.get_wal(name) {
            problems.push(Problem {
                what: format!("{e:#}"),
                breaks: affected(&needs, &paths, seg, name, file),
            });
        }
    }

    // Continuity: each backup's own WAL, then gaps on the timelines it recovers along.
    let archive = archived_segments(ctx, seg)?;
    for n in &needs {
        let segments = archive.get(&n.timeline);
        for segno in n.start..=n.stop {
            if !segments.is_some_and(|s| s.contains_key(&segno)) {
                problems.push(Problem {
                    what: format!(
                        "WAL segment {} is missing from the archive",
                        seg.name(n.timeline, segno)
                    ),
                    breaks: vec![n.label.clone()],
                });
            }
        }
    }
    for limit in walneed::limits(&needs, &paths, seg, &archive) {
        problems.push(Problem {
            what: limit.describe(seg),
            breaks: limit.backups,
        });
    }
    Ok(VerifyReport {
        problems,
        backups: manifests.len(),
        dumps: dumps.len(),
        chunks,
        wal_files: files.len(),
        full_backup_heals,
    })
}

/// Backups whose recovery reads this WAL file. A history file is asked for by every
/// recovery to its timeline or a later one (`latest` looks for each newer one in turn),
/// and one that fails stops recovery: it breaks every backup on that timeline or earlier.
fn affected(
    needs: &[Need],
    paths: &BTreeMap<u32, TimelinePath>,
    seg: SegmentSize,
    name: &str,
    file: &WalFile,
) -> Vec<String> {
    let reads = |n: &Need| match *file {
        WalFile::History { timeline } => n.timeline <= timeline,
        _ => wal_position(name, file, seg)
            .is_some_and(|(tli, segno)| n.reads(paths, seg, tli, segno)),
    };
    needs
        .iter()
        .filter(|n| reads(n))
        .map(|n| n.label.clone())
        .collect()
}
