//! The files another program finishes in a directory, as it finishes them: Linux's
//! inotify `IN_CLOSE_WRITE`, so a dump's files are stored while pg_dump still writes
//! the others.
//!
//! A close says only that one writer let go of the file; the caller checks every file
//! again once the program has exited (see `store::store_while_dumping`).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

/// The `struct inotify_event` header: wd, mask, cookie, len (4 bytes each).
const EVENT_HEADER: usize = 16;

pub struct ClosedFiles {
    inotify: File,
}

impl ClosedFiles {
    /// Starts watching `dir` for files closed after writing.
    pub fn watch(dir: &Path) -> Result<ClosedFiles> {
        // SAFETY: plain system calls; the descriptor is owned by the File below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            bail!(
                "cannot watch {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let inotify = unsafe { File::from_raw_fd(fd) };
        let c_dir = CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: c_dir is a valid NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd, c_dir.as_ptr(), libc::IN_CLOSE_WRITE) } < 0 {
            bail!(
                "cannot watch {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(ClosedFiles { inotify })
    }

    /// Names of the files closed after writing since the last call, waiting up to
    /// `timeout` for the first.
    pub fn next(&mut self, timeout: Duration) -> Result<Vec<String>> {
        let mut poll = libc::pollfd {
            fd: self.inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
        let mut names = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.inotify.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(names),
                Err(e) => bail!("cannot read file events: {e}"),
            };
            names.extend(parse_events(&buf[..n]));
        }
    }
}

/// The names in a buffer of inotify events (each a header, then `len` bytes of name,
/// NUL-padded).
fn parse_events(mut buf: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while buf.len() >= EVENT_HEADER {
        let len = u32::from_ne_bytes(buf[12..16].try_into().expect("4 bytes")) as usize;
        let Some(name) = buf.get(EVENT_HEADER..EVENT_HEADER + len) else {
            break;
        };
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if !name.is_empty() {
            names.push(String::from_utf8_lossy(name).into_owned());
        }
        buf = &buf[EVENT_HEADER + len..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_file_is_reported_once_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut closed = ClosedFiles::watch(dir.path()).unwrap();
        assert!(closed.next(Duration::ZERO).unwrap().is_empty());
        std::fs::write(dir.path().join("3042.dat"), b"rows").unwrap();
        std::fs::write(dir.path().join("toc.dat"), b"toc").unwrap();
        let mut names = closed.next(Duration::from_secs(5)).unwrap();
        names.sort();
        assert_eq!(names, ["3042.dat", "toc.dat"]);
        assert!(closed.next(Duration::ZERO).unwrap().is_empty());
    }
}
