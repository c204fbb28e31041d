//! The timelines the archive knows, each with the history that leads to it.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use crate::format::history::{self, TimelinePath};
use crate::format::wal::WalFile;
use crate::repo::ClusterRepo;

/// Loads the history of every timeline the archive knows. A timeline with segments but
/// no history file (a failover before pgkeep archived this cluster) is followed on its
/// own. A damaged history file is an error: recovery along that timeline would stop on it.
pub fn timeline_paths(repo: &ClusterRepo) -> Result<BTreeMap<u32, TimelinePath>> {
    let (paths, damaged) = readable_timeline_paths(repo)?;
    match damaged.into_iter().next() {
        Some(e) => Err(e.context("run `pgkeep verify`")),
        None => Ok(paths),
    }
}

/// [`timeline_paths`], with timelines whose history file cannot be read followed on
/// their own and the errors returned beside them.
pub fn readable_timeline_paths(
    repo: &ClusterRepo,
) -> Result<(BTreeMap<u32, TimelinePath>, Vec<anyhow::Error>)> {
    let mut paths = BTreeMap::new();
    let mut damaged = Vec::new();
    paths.insert(1, TimelinePath::single(1));
    let files = repo.wal_files()?;
    for (name, file, _) in &files {
        if let WalFile::History { timeline } = *file {
            let ancestors = repo
                .get_wal(name)
                .and_then(|data| data.with_context(|| format!("{name} vanished")))
                .and_then(|data| {
                    history::parse(&String::from_utf8_lossy(&data)).map_err(|e| {
                        anyhow::anyhow!("timeline history file {name} is malformed: {e}")
                    })
                });
            match ancestors {
                Ok(ancestors) => {
                    paths.insert(
                        timeline,
                        TimelinePath {
                            timeline,
                            ancestors,
                        },
                    );
                }
                Err(e) => damaged.push(e),
            }
        }
    }
    for (_, file, _) in &files {
        paths
            .entry(file.timeline())
            .or_insert_with(|| TimelinePath::single(file.timeline()));
    }
    Ok((paths, damaged))
}
