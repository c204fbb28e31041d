//! `backup`: an online physical backup read straight from the data directory.
//!
//! Pipeline: N workers read files (up to their size at listing time), validate page
//! checksums, cut them into chunks, hash and compress the chunks not yet in the
//! repository, and hand them to one pack writer. The manifest is published last, and
//! only once every WAL segment from the backup's start to its stop is archived.

use std::collections::HashSet;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use indicatif::ProgressBar;

use super::Context;
use super::check::wait_for_wal;
use super::walk::{self, SourceFile};
use crate::format::lsn::Lsn;
use crate::format::page::{self, BLOCKS_PER_SEGMENT, PAGE_SIZE};
use crate::format::{label, wal::SegmentSize};
use crate::repo::manifest::{
    DirectoryEntry, FileEntry, MANIFEST_VERSION, Manifest, TablespaceEntry,
};
use crate::repo::object::{self, Compression};
use crate::repo::pack::{ChunkId, ChunkIndex, PackWriter};

/// Files are cut into chunks of this size: small enough that an incremental backup
/// stores little for a scattered change, large enough to compress well.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Packs are stored once they reach this size.
const PACK_SIZE: usize = 32 * 1024 * 1024;

/// A compressed chunk on its way to the pack writer.
struct Blob {
    id: ChunkId,
    raw_len: usize,
    compression: Compression,
    payload: Vec<u8>,
}

/// Where workers put chunks: skips chunks the repository (or this backup) already has.
struct ChunkSink {
    known: Mutex<HashSet<ChunkId>>,
    tx: Sender<Blob>,
    level: i32,
}

impl ChunkSink {
    fn store(&self, data: &[u8]) -> Result<ChunkId> {
        let id = ChunkId::of(data);
        if self.known.lock().unwrap().insert(id) {
            let (compression, payload) = object::compress(data, self.level)?;
            self.tx
                .send(Blob {
                    id,
                    raw_len: data.len(),
                    compression,
                    payload,
                })
                .map_err(|_| anyhow!("the pack writer stopped"))?;
        }
        Ok(id)
    }

    /// Stores an in-memory file (`backup_label`, `pg_control`) as a manifest entry.
    fn store_file(&self, path: &str, data: &[u8], mode: u32, mtime: i64) -> Result<FileEntry> {
        let chunks = data
            .chunks(CHUNK_SIZE)
            .map(|c| self.store(c))
            .collect::<Result<_>>()?;
        Ok(FileEntry {
            path: path.into(),
            size: data.len() as u64,
            mode,
            mtime,
            chunks,
            bad_blocks: Vec::new(),
        })
    }
}

/// Reads as much of `buf` as the file has.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Page checks for one chunk of a relation file. A page that fails is read again: it
/// counts as bad only if it still fails and was not changed since the backup started
/// (a page being written may be torn, and WAL replay repairs it).
fn bad_pages(
    file: &File,
    data: &[u8],
    file_offset: u64,
    segment: u32,
    start_lsn: Lsn,
) -> Result<Vec<u32>> {
    let mut bad = Vec::new();
    for (i, page_bytes) in data.chunks_exact(PAGE_SIZE).enumerate() {
        let in_file = file_offset + (i * PAGE_SIZE) as u64;
        let blkno = segment * BLOCKS_PER_SEGMENT + (in_file / PAGE_SIZE as u64) as u32;
        if page::verify(page_bytes, blkno) || page::page_lsn(page_bytes) >= start_lsn {
            continue;
        }
        let mut again = vec![0u8; PAGE_SIZE];
        file.read_exact_at(&mut again, in_file)?;
        if again == page_bytes
            || !(page::verify(&again, blkno) || page::page_lsn(&again) >= start_lsn)
        {
            bad.push(blkno);
        }
    }
    Ok(bad)
}

/// Backs up one file; `None` if it vanished (dropped relation) before it was opened.
fn backup_file(
    src: &SourceFile,
    sink: &ChunkSink,
    checksums_from: Option<Lsn>,
    progress: &ProgressBar,
) -> Result<Option<FileEntry>> {
    let mut file = match File::open(&src.abs) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", src.abs.display())),
    };
    let mut buf = vec![0u8; CHUNK_SIZE];
    let (mut offset, mut chunks, mut bad_blocks) = (0u64, Vec::new(), Vec::new());
    while offset < src.size {
        let want = CHUNK_SIZE.min((src.size - offset) as usize);
        let n = read_full(&mut file, &mut buf[..want])
            .with_context(|| format!("cannot read {}", src.abs.display()))?;
        if n == 0 {
            break; // truncated while we read: WAL replay restores it
        }
        let data = &buf[..n];
        if let (Some(segment), Some(start_lsn)) = (src.relation_segment, checksums_from) {
            bad_blocks.extend(bad_pages(&file, data, offset, segment, start_lsn)?);
        }
        chunks.push(sink.store(data)?);
        offset += n as u64;
        progress.inc(n as u64);
        if n < want {
            break;
        }
    }
    Ok(Some(FileEntry {
        path: src.rel.clone(),
        size: offset,
        mode: src.mode,
        mtime: src.mtime,
        chunks,
        bad_blocks,
    }))
}

fn epoch_to_time(secs: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros((secs * 1e6) as i64).unwrap_or_default()
}

/// A label that sorts by time and is unique in the repository.
fn new_label(ctx: &Context) -> Result<String> {
    let base = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let existing: HashSet<String> = ctx.repo.backup_labels()?.into_iter().collect();
    let mut label = base.clone();
    let mut n = 1;
    while existing.contains(&label) {
        label = format!("{base}-{n}");
        n += 1;
    }
    Ok(label)
}

/// Runs the workers over `files`, then returns their entries.
fn run_workers(
    files: Vec<SourceFile>,
    jobs: usize,
    sink: &ChunkSink,
    checksums_from: Option<Lsn>,
    progress: &ProgressBar,
) -> Result<Vec<FileEntry>> {
    let (work_tx, work_rx): (Sender<SourceFile>, Receiver<SourceFile>) = unbounded();
    for f in files {
        work_tx.send(f).unwrap();
    }
    drop(work_tx);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                let rx = work_rx.clone();
                scope.spawn(move || -> Result<Vec<FileEntry>> {
                    let mut done = Vec::new();
                    for src in rx {
                        done.extend(backup_file(&src, sink, checksums_from, progress)?);
                    }
                    Ok(done)
                })
            })
            .collect();
        let mut entries = Vec::new();
        for h in handles {
            entries.extend(
                h.join()
                    .map_err(|_| anyhow!("a backup worker panicked"))??,
            );
        }
        Ok(entries)
    })
}

/// Takes a backup and returns its published manifest.
pub fn backup(ctx: &Context, progress: &ProgressBar) -> Result<Manifest> {
    let started = Instant::now();
    let info = ctx.repo.require_info()?;
    let mut session = ctx.connect()?;
    let sysid = session.system_identifier()?;
    if sysid != info.system_identifier {
        bail!(
            "the server is database system {sysid} but repository cluster '{}' is {}; check `connection`",
            ctx.cluster_name,
            info.system_identifier
        );
    }
    if session.in_recovery()? {
        bail!(
            "the server is a standby; pgkeep backs up primaries only for now, so point `connection` at the primary"
        );
    }
    let data_checksums = session.setting("data_checksums")? == "on";
    let tablespaces: Vec<TablespaceEntry> = session
        .tablespaces()?
        .into_iter()
        .map(|t| TablespaceEntry {
            oid: t.oid,
            name: t.name,
            location: t.location,
        })
        .collect();

    let index = ChunkIndex::load(&*ctx.repo.storage, &ctx.repo.packs_prefix())?;
    let label = new_label(ctx)?;
    let start_time = epoch_to_time(session.now()?);
    let start_lsn = session.backup_start(&label)?;
    tracing::info!("backup {label} started at {start_lsn}");

    let listing = walk::walk(&ctx.cluster.pgdata)?;
    let (mut files, pg_control): (Vec<_>, Vec<_>) = listing
        .files
        .into_iter()
        .partition(|f| f.rel != "global/pg_control");
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    progress.set_length(files.iter().map(|f| f.size).sum());

    let (blob_tx, blob_rx) = bounded::<Blob>(64);
    let sink = ChunkSink {
        known: Mutex::new(index.chunks.keys().copied().collect()),
        tx: blob_tx,
        level: ctx.config.repository.compress_level,
    };
    drop(index);
    let mut writer = PackWriter::new(ctx.repo.storage.clone(), ctx.repo.packs_prefix(), PACK_SIZE);
    let writer_thread = std::thread::spawn(move || -> Result<PackWriter> {
        for blob in blob_rx {
            writer.add(blob.id, blob.raw_len, blob.compression, &blob.payload)?;
        }
        writer.flush()?;
        Ok(writer)
    });

    let checksums_from = data_checksums.then_some(start_lsn);
    let result = (|| -> Result<(Vec<FileEntry>, crate::pg::session::BackupStop, String, f64)> {
        let mut entries = run_workers(files, ctx.config.jobs(), &sink, checksums_from, progress)?;
        // pg_control last, as pg_basebackup does.
        for src in &pg_control {
            entries.extend(backup_file(src, &sink, None, progress)?);
        }
        let stop = session.backup_stop()?;
        let snapshot = session.snapshot()?;
        let stop_time = session.now()?;
        entries.push(sink.store_file(
            "backup_label",
            stop.label_file.as_bytes(),
            0o600,
            stop_time as i64,
        )?);
        if let Some(map) = &stop.tablespace_map {
            entries.push(sink.store_file(
                "tablespace_map",
                map.as_bytes(),
                0o600,
                stop_time as i64,
            )?);
        }
        Ok((entries, stop, snapshot, stop_time))
    })();
    drop(sink);
    let writer = writer_thread
        .join()
        .map_err(|_| anyhow!("the pack writer panicked"))?;
    // A writer failure explains a worker's "pack writer stopped", so report it first.
    let writer = writer?;
    let (mut entries, stop, snapshot, stop_time) = result?;
    progress.finish_and_clear();

    let parsed = label::parse(&stop.label_file)
        .map_err(|e| anyhow!("pg_backup_stop returned a bad label: {e}"))?;
    let seg = SegmentSize(info.wal_segment_size);
    let timeout = Duration::from_secs(ctx.config.backup.archive_timeout);
    for segno in seg.segno(parsed.start_lsn)..=seg.segno_before(stop.stop_lsn) {
        let name = seg.name(parsed.start_timeline, segno);
        if !wait_for_wal(ctx, &name, timeout)? {
            bail!(
                "WAL segment {name}, needed to restore backup {label}, did not reach the archive within {} s; \
                 the backup was not published: run `pgkeep check` and look at the PostgreSQL log for archive_command errors",
                timeout.as_secs()
            );
        }
    }

    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        label,
        system_identifier: sysid,
        pg_version: session.version_num,
        timeline: parsed.start_timeline,
        start_lsn: parsed.start_lsn,
        checkpoint_lsn: parsed.checkpoint_lsn,
        stop_lsn: stop.stop_lsn,
        start_time,
        stop_time: epoch_to_time(stop_time),
        wal_segment_size: info.wal_segment_size,
        chunk_size: CHUNK_SIZE as u64,
        snapshot_at_stop: snapshot,
        data_checksums,
        size: entries.iter().map(|f| f.size).sum(),
        stored_size: writer.stored_bytes,
        tablespaces,
        directories: listing
            .dirs
            .into_iter()
            .map(|d| DirectoryEntry {
                path: d.rel,
                mode: d.mode,
            })
            .collect(),
        files: entries,
    };
    ctx.repo.publish_manifest(&manifest)?;
    tracing::info!(
        "backup {} published after {:.1} s",
        manifest.label,
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}
