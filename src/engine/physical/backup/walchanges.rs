//! Changed blocks read from the WAL itself, for servers without WAL summaries
//! (PostgreSQL 15 and 16, or 17+ with `summarize_wal = off`): PostgreSQL's WAL
//! summarizer rules applied to every record from the parent's start to this backup's
//! start. Segments come from the archive; the newest, not archived yet, from `pg_wal`.
//!
//! Any doubt gives up (`None`) and the backup reads every file that changed: a segment
//! that cannot be found, a record missing or unreadable, WAL that ends before this
//! backup's start, or a stretch run at `wal_level = minimal`, which skips WAL for some
//! writes.

use std::io::ErrorKind;

use super::changes::ChangedBlocks;
use crate::engine::Context;
use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::format::wal::SegmentSize;
use crate::format::walrecord::{self, Record, RecordReader, StorageChange};

/// Applies one record; `false` if from here on the WAL does not describe every change.
fn apply(changes: &mut ChangedBlocks, rec: &Record) -> bool {
    const MAIN_FORK: u8 = 0;
    let Some(parsed) = walrecord::parse(&rec.bytes) else {
        return false; // its CRC was right, so this is a format we do not know
    };
    for b in parsed.blocks.iter().filter(|b| b.fork == MAIN_FORK) {
        changes.block(b.rel.tablespace, b.rel.database, b.rel.relfilenode, b.block);
    }
    let Ok(change) = walrecord::storage_change(rec) else {
        return false;
    };
    match change {
        Some(StorageChange::ForkCreated { rel, fork }) if fork == MAIN_FORK => {
            changes.limit(rel.tablespace, rel.database, rel.relfilenode, 0)
        }
        Some(StorageChange::Truncated { rel, blocks }) => {
            changes.limit(rel.tablespace, rel.database, rel.relfilenode, blocks)
        }
        Some(StorageChange::RelationsDropped(rels)) => {
            for rel in rels {
                changes.limit(rel.tablespace, rel.database, rel.relfilenode, 0);
            }
        }
        Some(StorageChange::DatabaseCreated {
            tablespace,
            database,
        }) => changes.database(tablespace, database),
        Some(StorageChange::DatabaseDropped {
            database,
            tablespaces,
        }) => {
            for tablespace in tablespaces {
                changes.database(tablespace, database);
            }
        }
        Some(StorageChange::WalLevelMinimal) => return false,
        Some(StorageChange::ForkCreated { .. }) | None => {}
    }
    true
}

/// One segment's bytes: archived, or else still in `pg_wal`; `None` if neither can be
/// read (the backup then reads every changed file rather than fail).
fn segment(ctx: &Context, name: &str) -> Option<Vec<u8>> {
    match ctx.repo.get_wal(name) {
        Ok(Some(bytes)) => return Some(bytes),
        Ok(None) => {}
        Err(e) => tracing::warn!("{e:#}; reading {name} from pg_wal instead"),
    }
    let path = ctx.cluster.pgdata.as_ref()?.join("pg_wal").join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", path.display());
            None
        }
    }
}

/// Fills `changes` from the records in `[from, to)` along `path`; `None` if the WAL
/// cannot show every change (see the module comment).
///
/// Every record in the range must be seen: both ends are checkpoint redo points, where
/// records begin, so the first record read starts at `from`, each names the one before
/// it (`xl_prev`), and the one that ends the scan starts at `to`.
pub fn scan(
    ctx: &Context,
    seg: SegmentSize,
    path: &TimelinePath,
    from: Lsn,
    to: Lsn,
    mut changes: ChangedBlocks,
) -> Option<ChangedBlocks> {
    let mut reader = RecordReader::default();
    let mut last: Option<Lsn> = None;
    // Set when the scan is over: reached `to`, or why it gives up.
    let mut outcome: Option<Result<(), String>> = None;
    // `to` may be the last position of a segment, its record in the next one.
    for segno in seg.segno(from)..=seg.segno(to) + 1 {
        let name = seg.name(path.timeline_of_segment(seg, segno), segno);
        let Some(bytes) = segment(ctx, &name) else {
            outcome = Some(Err(format!(
                "WAL segment {name} is neither archived nor readable in pg_wal"
            )));
            break;
        };
        reader.feed(segno, &bytes, |rec| {
            if outcome.is_some() || rec.lsn < from {
                return;
            }
            let follows = match last {
                None => rec.lsn == from,
                Some(prev) => rec.prev() == prev,
            };
            outcome = if !follows {
                Some(Err(format!("the WAL has a gap before {}", rec.lsn)))
            } else if rec.lsn == to {
                Some(Ok(()))
            } else if rec.lsn > to {
                Some(Err(format!("no WAL record starts at {to}")))
            } else if !apply(&mut changes, &rec) {
                Some(Err(format!(
                    "the WAL at {} cannot show every change (wal_level = minimal, or a record \
                     pgkeep cannot read)",
                    rec.lsn
                )))
            } else {
                last = Some(rec.lsn);
                None
            };
        });
        if outcome.is_some() {
            break;
        }
    }
    let why = match outcome {
        Some(Ok(())) => return Some(changes),
        Some(Err(why)) => why,
        None => format!("the WAL ends before {to}"),
    };
    tracing::info!("{why}: reading every changed file");
    None
}
