//! Changed blocks from PostgreSQL 17+'s WAL summaries (`summarize_wal = on`): with
//! them, a chunk of a main-fork relation file with no changed block since the parent
//! started is taken from the parent without reading it.
//!
//! Truncations and new relation files appear as "limit blocks": every block from the
//! limit on counts as changed. The summaries must cover the whole range from the
//! parent's start to this backup's start, or they are not used.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::format::lsn::Lsn;
use crate::format::page::{BLOCKS_PER_SEGMENT, PAGE_SIZE};
use crate::pg::session::Session;

/// Changed chunks of one relation's main fork, as (segment, chunk in segment).
#[derive(Default)]
struct RelationChanges {
    chunks: HashSet<(u32, u64)>,
    /// Truncated to here: every chunk from this one on, in every later segment, changed.
    limit: Option<(u32, u64)>,
}

pub struct ChangedBlocks {
    /// By the relation's path without a segment suffix.
    relations: HashMap<String, RelationChanges>,
    /// Database directories created or dropped since the parent (relfilenode 0 in a
    /// summary): every file under them counts as changed. `CREATE DATABASE ... STRATEGY
    /// FILE_COPY` writes no per-page WAL, so this is the only trace it leaves.
    databases: Vec<String>,
}

/// Path of a relation's main fork (first segment), as the data directory names it.
fn relation_path(spc: u32, db: u32, relfilenode: u32, tablespace_dir: &str) -> String {
    match spc {
        1664 => format!("global/{relfilenode}"),
        1663 => format!("base/{db}/{relfilenode}"),
        _ => format!("pg_tblspc/{spc}/{tablespace_dir}/{db}/{relfilenode}"),
    }
}

impl ChangedBlocks {
    /// Reads the summaries covering `[from, to)` on `timelines`; `None` when the server
    /// has none, they do not cover the range, or reading them is not allowed.
    pub fn query(
        session: &mut Session,
        from: Lsn,
        to: Lsn,
        timelines: &[u32],
        tablespace_dir: &str,
        chunk_size: u64,
        wait: Duration,
    ) -> Result<Option<ChangedBlocks>> {
        if session.version_num < 170000 || session.setting("summarize_wal")? != "on" {
            return Ok(None);
        }
        // The summarizer must have reached this backup's start.
        let deadline = Instant::now() + wait;
        loop {
            let summarized: Lsn = session
                .text("SELECT coalesce(summarized_lsn, '0/0')::text FROM pg_get_wal_summarizer_state()")?
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
        let mut relations: HashMap<String, RelationChanges> = HashMap::new();
        let mut databases = Vec::new();
        let per_chunk = chunk_size / PAGE_SIZE as u64;
        for r in rows {
            let num = |i: usize| {
                r[i].parse::<u32>()
                    .map_err(|_| anyhow::anyhow!("bad WAL summary row {r:?}"))
            };
            let (spc, db, node, block) = (num(0)?, num(1)?, num(2)?, num(3)?);
            if node == 0 {
                // relation_path(.., 0, ..) is ".../0": the directory is what precedes it.
                databases.push(
                    relation_path(spc, db, 0, tablespace_dir)
                        .strip_suffix('0')
                        .unwrap_or_default()
                        .to_string(),
                );
                continue;
            }
            let at = (
                block / BLOCKS_PER_SEGMENT,
                (block % BLOCKS_PER_SEGMENT) as u64 / per_chunk,
            );
            let rel = relations
                .entry(relation_path(spc, db, node, tablespace_dir))
                .or_default();
            if r[4] == "true" {
                rel.limit = Some(rel.limit.map_or(at, |l| l.min(at)));
            } else {
                rel.chunks.insert(at);
            }
        }
        Ok(Some(ChangedBlocks {
            relations,
            databases,
        }))
    }

    /// Whether chunk `index` of the main-fork file `path` (`REL` or `REL.N`) is untouched
    /// since the parent.
    pub fn unchanged(&self, path: &str, index: u64) -> bool {
        let (base, segment) = match path.rsplit_once('.') {
            Some((base, n)) => (base, n.parse().unwrap_or(u32::MAX)),
            None => (path, 0),
        };
        let at = (segment, index);
        if self
            .databases
            .iter()
            .any(|dir| base.starts_with(dir.as_str()))
        {
            return false;
        }
        match self.relations.get(base) {
            None => true,
            Some(rel) => !rel.chunks.contains(&at) && rel.limit.is_none_or(|limit| at < limit),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_chunks() {
        assert_eq!(relation_path(1663, 5, 16384, "PG_18_1"), "base/5/16384");
        assert_eq!(relation_path(1664, 0, 1262, "PG_18_1"), "global/1262");
        assert_eq!(
            relation_path(16400, 5, 16384, "PG_18_1"),
            "pg_tblspc/16400/PG_18_1/5/16384"
        );
        let mut relations = HashMap::new();
        relations.insert(
            "base/5/1".to_string(),
            RelationChanges {
                chunks: [(0, 2)].into(),
                limit: Some((1, 10)),
            },
        );
        let c = ChangedBlocks {
            relations,
            databases: vec!["base/7/".to_string()],
        };
        assert!(
            !c.unchanged("base/7/1259", 0),
            "a recreated database is all new"
        );
        assert!(c.unchanged("base/5/1", 1) && !c.unchanged("base/5/1", 2));
        assert!(
            c.unchanged("base/5/1.1", 9)
                && !c.unchanged("base/5/1.1", 10)
                && !c.unchanged("base/5/1.2", 0)
        );
        assert!(c.unchanged("base/5/2", 7));
    }
}
