//! `expire`: applies the retention policy. Three steps, each safe to interrupt:
//!
//! 1. remove the manifests of expired backups (they are gone; their data stays);
//! 2. record the WAL window, then remove WAL no surviving backup needs (per timeline,
//!    see `walneed`), oldest first;
//! 3. garbage-collect packs.
//!
//! Steps 2 and 3 run only while `expire` holds the data lock exclusively: every backup
//! holds it shared from before it reads the chunk index until its manifest is published,
//! so no chunk an unfinished backup refers to, and none of the WAL it waits for, can be
//! removed. If a backup is running, they wait for the next `expire`.
//!
//! Within collection, new packs are stored before the old ones go, and an index before
//! its pack, so a crash leaves at worst a duplicate (removed by the next collection) or
//! a pack without its index file (read through the index inside it, and its file
//! written again).

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};

use super::policy::{self as retention, BackupFacts, Plan, Reason};
use crate::engine::Context;
use crate::engine::wal::need::{self as walneed, Need, wal_position};
use crate::engine::wal::timelines;
use crate::format::wal::SegmentSize;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::index::{ChunkIndex, ChunkLocation};
use crate::repo::logical::DumpManifest;
use crate::repo::manifest::Manifest;
use crate::repo::pack::{ChunkId, PackWriter, pack_size};

pub struct ExpireReport {
    pub plan: Plan,
    pub backups: Vec<BackupFacts>,
    /// The plan for each database's logical backups (`[retention.dumps]`).
    pub dumps: Vec<DumpPlan>,
    /// WAL files removed (or, in a dry run, to be removed), oldest first.
    pub wal_removed: Vec<String>,
    pub gc: Option<GcReport>,
    /// WAL removal and collection were skipped because a backup, restore or verify holds
    /// the data lock.
    pub gc_deferred: bool,
}

/// What `[retention.dumps]` keeps of one group of logical backups.
pub struct DumpPlan {
    /// "database D", "the globals", or "dump --all runs".
    pub group: String,
    pub dumps: Vec<BackupFacts>,
    pub plan: Plan,
}

/// Plans the logical backups by `[retention.dumps]`: each database's own dumps, the
/// globals-only dumps, and the `dump --all` runs, each group counted on its own. A run
/// is one unit: its databases' dumps stay exactly as long as its head (the globals
/// dump), which a pin on any of them keeps.
fn plan_dumps(
    ctx: &Context,
    pinned: &std::collections::BTreeSet<String>,
    now: DateTime<Utc>,
) -> Result<Vec<DumpPlan>> {
    let dumps = ctx.repo.dumps().context(
        "expire needs every logical backup's manifest to be readable; run `pgkeep verify`",
    )?;
    let heads: HashSet<&str> = dumps
        .iter()
        .filter(|d| d.globals && d.set.as_deref() == Some(d.label.as_str()))
        .map(|d| d.label.as_str())
        .collect();
    // The head of the run a dump belongs to, if that run has one.
    fn head_of<'d>(heads: &HashSet<&str>, d: &'d DumpManifest) -> Option<&'d str> {
        d.set.as_deref().filter(|h| heads.contains(h))
    }
    let mut pinned_runs: HashSet<&str> = HashSet::new();
    for d in &dumps {
        if let Some(head) = head_of(&heads, d)
            && pinned.contains(&d.label)
        {
            pinned_runs.insert(head);
        }
    }
    let mut groups: BTreeMap<String, Vec<BackupFacts>> = BTreeMap::new();
    for d in &dumps {
        let group = match (head_of(&heads, d), d.globals) {
            (Some(head), _) if head != d.label => continue,
            (Some(_), _) => "dump --all runs".to_string(),
            (None, true) => "the globals".to_string(),
            (None, false) => format!("database {}", d.database),
        };
        groups.entry(group).or_default().push(BackupFacts {
            pinned: pinned.contains(&d.label) || pinned_runs.contains(d.label.as_str()),
            label: d.label.clone(),
            stop_time: d.stop_time,
        });
    }
    let policy = ctx.config.retention.dumps.as_policy();
    let mut plans: Vec<DumpPlan> = groups
        .into_iter()
        .map(|(group, dumps)| DumpPlan {
            plan: retention::plan(&policy, &dumps, now),
            group,
            dumps,
        })
        .collect();
    // The databases' dumps of each run follow its head.
    if let Some(runs) = plans.iter_mut().find(|p| p.group == "dump --all runs") {
        for d in dumps
            .iter()
            .filter(|d| head_of(&heads, d).is_some_and(|h| h != d.label))
        {
            let head = head_of(&heads, d).expect("filtered");
            runs.dumps.push(BackupFacts {
                label: d.label.clone(),
                stop_time: d.stop_time,
                pinned: pinned.contains(&d.label),
            });
            if runs.plan.keep.contains_key(head) {
                runs.plan
                    .keep
                    .entry(d.label.clone())
                    .or_default()
                    .insert(Reason::PartOfRun);
            } else {
                runs.plan.expire.push(d.label.clone());
            }
        }
    }
    Ok(plans)
}

#[derive(Default)]
pub struct GcReport {
    pub packs_removed: usize,
    pub packs_rewritten: usize,
    pub bytes_freed: u64,
    pub temporaries_removed: usize,
    /// `.idx` files written again from the copy inside their pack.
    pub indexes_rewritten: usize,
}

/// WAL files no surviving backup needs (see `walneed`), oldest first. Survivors from
/// the plan's `wal_from` backup on serve point-in-time recovery; older ones keep only
/// their own WAL.
fn wal_to_remove(
    ctx: &Context,
    manifests: &[Manifest],
    plan: &Plan,
    seg: SegmentSize,
) -> Result<Vec<String>> {
    let Some(from) = plan
        .wal_from
        .as_ref()
        .and_then(|l| manifests.iter().find(|m| &m.label == l))
    else {
        return Ok(Vec::new());
    };
    // A timeline whose history cannot be read counts as one of unknown descent, whose WAL
    // is kept from the oldest point-in-time backup's start.
    let (paths, damaged) = timelines::readable_timeline_paths(&ctx.repo)?;
    for e in damaged {
        tracing::warn!("{e:#}; keeping that timeline's WAL; run `pgkeep verify`");
    }
    let needs: Vec<Need> = manifests
        .iter()
        .filter(|m| plan.keep.contains_key(&m.label))
        .map(|m| Need::of(&m.summary(), seg, m.stop_time >= from.stop_time))
        .collect();
    let mut remove: Vec<(u64, String)> = ctx
        .repo
        .wal_files()?
        .into_iter()
        .filter_map(|(name, file, _)| {
            let (tli, segno) = wal_position(&name, &file, seg)?;
            (!walneed::needed(&needs, &paths, seg, tli, segno)).then_some((segno, name))
        })
        .collect();
    remove.sort();
    Ok(remove.into_iter().map(|(_, n)| n).collect())
}

/// Applies the policy as of `now`; with `dry_run`, only reports.
pub fn expire(ctx: &Context, now: DateTime<Utc>, dry_run: bool) -> Result<ExpireReport> {
    let _expiring = ctx
        .repo
        .try_lock_expire()?
        .context("another `pgkeep expire` is running for this cluster; let it finish")?;
    // Taken before the manifests are read: a backup published between planning and
    // removal would be missing from the plan, and its WAL could go. A dry run lets go at
    // once: it only asks whether removal could run now.
    let collecting = ctx.repo.try_lock_data_exclusive()?;
    let deferred = collecting.is_none();
    let _collecting = collecting.filter(|_| !dry_run);
    let info = ctx.repo.require_info()?;
    let seg = SegmentSize(info.wal_segment_size);
    // A manifest that cannot be read might be one the policy keeps, or hold data others
    // share: expire touches nothing until every one is readable.
    let manifests = ctx
        .repo
        .manifests()
        .context("expire needs every backup's manifest to be readable; run `pgkeep verify`")?;
    let pinned = ctx.repo.pinned()?;
    let backups: Vec<BackupFacts> = manifests
        .iter()
        .map(|m| BackupFacts {
            label: m.label.clone(),
            stop_time: m.stop_time,
            pinned: pinned.contains(&m.label),
        })
        .collect();
    let plan = retention::plan(&ctx.config.retention, &backups, now);
    let dumps = plan_dumps(ctx, &pinned, now)?;
    let wal_removed = match deferred {
        false => wal_to_remove(ctx, &manifests, &plan, seg)?,
        true => Vec::new(),
    };
    let from = plan
        .wal_from
        .as_ref()
        .and_then(|l| manifests.iter().find(|m| &m.label == l));
    let mut report = ExpireReport {
        plan,
        backups,
        dumps,
        wal_removed,
        gc: None,
        gc_deferred: deferred,
    };
    if dry_run {
        return Ok(report);
    }
    for label in &report.plan.expire {
        ctx.repo.delete_manifest(label)?;
    }
    for label in report.dumps.iter().flat_map(|d| &d.plan.expire) {
        ctx.repo.delete_dump(label)?;
    }
    // A running backup has no manifest yet: the WAL it waits for, and the chunks it
    // refers to, are removed only while none runs (the lock taken above says so).
    if deferred {
        return Ok(report);
    }
    // Recorded first, so verify knows which backups lost their later WAL on purpose.
    // A repository with only the old segment floor gets its window now, so the floor
    // (one for every timeline) stops counting.
    let old_floor = matches!(ctx.repo.wal_floor(), Ok(Some(_)) | Err(_));
    if let Some(from) = from
        && (!report.wal_removed.is_empty() || old_floor)
    {
        // An intact record never moves back. A damaged one is written again from this
        // plan: it may start earlier than the lost one, which only keeps more WAL.
        let recorded = ctx.repo.wal_window().unwrap_or_else(|e| {
            tracing::warn!("{e:#}; writing it again");
            None
        });
        let window = recorded.into_iter().chain([from.stop_time]).max();
        ctx.repo.set_wal_window(window.expect("one at least"))?;
    }
    ctx.repo.delete_wal(&report.wal_removed)?;
    report.gc = Some(collect_garbage(ctx)?);
    Ok(report)
}

/// What collection does with a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    /// Nothing in it is live.
    Remove,
    /// Copying the live chunks into new packs takes less than half the space. A pack
    /// whose copy would be as large (all live, however small) is kept: rewriting it
    /// would free nothing, and could write the very same pack.
    Rewrite,
}

/// Adds `id` and the bases it is read through to `live`; whether anything was new.
fn keep_with_bases(index: &ChunkIndex, live: &mut HashSet<ChunkId>, mut id: ChunkId) -> bool {
    let mut grew = false;
    while live.insert(id) {
        grew = true;
        match index.chunks.get(&id).and_then(|loc| loc.delta) {
            Some(delta) => id = delta.base,
            None => break,
        }
    }
    grew
}

/// Copies of chunks no good copy stands in for, by pack: other copies (deltas whose base
/// cannot be read now) and recorded corrupt ones. Each may be all that is left of data
/// a backup refers to.
fn waiting_copies(index: &ChunkIndex) -> Vec<(u32, ChunkId)> {
    [&index.other_copies, &index.damaged]
        .into_iter()
        .flatten()
        .filter(|(id, _)| !index.chunks.contains_key(id))
        .flat_map(|(id, copies)| copies.iter().map(|loc| (loc.pack, *id)))
        .collect()
}

/// Decides each pack's fate. Every chunk of a kept pack stays in the index, so whatever
/// it is read through must stay too: decisions repeat until no base is added.
///
/// A chunk a backup refers to that has no good copy (its bases are in a pack whose index
/// is damaged, or every copy is recorded corrupt) may become readable once that is
/// mended: every pack holding a copy of one is kept. A pack holding other recorded
/// corrupt copies is rewritten without them.
fn decide_fates(
    index: &ChunkIndex,
    packs: &[Vec<(ChunkId, ChunkLocation)>],
    sizes: &BTreeMap<String, u64>,
    live: &mut HashSet<ChunkId>,
) -> Vec<Fate> {
    let waiting = waiting_copies(index);
    let damaged: HashSet<u32> = index
        .damaged
        .values()
        .flatten()
        .map(|loc| loc.pack)
        .collect();
    loop {
        let fates: Vec<Fate> = packs
            .iter()
            .enumerate()
            .map(|(pack, chunks)| {
                let (live_count, live_bytes) = chunks
                    .iter()
                    .filter(|(id, _)| live.contains(id))
                    .fold((0, 0), |(n, bytes), (_, l)| {
                        (n + 1, bytes + l.stored_len as u64)
                    });
                let pack = pack as u32;
                let holds_waiting = waiting
                    .iter()
                    .any(|(p, id)| *p == pack && live.contains(id));
                match sizes.get(index.pack_name(pack)) {
                    _ if holds_waiting => Fate::Keep,
                    _ if live_count == 0 => Fate::Remove,
                    None => Fate::Keep, // gone since the index was read: leave it to verify
                    Some(_) if damaged.contains(&pack) => Fate::Rewrite,
                    Some(&size) if pack_size(live_count, live_bytes) * 2 < size => Fate::Rewrite,
                    Some(_) => Fate::Keep,
                }
            })
            .collect();
        let mut grew = false;
        for (_, chunks) in packs
            .iter()
            .enumerate()
            .filter(|(p, _)| fates[*p] == Fate::Keep)
        {
            for (_, loc) in chunks {
                if let Some(delta) = loc.delta {
                    grew |= keep_with_bases(index, live, delta.base);
                }
            }
        }
        if !grew {
            return fates;
        }
    }
}

/// Copies the live chunks of pack `pack` into `writer`, each checked first.
fn copy_live(
    store: &ChunkStore,
    pack: u32,
    chunks: &[(ChunkId, ChunkLocation)],
    live: &HashSet<ChunkId>,
    writer: &mut PackWriter,
) -> Result<()> {
    for (id, loc) in chunks.iter().filter(|(id, _)| live.contains(id)) {
        store.copy_into(writer, id, loc).with_context(|| {
            format!(
                "cannot rewrite pack {}; run `pgkeep verify`",
                store.pack_key(pack)
            )
        })?;
    }
    Ok(())
}

/// Removes packs no manifest refers to, rewrites packs that are mostly unreferenced or
/// hold corrupt copies, writes missing `.idx` files again, and drops damage records of
/// packs that are gone. The caller holds the data lock exclusively.
fn collect_garbage(ctx: &Context) -> Result<GcReport> {
    let manifests = ctx.repo.manifests()?;
    let dumps = ctx.repo.dumps().context(
        "collection needs every logical backup's manifest to be readable; run `pgkeep verify`",
    )?;
    let store = ChunkStore::open(&ctx.repo)?;
    let index = &store.index;
    let mut report = GcReport {
        indexes_rewritten: store.write_missing_indexes()?.len(),
        ..GcReport::default()
    };
    let mut live: HashSet<ChunkId> = HashSet::new();
    let physical = manifests
        .iter()
        .flat_map(|m| m.files.iter().flat_map(|f| f.chunks.iter()));
    for id in physical.chain(dumps.iter().flat_map(|d| d.chunk_ids())) {
        keep_with_bases(index, &mut live, *id);
    }
    let sizes = store.pack_sizes()?;
    let packs = index.by_pack();
    let fates = decide_fates(index, &packs, &sizes, &mut live);
    let mut unreferenced = Vec::new();
    let mut rewritten = Vec::new();
    let mut writer = store.pack_writer();
    for (pack, chunks) in packs.iter().enumerate() {
        let name = index.pack_name(pack as u32);
        match fates[pack] {
            Fate::Keep => {}
            Fate::Remove => unreferenced.push(name),
            Fate::Rewrite => {
                copy_live(&store, pack as u32, chunks, &live, &mut writer)?;
                rewritten.push(name);
            }
        }
    }
    writer.flush()?; // the copies are durable before any original goes
    // A pack's name is its content hash: a copy with the same bytes as a pack on its way
    // out is that very pack, which must stay.
    for name in unreferenced.iter().chain(&rewritten) {
        if !writer.stored.iter().any(|s| s == name) {
            store.remove_pack(name)?;
            report.bytes_freed += sizes.get(*name).copied().unwrap_or(0);
        }
    }
    for name in index.damage_records.keys() {
        if !sizes.contains_key(name) {
            store.remove_damage_record(name)?;
        }
    }
    // Index files left by a pack that is gone: once every chunk they name that a backup
    // still needs has a copy elsewhere (or none is needed).
    for (name, ids) in &index.packs_missing {
        if !ids
            .iter()
            .any(|id| live.contains(id) && index.copies(id).next().is_none())
        {
            store.remove_orphan_index(name)?;
        }
    }
    report.bytes_freed = report.bytes_freed.saturating_sub(writer.stored_bytes);
    report.packs_removed = unreferenced.len();
    report.packs_rewritten = rewritten.len();
    report.temporaries_removed = ctx.repo.remove_interrupted_writes()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::object::Compression;

    /// An index of one pack per entry of `packs`, each holding chunks of the given
    /// stored lengths; chunk ids are their position overall.
    fn index_of(packs: &[&[u32]]) -> (ChunkIndex, BTreeMap<String, u64>, Vec<ChunkId>) {
        let mut index = ChunkIndex::default();
        let mut sizes = BTreeMap::new();
        let mut ids = Vec::new();
        for (pack, lens) in packs.iter().enumerate() {
            let name = format!("{pack:064x}");
            let mut offset = 0;
            for &len in *lens {
                let id = ChunkId::of(&(ids.len() as u64).to_le_bytes());
                let loc = ChunkLocation {
                    pack: pack as u32,
                    offset,
                    stored_len: len,
                    raw_len: 8192,
                    compression: Compression::Zstd,
                    delta: None,
                };
                index.chunks.insert(id, loc);
                ids.push(id);
                offset += len as u64;
            }
            sizes.insert(name.clone(), pack_size(lens.len(), offset));
            index.packs.push(name);
        }
        (index, sizes, ids)
    }

    #[test]
    fn fates_follow_the_space_a_rewrite_frees() {
        // Pack 0: one tiny chunk, live. Pack 1: a live and a large dead chunk. Pack 2:
        // nothing live. Pack 3: mostly live.
        let (mut index, sizes, ids) = index_of(&[&[40], &[100, 5000], &[300], &[4000, 1000]]);
        let mut live: HashSet<ChunkId> = [ids[0], ids[1], ids[4]].into_iter().collect();
        let fates = decide_fates(&index, &index.by_pack(), &sizes, &mut live);
        assert_eq!(
            fates,
            [Fate::Keep, Fate::Rewrite, Fate::Remove, Fate::Keep],
            "a pack whose copy would be no smaller is kept, however small"
        );
        // Pack 2 also holds a delta a backup refers to whose base cannot be read now.
        let waiting = ChunkId::of(b"a delta whose base is in a damaged pack");
        let mut loc = index.chunks[&ids[3]];
        loc.delta = Some(crate::repo::pack::Delta {
            base: ChunkId::of(b"gone"),
            depth: 1,
            method: crate::repo::pack::DeltaMethod::Xor,
        });
        index.other_copies.entry(waiting).or_default().push(loc);
        live.insert(waiting);
        let fates = decide_fates(&index, &index.by_pack(), &sizes, &mut live);
        assert_eq!(fates[2], Fate::Keep);
    }
}
