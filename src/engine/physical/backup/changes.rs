//! Which blocks changed since the parent backup started: with this, a chunk of a
//! main-fork relation file with no changed block is taken from the parent unread.
//!
//! Two sources fill it, both with PostgreSQL's own rules (`walsummarizer.c`): the
//! server's WAL summaries on 17+ (`summary`), or the WAL itself (`wal`). Truncations
//! and new relation files appear as "limit blocks": every block from the limit on
//! counts as changed. Only the main fork is tracked: the free space map is not fully
//! WAL-logged, and the small forks are read whole anyway.

use std::collections::{HashMap, HashSet};

use crate::format::page::{BLOCKS_PER_SEGMENT, PAGE_SIZE};

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
    /// Database directories created or dropped since the parent: every file under them
    /// counts as changed. `CREATE DATABASE ... STRATEGY FILE_COPY` writes no per-page
    /// WAL, so this is the only trace it leaves.
    databases: Vec<String>,
    /// The tablespace subdirectory of this server version (`PG_15_202209061`).
    tablespace_dir: String,
    blocks_per_chunk: u32,
}

impl ChangedBlocks {
    pub fn new(tablespace_dir: &str, chunk_size: u64) -> ChangedBlocks {
        ChangedBlocks {
            relations: HashMap::new(),
            databases: Vec::new(),
            tablespace_dir: tablespace_dir.to_string(),
            blocks_per_chunk: (chunk_size / PAGE_SIZE as u64) as u32,
        }
    }

    /// Path of a relation's main fork (first segment), as the data directory names it.
    fn relation_path(&self, spc: u32, db: u32, relfilenode: u32) -> String {
        match spc {
            1664 => format!("global/{relfilenode}"),
            1663 => format!("base/{db}/{relfilenode}"),
            _ => format!("pg_tblspc/{spc}/{}/{db}/{relfilenode}", self.tablespace_dir),
        }
    }

    fn chunk_of(&self, block: u32) -> (u32, u64) {
        (
            block / BLOCKS_PER_SEGMENT,
            ((block % BLOCKS_PER_SEGMENT) / self.blocks_per_chunk) as u64,
        )
    }

    /// Block `block` of a relation's main fork changed.
    pub fn block(&mut self, spc: u32, db: u32, relfilenode: u32, block: u32) {
        let at = self.chunk_of(block);
        let path = self.relation_path(spc, db, relfilenode);
        self.relations.entry(path).or_default().chunks.insert(at);
    }

    /// Every block of a relation's main fork from `block` on changed (truncated,
    /// created or dropped).
    pub fn limit(&mut self, spc: u32, db: u32, relfilenode: u32, block: u32) {
        let at = self.chunk_of(block);
        let path = self.relation_path(spc, db, relfilenode);
        let rel = self.relations.entry(path).or_default();
        rel.limit = Some(rel.limit.map_or(at, |l| l.min(at)));
    }

    /// A whole database directory was created or dropped.
    pub fn database(&mut self, spc: u32, db: u32) {
        // The path of relation 0 is ".../0": the directory is what precedes it.
        let file = self.relation_path(spc, db, 0);
        self.databases
            .push(file.strip_suffix('0').unwrap_or_default().to_string());
    }

    /// Whether chunk `index` of the main-fork file `path` (`REL` or `REL.N`) is untouched
    /// since the parent.
    pub fn unchanged(&self, path: &str, index: u64) -> bool {
        let (base, segment) = match path.rsplit_once('.') {
            Some((base, n)) => match n.parse() {
                Ok(n) => (base, n),
                Err(_) => return false, // not a relation segment: claim nothing
            },
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
        let mut c = ChangedBlocks::new("PG_18_1", 256 * 1024);
        assert_eq!(c.relation_path(1663, 5, 16384), "base/5/16384");
        assert_eq!(c.relation_path(1664, 0, 1262), "global/1262");
        assert_eq!(
            c.relation_path(16400, 5, 16384),
            "pg_tblspc/16400/PG_18_1/5/16384"
        );
        c.block(1663, 5, 1, 2 * 32 + 5);
        c.limit(1663, 5, 1, BLOCKS_PER_SEGMENT + 10 * 32);
        c.limit(1663, 5, 1, BLOCKS_PER_SEGMENT + 12 * 32);
        c.database(1663, 7);
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
        assert!(c.unchanged("base/70/1", 0), "only database 7 itself");
    }
}
