//! Changed blocks from PostgreSQL 17+'s WAL summaries (`summarize_wal = on`). The
//! summaries must cover the whole range from the parent's start to this backup's
//! start, or they are not used.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::changes::ChangedBlocks;
use crate::format::lsn::Lsn;
use crate::pg::session::Session;

/// Reads the summaries covering `[from, to)` on `timelines` into `changes`; `None` when
/// the server has none, they do not cover the range, or reading them is not allowed.
pub fn query(
    session: &mut Session,
    from: Lsn,
    to: Lsn,
    timelines: &[u32],
    wait: Duration,
    mut changes: ChangedBlocks,
) -> Result<Option<ChangedBlocks>> {
    if session.version_num < 170000 || session.setting("summarize_wal")? != "on" {
        return Ok(None);
    }
    // The summarizer must have reached this backup's start.
    let deadline = Instant::now() + wait;
    loop {
        let summarized: Lsn = session
            .text(
                "SELECT coalesce(summarized_lsn, '0/0')::text FROM pg_get_wal_summarizer_state()",
            )?
            .parse()
            .map_err(anyhow::Error::msg)?;
        if summarized >= to {
            break;
        }
        if Instant::now() >= deadline {
            tracing::info!(
                "WAL summaries reach only {summarized}, not {to}: reading every changed file"
            );
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tlis = timelines
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let ranges = session.rows(&format!(
        "SELECT start_lsn::text, end_lsn::text FROM pg_available_wal_summaries() \
         WHERE tli IN ({tlis}) AND end_lsn > '{from}' AND start_lsn < '{to}' ORDER BY start_lsn"
    ))?;
    let mut covered = from;
    for r in &ranges {
        let (start, end): (Lsn, Lsn) = (
            r[0].parse().map_err(anyhow::Error::msg)?,
            r[1].parse().map_err(anyhow::Error::msg)?,
        );
        if start > covered {
            break;
        }
        covered = covered.max(end);
    }
    if covered < to {
        tracing::info!("WAL summaries do not cover {from} .. {to}: reading every changed file");
        return Ok(None);
    }
    let rows = match session.rows(&format!(
        "SELECT c.reltablespace::text, c.reldatabase::text, c.relfilenode::text, c.relblocknumber::text, c.is_limit_block::text \
         FROM pg_available_wal_summaries() w, pg_wal_summary_contents(w.tli, w.start_lsn, w.end_lsn) c \
         WHERE w.tli IN ({tlis}) AND w.end_lsn > '{from}' AND w.start_lsn < '{to}' AND c.relforknumber = 0"
    )) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::info!("cannot read WAL summaries ({e:#}): reading every changed file");
            return Ok(None);
        }
    };
    for r in rows {
        let num = |i: usize| {
            r[i].parse::<u32>()
                .map_err(|_| anyhow::anyhow!("bad WAL summary row {r:?}"))
        };
        let (spc, db, node, block) = (num(0)?, num(1)?, num(2)?, num(3)?);
        if node == 0 {
            changes.database(spc, db);
        } else if r[4] == "true" {
            changes.limit(spc, db, node, block);
        } else {
            changes.block(spc, db, node, block);
        }
    }
    Ok(Some(changes))
}
