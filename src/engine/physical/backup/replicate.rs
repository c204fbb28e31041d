//! Copying a published backup into another repository of the config, so that a backup
//! reads the data directory once and every repository receives it.
//!
//! Invariants: the copy is published in the other repository only once every chunk it
//! refers to is stored there and every WAL segment from its start to its stop is
//! archived there (copied from the first repository if that one lacks it). Its manifest
//! is the original's with each chunk id as the other repository names it (ids differ
//! when either is encrypted) and `parent` naming a backup of the other repository.
//! Chunks the other repository holds already are not read: by id when both name chunks
//! alike, else by position, through the copy of the parent backup it holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, Result, bail};

use crate::engine::wal::archive;
use crate::engine::{Context, parallel_map, stopped};
use crate::format::wal::{SegmentSize, WalFile};
use crate::repo::chunk_store::{ChunkStore, ChunkWriter};
use crate::repo::manifest::{FileEntry, Manifest};
use crate::repo::pack::ChunkId;

/// What [`replicate`] did.
pub struct Replicated {
    pub manifest: Manifest,
    /// Bytes of chunks read from the first repository.
    pub read: u64,
    /// WAL files copied because the other repository lacked them.
    pub wal_copied: usize,
}

/// The chunks of each file of a backup, by path.
type Files<'m> = HashMap<&'m str, &'m [ChunkId]>;

fn files_of(m: &Manifest) -> Files<'_> {
    m.files
        .iter()
        .map(|f| (f.path.as_str(), &f.chunks[..]))
        .collect()
}

/// How one chunk of the backup is named in the other repository without reading it.
struct Known<'m> {
    same_ids: bool,
    /// The parent's files in the first repository and in the other one.
    parent: Option<(Files<'m>, Files<'m>)>,
}

impl Known<'_> {
    /// The other repository's id of chunk `index` of file `path`, `id` in the first,
    /// if that is known; and the other repository's chunk at the same place of the
    /// parent (a delta base).
    fn lookup(
        &self,
        writer: &ChunkWriter,
        path: &str,
        index: usize,
        id: &ChunkId,
    ) -> (Option<ChunkId>, Option<ChunkId>) {
        if self.same_ids && writer.has(id) {
            return (Some(*id), None);
        }
        let Some((from, to)) = &self.parent else {
            return (None, None);
        };
        let base = to.get(path).and_then(|c| c.get(index)).copied();
        let unchanged = from.get(path).and_then(|c| c.get(index)) == Some(id);
        (base.filter(|b| unchanged && writer.has(b)), base)
    }
}

/// Copies backup `manifest` of `from` into `to`'s repository and publishes it there.
pub fn replicate(from: &Context, manifest: &Manifest, to: &Context) -> Result<Replicated> {
    let info = to.repo.require_info()?;
    if info.system_identifier != manifest.system_identifier {
        bail!(
            "repository {} holds cluster '{}' of database system {}, not {}; give each system its own cluster name",
            to.repo_number,
            to.cluster_name,
            info.system_identifier,
            manifest.system_identifier
        );
    }
    let _backing_up = to.repo.try_lock_backup()?.with_context(|| {
        format!(
            "another `pgkeep backup` of cluster '{}' is writing to repository {}; wait for it to finish",
            to.cluster_name, to.repo_number
        )
    })?;
    let _data_lock = to.repo.lock_data_shared()?;
    let source = ChunkStore::open(&from.repo)?;
    let target = ChunkStore::open(&to.repo)?;
    target.write_missing_indexes()?;

    let from_parent = match &manifest.parent {
        Some(label) => Some(from.repo.load_manifest(label)?),
        None => None,
    };
    let to_parent = match &manifest.parent {
        Some(label) => to
            .repo
            .readable_manifests(Some(label))?
            .into_iter()
            .find(|m| &m.label == label),
        None => None,
    };
    let known = Known {
        same_ids: source.index.hasher == target.index.hasher,
        parent: from_parent
            .as_ref()
            .zip(to_parent.as_ref())
            .map(|(f, t)| (files_of(f), files_of(t))),
    };

    let read = AtomicU64::new(0);
    let writer = target.writer(to.repo_config.compress_level, false);
    let copied = parallel_map(
        manifest.files.iter().collect(),
        from.config.jobs(),
        |file, stop| copy_file(file, &source, &writer, &known, &read, stop),
    );
    let written = writer.finish()?;
    let mut files = copied?;
    files.sort_by(|a, b| a.key().cmp(&b.key()));
    let wal_copied = copy_missing_wal(from, manifest, to)?;

    let mut copy = manifest.clone();
    copy.files = files;
    copy.parent = to_parent.map(|p| p.label);
    copy.stored_size = written.stored_bytes;
    copy.version = copy.needed_version();
    to.repo.publish_manifest(&copy)?;
    tracing::info!(
        "backup {} published in repository {}",
        copy.label,
        to.repo_number
    );
    Ok(Replicated {
        manifest: copy,
        read: read.into_inner(),
        wal_copied,
    })
}

/// `file` with its chunks as the other repository names them, storing those it lacks.
fn copy_file(
    file: &FileEntry,
    source: &ChunkStore,
    writer: &ChunkWriter,
    known: &Known,
    read: &AtomicU64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<FileEntry> {
    let mut chunks = Vec::with_capacity(file.chunks.len());
    for (i, id) in file.chunks.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let (there, base) = known.lookup(writer, &file.path, i, id);
        let id = match there {
            Some(id) => id,
            None => {
                let data = source.read(id)?;
                read.fetch_add(data.len() as u64, Ordering::Relaxed);
                writer.store(&data, base)?.0
            }
        };
        chunks.push(id);
    }
    Ok(FileEntry {
        chunks,
        ..file.clone()
    })
}

/// Archives in `to` the WAL that backup `manifest` needs and `to` lacks (it was
/// unreachable when PostgreSQL archived it), from `from`, which has it: the segments
/// from the backup's start to its stop, and its timeline's history file.
fn copy_missing_wal(from: &Context, manifest: &Manifest, to: &Context) -> Result<usize> {
    let seg = SegmentSize(manifest.wal_segment_size);
    let mut names: Vec<String> = (seg.segno(manifest.start_lsn)
        ..=seg.segno_before(manifest.stop_lsn))
        .map(|segno| seg.name(manifest.timeline, segno))
        .collect();
    if manifest.timeline > 1 {
        names.push(WalFile::history_name(manifest.timeline));
    }
    let mut copied = 0;
    for name in names {
        if to.repo.has_wal(&name)? {
            continue;
        }
        let data = from.repo.get_wal(&name)?.with_context(|| {
            format!(
                "WAL file {name}, which backup {} needs, is in neither repository",
                manifest.label
            )
        })?;
        let file = WalFile::parse(&name).expect("a name made as a WAL file name");
        archive::store(to, &name, &file, &data)?;
        copied += 1;
    }
    Ok(copied)
}
