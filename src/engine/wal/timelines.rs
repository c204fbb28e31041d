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
    let files = repo.wal_files()?;
    let histories = files.iter().filter_map(|(_, file, _)| match *file {
        WalFile::History { timeline } => Some(timeline),
        _ => None,
    });
    let timelines = files.iter().map(|(_, file, _)| file.timeline());
    Ok(paths_of(repo, histories, timelines))
}

/// The path of each timeline: from its history file for those in `histories`, on its
/// own for the other `timelines` (and timeline 1). For a report that knows both from
/// the catalog, so that nothing is listed.
pub fn paths_of(
    repo: &ClusterRepo,
    histories: impl IntoIterator<Item = u32>,
    timelines: impl IntoIterator<Item = u32>,
) -> (BTreeMap<u32, TimelinePath>, Vec<anyhow::Error>) {
    let mut paths = BTreeMap::new();
    let mut damaged = Vec::new();
    paths.insert(1, TimelinePath::single(1));
    for timeline in histories {
        let name = WalFile::history_name(timeline);
        let ancestors = repo
            .get_wal(&name)
            .and_then(|data| data.with_context(|| format!("{name} vanished")))
            .and_then(|data| {
                history::parse(&String::from_utf8_lossy(&data))
                    .map_err(|e| anyhow::anyhow!("timeline history file {name} is malformed: {e}"))
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
    for timeline in timelines {
        paths
            .entry(timeline)
            .or_insert_with(|| TimelinePath::single(timeline));
    }
    (paths, damaged)
}
