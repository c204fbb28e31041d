//! Feeding an archive's data files to pg_restore through named pipes, so that a restore
//! (from object storage too) needs no local copy of the dump: each data file is a FIFO
//! in the scratch archive directory, and when pg_restore opens one, a writer streams
//! the file's chunks into it.
//!
//! Invariants: a chunk is written only after it read back with its id and length
//! checked; a failure to read one kills the reader before its pipe closes (pg_restore
//! would take a short file for the whole table); a pipe pg_restore never opens (an
//! entry it skipped) costs nothing.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::DumpFile;

/// How often pipes nobody reads yet are tried again.
const POLL: Duration = Duration::from_millis(2);

/// Makes a FIFO at `path` for each file.
pub fn make_pipes(dir: &Path, files: &[&DumpFile]) -> Result<()> {
    for file in files {
        let path = dir.join(&file.name);
        let c_path = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: c_path is a valid NUL-terminated path.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
            bail!(
                "cannot make the pipe {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Opens `path` for writing if a reader has it open; `None` while nobody does.
fn open_if_read(path: &Path) -> Result<Option<File>> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated path; the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        bail!("cannot open the pipe {}: {e}", path.display());
    }
    // Writes block again from here on: pg_restore reads at its own pace.
    // SAFETY: fd is an open descriptor this function owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        Ok(Some(File::from_raw_fd(fd)))
    }
}

/// Serves the pipes for `files` in `dir` until every one was served or `finished` is
/// raised (pg_restore has exited). Returns the first failure to read a chunk; the
/// caller watches `failed` to stop pg_restore at once.
pub fn serve(
    store: &ChunkStore,
    dir: &Path,
    files: &[&DumpFile],
    finished: &AtomicBool,
    failed: &AtomicBool,
    kill: &(dyn Fn() + Sync),
) -> Result<()> {
    let mut pending: Vec<(PathBuf, &DumpFile)> =
        files.iter().map(|f| (dir.join(&f.name), *f)).collect();
    let first_error = Mutex::new(None);
    let fail = |e: anyhow::Error| {
        first_error.lock().unwrap().get_or_insert(e);
        failed.store(true, Ordering::Relaxed);
    };
    std::thread::scope(|scope| {
        while !pending.is_empty() && !finished.load(Ordering::Relaxed) {
            let mut still = Vec::with_capacity(pending.len());
            for (path, file) in pending.drain(..) {
                match open_if_read(&path) {
                    Ok(Some(pipe)) => {
                        let fail = &fail;
                        scope.spawn(move || {
                            if let Err(e) = write_file(store, file, &pipe, failed) {
                                // Killed while the pipe is still open: the reader never
                                // sees this file end early.
                                kill();
                                fail(e);
                            }
                            drop(pipe);
                        });
                    }
                    Ok(None) => still.push((path, file)),
                    Err(e) => {
                        kill();
                        fail(e);
                    }
                }
            }
            pending = still;
            if failed.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(POLL);
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Streams one file's chunks into its pipe. A reader that goes away (pg_restore
/// stopped, or skipped the rest) ends it quietly: pg_restore's exit status says why.
fn write_file(
    store: &ChunkStore,
    file: &DumpFile,
    mut pipe: &File,
    failed: &AtomicBool,
) -> Result<()> {
    for (id, len) in &file.chunks {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let data = store
            .read_exact(id, *len)
            .map_err(|e| anyhow!("cannot read file {} of the dump: {e:#}", file.name))?;
        match pipe.write_all(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => bail!("cannot feed {} to pg_restore: {e}", file.name),
        }
    }
    Ok(())
}
