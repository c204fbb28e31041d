//! Writing restored files and making them durable: writeback started as each file is
//! written, then one `syncfs` per file system (or an fsync per file where `syncfs`
//! cannot report errors).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use indicatif::ProgressBar;

use super::Plan;
use crate::engine::{Context, parallel_map, stopped};
use crate::repo::chunk_store::ChunkStore;
use crate::repo::manifest::FileEntry;

/// Chunks per piece, the unit restored in parallel (8 MiB of 256 KiB chunks): a large
/// file is fetched over many connections at once, and each piece's writeback is started
/// as soon as it is written.
const PIECE_CHUNKS: usize = 32;

/// Starts writing back `len` bytes from `offset` without waiting, as PostgreSQL's
/// `pg_flush_data` does: the disk works while the next chunks decode, and the sync at
/// the end has little left to wait for.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a descriptor we own; only a hint, so errors are ignored
    // (the final sync reports any).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A run of a file's chunks, from chunk `first` on.
struct Piece<'a> {
    entry: &'a FileEntry,
    dest: PathBuf,
    first: usize,
    count: usize,
}

/// Creates `dest` at its full size, sparse: chunks are written at their offsets, and
/// all-zero chunks stay holes.
fn create_file(entry: &FileEntry, dest: &Path) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .and_then(|f| f.set_len(entry.size))
        .with_context(|| format!("cannot create {}", dest.display()))
}

/// Writes one piece of a created file (chunks of `chunk_size` bytes).
fn write_piece(
    chunks: &ChunkStore,
    piece: &Piece,
    chunk_size: u64,
    progress: &ProgressBar,
    stop: &AtomicBool,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let dest = &piece.dest;
    let file = OpenOptions::new()
        .write(true)
        .open(dest)
        .with_context(|| format!("cannot open {}", dest.display()))?;
    let start = piece.first as u64 * chunk_size;
    let mut offset = start;
    for id in &piece.entry.chunks[piece.first..piece.first + piece.count] {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let data = chunks
            .read(id)
            .with_context(|| format!("cannot restore {}", piece.entry.path))?;
        let expected = chunk_size.min(piece.entry.size.saturating_sub(offset));
        if data.len() as u64 != expected {
            bail!(
                "chunk {id} of {} holds {} bytes where the manifest has {expected}; the backup's manifest is damaged",
                piece.entry.path,
                data.len()
            );
        }
        if data.iter().any(|&b| b != 0) {
            file.write_all_at(&data, offset)
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
        offset += data.len() as u64;
        progress.inc(data.len() as u64);
    }
    start_writeback(&file, start, offset - start);
    Ok(())
}

/// Gives a written file its size, mode and time, and fsyncs it if `fsync` (where a
/// later syncfs would not report errors).
fn finish_file(entry: &FileEntry, dest: &Path, fsync: bool) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(dest)
        .with_context(|| format!("cannot open {}", dest.display()))?;
    file.set_len(entry.size)?;
    file.set_permissions(fs::Permissions::from_mode(entry.mode))?;
    file.set_modified(UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64))?;
    if fsync {
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", dest.display()))?;
    }
    Ok(())
}

/// Restores one file from its chunks into `dest`.
pub(super) fn restore_file(
    chunks: &ChunkStore,
    entry: &FileEntry,
    dest: &Path,
    chunk_size: u64,
    fsync: bool,
    progress: &ProgressBar,
) -> Result<()> {
    create_file(entry, dest)?;
    let whole = Piece {
        entry,
        dest: dest.to_path_buf(),
        first: 0,
        count: entry.chunks.len(),
    };
    write_piece(
        chunks,
        &whole,
        chunk_size,
        progress,
        &AtomicBool::new(false),
    )?;
    finish_file(entry, dest, fsync)
}

/// Writes the files, pieces of them in parallel (largest files first; on object
/// storage as many at once as its round trips want); [`Filesystems::sync`] makes them
/// durable, or an fsync of each where that would not report errors.
pub(super) fn write_files(
    ctx: &Context,
    plan: &Plan,
    files: &[&FileEntry],
    fsync: bool,
    progress: &ProgressBar,
) -> Result<()> {
    let mut files = files.to_vec();
    files.sort_by_key(|f| std::cmp::Reverse(f.size));
    let dest = |entry: &FileEntry| plan.pgdata.join(entry.fs_path());
    let mut pieces = Vec::new();
    for &entry in &files {
        create_file(entry, &dest(entry))?;
        for first in (0..entry.chunks.len()).step_by(PIECE_CHUNKS) {
            pieces.push(Piece {
                entry,
                dest: dest(entry),
                first,
                count: PIECE_CHUNKS.min(entry.chunks.len() - first),
            });
        }
    }
    let chunk_size = plan.manifest.chunk_size;
    let jobs = ctx.config.jobs().max(plan.chunks.parallel_reads());
    parallel_map(pieces, jobs, |piece, stop| {
        write_piece(&plan.chunks, &piece, chunk_size, progress, stop)
    })?;
    parallel_map(files, ctx.config.jobs(), |entry, _| {
        finish_file(entry, &dest(entry), fsync)
    })?;
    Ok(())
}

/// Creates files that are restored empty (at their size, sparse), with their mode and
/// time.
pub(super) fn write_hollow(plan: &Plan, files: &[&FileEntry], fsync: bool) -> Result<()> {
    for &entry in files {
        let dest = plan.pgdata.join(entry.fs_path());
        create_file(entry, &dest)?;
        finish_file(entry, &dest, fsync)?;
    }
    Ok(())
}

/// Whether `syncfs(2)` reports writeback errors: since Linux 5.8. Before, it could miss
/// an error an fsync per file would catch.
pub(super) fn syncfs_reports_errors() -> bool {
    // SAFETY: uname fills the struct we own.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return false;
    }
    // SAFETY: release is NUL-terminated.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }.to_string_lossy();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (5, 8)
}

/// The filesystems a restore writes to, each held open from before the first write.
///
/// One `syncfs(2)` per filesystem makes every restored file durable: an fsync per file
/// costs a device cache flush each (a thousand files took a second on a small cluster).
/// An fd open since before the writes reports any writeback error since (Linux 5.8+),
/// as PostgreSQL's `recovery_init_sync_method = syncfs` relies on.
pub(super) struct Filesystems(Vec<(PathBuf, File)>);

impl Filesystems {
    pub(super) fn of(dirs: &[PathBuf]) -> Result<Filesystems> {
        use std::os::unix::fs::MetadataExt;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for dir in dirs {
            let file = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
            if seen.insert(file.metadata()?.dev()) {
                out.push((dir.clone(), file));
            }
        }
        Ok(Filesystems(out))
    }

    pub(super) fn sync(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        for (dir, file) in &self.0 {
            // SAFETY: syncfs on a descriptor we own.
            if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!("cannot make the files under {} durable", dir.display())
                });
            }
        }
        Ok(())
    }
}

pub(super) fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync {}", path.display()))
}
