//! The catalog: what reports (`info`, `status`, `serve`) know of a repository, kept in
//! the local cache so that a call reads only what changed since the last one instead of
//! every manifest and a listing of every archived segment.
//!
//! Invariants:
//! - It holds only what was read from objects that never change once written: summaries
//!   of backup and dump manifests and the proofs, each with its object's size (an object
//!   of another size is read again), the archived segments with their archive times,
//!   and the last commit in the WAL the recoverable window ends with (found again when
//!   the window ends elsewhere, and never kept while receive-wal streams past it).
//! - Backups, dumps and proofs are listed on every call (their folders stay short), so
//!   one that went is dropped and a new one read.
//! - WAL folders grow long, so a call lists each timeline only from [`LOOKBACK`]
//!   segments before its newest one: a segment archived out of order lands in that span.
//!   `expire` moves the WAL epoch on before it removes segments, and a catalog of another
//!   epoch lists all WAL again.
//! - WAL lost any other way (deleted by hand, gone from a bucket) shows in reports once
//!   `pgkeep verify` has run: verify lists everything and rewrites the catalog.
//! - It is a cache: missing, damaged (the cache checks a hash) or of another version, it
//!   is built again, and a failure to write it fails nothing. Commands that act on the
//!   repository (restore, prove, expire, verify) never trust it.

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::Context;
use crate::engine::info::DumpInfo;
use crate::engine::wal::scan::Segments;
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::ClusterInfo;
use crate::repo::manifest::BackupSummary;
use crate::repo::proof::Proof;
use crate::repo::storage::ObjectCache;

/// Version of the stored catalog; one of another version is built again.
const CATALOG_VERSION: u32 = 1;

/// How many segments before a timeline's newest one each call lists again.
pub const LOOKBACK: u64 = 256;

/// What reports are judged from.
pub struct Catalog {
    /// Sorted by label (oldest first).
    pub backups: Vec<BackupSummary>,
    pub dumps: Vec<DumpInfo>,
    /// Oldest first.
    pub proofs: Vec<Proof>,
    /// Archived segments of every timeline.
    pub wal: BTreeMap<u32, Segments>,
    /// The cluster's record (read on every call: it is small).
    pub info: ClusterInfo,
    /// The timelines whose history file is archived.
    pub histories: Vec<u32>,
    cache: Option<ObjectCache>,
    cluster: String,
}

/// How much of the WAL a read lists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WalListing {
    /// From [`LOOKBACK`] segments before each timeline's newest (everything if the
    /// catalog is new or of another epoch).
    Changes,
    /// Everything (`verify`).
    Everything,
}

/// An object read into the catalog, with the size it had.
#[derive(Serialize, Deserialize, Clone)]
struct Entry<T> {
    size: u64,
    value: T,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    version: u32,
    backups: BTreeMap<String, Entry<BackupSummary>>,
    dumps: BTreeMap<String, Entry<DumpInfo>>,
    proofs: BTreeMap<String, Entry<Proof>>,
    /// The WAL epoch the WAL below was listed in; `None` until a first listing.
    wal_listed_in: Option<Epoch>,
    /// Per timeline, runs of consecutive segments: (first, archive time of each).
    wal: BTreeMap<u32, Vec<(u64, Vec<i64>)>>,
}

/// The repository's WAL epoch ([`crate::repo::ClusterRepo::wal_epoch`]); `id` is `None`
/// in a repository written before epochs. A struct, so that the epoch `None` is stored
/// apart from "never listed".
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct Epoch {
    id: Option<String>,
}

impl Catalog {
    /// The catalog of `ctx`'s cluster and repository, brought up to date.
    pub fn read(ctx: &Context, listing: WalListing) -> Result<Catalog> {
        let cache = ObjectCache::for_repository(
            ctx.repo_config.cache_path.as_deref(),
            &ctx.repo_config.path.to_string(),
        );
        let key = format!("{}/catalog.json", ctx.cluster_name);
        let before = cache.as_ref().and_then(|c| c.get(&key));
        let mut stored: Stored = before
            .as_deref()
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .filter(|s: &Stored| s.version == CATALOG_VERSION)
            .unwrap_or_default();
        stored.version = CATALOG_VERSION;
        // At once: on object storage each is a round trip. The epoch is read before the
        // WAL is listed: a removal that starts during the listing changes it, and the
        // next read lists everything again.
        let (epoch, backups, dumps, proofs, info, histories) = std::thread::scope(|s| {
            let epoch = s.spawn(|| ctx.repo.wal_epoch());
            let backups = s.spawn(|| ctx.repo.backup_sizes());
            let dumps = s.spawn(|| ctx.repo.dump_sizes());
            let proofs = s.spawn(|| ctx.repo.proof_sizes());
            let info = s.spawn(|| ctx.repo.require_info());
            let histories = ctx.repo.history_timelines();
            (
                joined(epoch),
                joined(backups),
                joined(dumps),
                joined(proofs),
                joined(info),
                histories,
            )
        });
        let (info, histories) = (info?, histories?);
        // A damaged epoch (verify names it) matches none, so all WAL is listed on every
        // call until it is replaced.
        let epoch = match epoch {
            Ok(id) => Some(Epoch { id }),
            Err(e) => {
                tracing::warn!("{e:#}; listing all WAL");
                None
            }
        };
        refresh(&mut stored.backups, backups?, "backup", |label| {
            Ok(Some(ctx.repo.load_manifest(label)?.summary()))
        });
        refresh(&mut stored.dumps, dumps?, "logical backup", |label| {
            Ok(Some(DumpInfo::of(&ctx.repo.load_dump(label)?)))
        });
        refresh(&mut stored.proofs, proofs?, "proof", |name| {
            ctx.repo.load_proof(name)
        });
        let mut wal = expand(&stored.wal);
        let everything =
            listing == WalListing::Everything || epoch.is_none() || stored.wal_listed_in != epoch;
        let seg = SegmentSize(info.wal_segment_size);
        if everything {
            wal = crate::engine::wal::scan::archived_segments(ctx, seg)?;
        } else {
            list_changes(ctx, seg, &histories, &mut wal)?;
        }
        stored.wal = compact(&wal);
        stored.wal_listed_in = epoch;
        if let Some(cache) = &cache {
            let after = serde_json::to_vec(&stored)?;
            if before.as_deref() != Some(&after[..]) {
                cache.put(&key, &after);
            }
        }
        let mut proofs: Vec<Proof> = stored.proofs.into_values().map(|e| e.value).collect();
        proofs.sort_by_key(|p| p.finished);
        Ok(Catalog {
            backups: stored.backups.into_values().map(|e| e.value).collect(),
            dumps: stored.dumps.into_values().map(|e| e.value).collect(),
            proofs,
            wal,
            info,
            histories,
            cache,
            cluster: ctx.cluster_name.to_string(),
        })
    }

    /// The time of the last commit in the archived WAL that ends with `segment` (the
    /// recoverable window's end): `find`s answer, kept for as long as the window ends
    /// there, since archived segments never change.
    pub fn last_commit(
        &self,
        segment: &str,
        find: impl FnOnce() -> Result<Option<DateTime<Utc>>>,
    ) -> Result<Option<DateTime<Utc>>> {
        let key = format!("{}/last-commit.json", self.cluster);
        let kept: Option<(String, Option<DateTime<Utc>>)> = (self.cache.as_ref())
            .and_then(|c| c.get(&key))
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if let Some((end, time)) = kept
            && end == segment
        {
            return Ok(time);
        }
        let time = find()?;
        if let Some(cache) = &self.cache {
            cache.put(&key, &serde_json::to_vec(&(segment, time))?);
        }
        Ok(time)
    }
}

/// Brings `held` to the objects `listed`: gone ones dropped, new ones (or ones of
/// another size) read with `load`. One that does not read is left out with a warning,
/// as the reports always did (`verify` names it), and tried again next time.
fn refresh<T>(
    held: &mut BTreeMap<String, Entry<T>>,
    listed: Vec<(String, u64)>,
    what: &str,
    load: impl Fn(&str) -> Result<Option<T>>,
) {
    let mut now = BTreeMap::new();
    for (name, size) in listed {
        match held.remove(&name) {
            Some(entry) if entry.size == size => {
                now.insert(name, entry);
            }
            _ => match load(&name) {
                Ok(Some(value)) => {
                    now.insert(name, Entry { size, value });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping {what} {name}: {e:#}"),
            },
        }
    }
    *held = now;
}

/// Lists each timeline's WAL from [`LOOKBACK`] segments before its newest known one,
/// and replaces that span of `wal` with what is there now.
fn list_changes(
    ctx: &Context,
    seg: SegmentSize,
    histories: &[u32],
    wal: &mut BTreeMap<u32, Segments>,
) -> Result<()> {
    let mut timelines: Vec<u32> = wal.keys().copied().collect();
    timelines.extend(histories);
    timelines.push(1);
    timelines.sort_unstable();
    timelines.dedup();
    for timeline in timelines {
        let segments = wal.entry(timeline).or_default();
        let from = segments
            .last_key_value()
            .map(|(&newest, _)| newest.saturating_sub(LOOKBACK));
        let after = from.map_or(String::new(), |s| seg.name(timeline, s));
        if let Some(from) = from {
            segments.retain(|&segno, _| segno <= from);
        }
        for (_, file, meta) in ctx.repo.timeline_wal_files_after(timeline, &after)? {
            if let WalFile::Segment { log, seg: s, .. } = file {
                segments.insert(seg.segno_of(log, s), meta.modified);
            }
        }
        if segments.is_empty() {
            wal.remove(&timeline);
        }
    }
    Ok(())
}

/// What a scoped thread returned; its panic goes on in the caller.
pub fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Segments as runs of consecutive numbers, for storing.
fn compact(wal: &BTreeMap<u32, Segments>) -> BTreeMap<u32, Vec<(u64, Vec<i64>)>> {
    wal.iter()
        .map(|(&timeline, segments)| {
            let mut runs: Vec<(u64, Vec<i64>)> = Vec::new();
            for (&segno, &time) in segments {
                match runs.last_mut() {
                    Some((first, times)) if *first + times.len() as u64 == segno => {
                        times.push(time)
                    }
                    _ => runs.push((segno, vec![time])),
                }
            }
            (timeline, runs)
        })
        .collect()
}

fn expand(runs: &BTreeMap<u32, Vec<(u64, Vec<i64>)>>) -> BTreeMap<u32, Segments> {
    runs.iter()
        .map(|(&timeline, runs)| {
            let segments = runs
                .iter()
                .flat_map(|(first, times)| (*first..).zip(times.iter().copied()))
                .collect();
            (timeline, segments)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_keep_every_segment_and_its_time() {
        let wal: BTreeMap<u32, Segments> = [
            (
                1,
                [(3, 30), (4, 40), (5, 50), (9, 90)].into_iter().collect(),
            ),
            (2, [(9, 91)].into_iter().collect()),
        ]
        .into_iter()
        .collect();
        let runs = compact(&wal);
        assert_eq!(runs[&1], vec![(3, vec![30, 40, 50]), (9, vec![90])]);
        assert_eq!(expand(&runs), wal);
    }

    #[test]
    fn refresh_reads_only_what_is_new_or_changed() {
        let mut held: BTreeMap<String, Entry<String>> = BTreeMap::new();
        let loads = std::cell::Cell::new(0);
        let load = |name: &str| {
            loads.set(loads.get() + 1);
            Ok(Some(format!("read {name}")))
        };
        refresh(&mut held, vec![("a".into(), 1), ("b".into(), 2)], "x", load);
        assert_eq!(loads.get(), 2);
        refresh(&mut held, vec![("b".into(), 2), ("c".into(), 3)], "x", load);
        assert_eq!(loads.get(), 3, "b was read again");
        assert_eq!(held.keys().collect::<Vec<_>>(), ["b", "c"], "a went");
        refresh(&mut held, vec![("b".into(), 5), ("c".into(), 3)], "x", load);
        assert_eq!(loads.get(), 4, "b of another size is read again");
        refresh(&mut held, vec![("d".into(), 1)], "x", |_| {
            anyhow::bail!("damaged")
        });
        assert!(held.is_empty(), "what does not read is left out");
    }
}
