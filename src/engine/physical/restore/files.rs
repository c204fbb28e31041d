//! Writing restored files and making them durable: writeback started as each file is
//! written, then one `syncfs` per file system (or an fsync per file where `syncfs`
//! cannot report errors).

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use indicatif::ProgressBar;

use super::Plan;
use crate::engine::{Context, parallel_map, stopped};
use crate::repo::chunk_store::ChunkStore;
use crate::repo::manifest::FileEntry;

/// How much of a file is written before its writeback is started.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Starts writing back `len` bytes from `offset` (0: to the end) without waiting, as
/// PostgreSQL's `pg_flush_data` does: the disk works while the next chunks decode, and
/// the sync at the end has little left to wait for.
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

/// Writes one file from its chunks (all-zero chunks become holes), its writeback started
/// but not waited for unless `fsync` (where a later syncfs would not report errors).
pub(super) fn restore_file(
    chunks: &ChunkStore,
    entry: &FileEntry,
    dest: &Path,
    fsync: bool,
    progress: &ProgressBar,
    stop: &AtomicBool,
) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let (mut written, mut flushed_to) = (0, 0);
    for id in &entry.chunks {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let data = chunks
            .read(id)
            .with_context(|| format!("cannot restore {}", entry.path))?;
        if data.iter().all(|&b| b == 0) {
            file.seek(SeekFrom::Current(data.len() as i64))?;
        } else {
            file.write_all(&data)
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
        written += data.len() as u64;
        if written - flushed_to >= WRITEBACK_EVERY {
            start_writeback(&file, flushed_to, written - flushed_to);
            flushed_to = written;
        }
        progress.inc(data.len() as u64);
    }
    start_writeback(&file, flushed_to, 0);
    file.set_len(entry.size)?;
    file.set_permissions(fs::Permissions::from_mode(entry.mode))?;
    file.set_modified(UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64))?;
    if fsync {
        file.sync_all()
            .with_context(|| format!("cannot fsync {}", dest.display()))?;
    }
    Ok(())
}

/// Writes the files in parallel, largest first; [`Filesystems::sync`] makes them
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
    parallel_map(files, ctx.config.jobs(), |entry, stop| {
        let dest = plan.pgdata.join(entry.fs_path());
        restore_file(&plan.chunks, entry, &dest, fsync, progress, stop)
    })?;
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
