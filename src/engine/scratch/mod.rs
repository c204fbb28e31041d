//! What pgkeep starts and must leave nothing of: scratch directories and PostgreSQL's
//! programs run as children.
//!
//! Invariants:
//! - A child leads its own process group (so its workers stop with it), is stopped by
//!   the kernel if pgkeep dies (`PR_SET_PDEATHSIG`), and is stopped first if pgkeep is
//!   interrupted (SIGINT, SIGTERM, SIGHUP), before its pipes close: pg_restore takes the
//!   end of a pipe for the end of a table's data and commits what it has, and an
//!   orphaned pg_dump holds its snapshot. A client program's group is killed; a
//!   PostgreSQL server, whose processes each lead a session of their own, gets SIGQUIT
//!   (immediate shutdown: it stops every one of them) and is waited for.
//! - A scratch directory is removed when dropped, by the signal handler when pgkeep is
//!   interrupted (after the children have stopped; it is renamed first, so a thread
//!   still writing finds nothing to write into), and, if pgkeep was killed outright, by
//!   the next pgkeep that makes one in the same place.

pub mod server;

use std::ffi::{CString, c_char};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

use anyhow::{Context as _, Result, bail};

/// At most this many children and scratch directories at once (a `dump-restore --all`
/// lays out every database's dump before it starts).
const SLOTS: usize = 1024;

/// Process groups of running children (0: free slot); a server's is negated.
static GROUPS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
/// Paths of scratch directories (null: free slot), and the name each is renamed to
/// before it is removed. The strings are leaked on purpose: the signal handler may read
/// them at any moment.
static DIRECTORIES: [AtomicPtr<c_char>; SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
static DOOMED: [AtomicPtr<c_char>; SLOTS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];

/// How a child is stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Kill its process group (client programs).
    Kill,
    /// SIGQUIT to it, then wait (a PostgreSQL server: immediate shutdown).
    Quit,
}

extern "C" fn on_signal(signal: libc::c_int) {
    // SAFETY: kill, waitpid, rename, the raw clone syscall, execv, _exit, signal and
    // raise are async-signal-safe (the raw syscall skips glibc's fork handlers, which
    // take locks), and the argument strings are static or leaked.
    unsafe {
        for group in &GROUPS {
            match group.load(Ordering::SeqCst) {
                0 => {}
                server if server < 0 => {
                    libc::kill(-server, libc::SIGQUIT);
                    libc::waitpid(-server, std::ptr::null_mut(), 0);
                }
                group => {
                    libc::kill(-group, libc::SIGKILL);
                }
            }
        }
        for (dir, doomed) in DIRECTORIES.iter().zip(&DOOMED) {
            let (dir, doomed) = (dir.load(Ordering::SeqCst), doomed.load(Ordering::SeqCst));
            if dir.is_null() || doomed.is_null() || libc::rename(dir, doomed) != 0 {
                continue;
            }
            let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0);
            if pid == 0 {
                let argv = [
                    c"rm".as_ptr(),
                    c"-rf".as_ptr(),
                    c"--".as_ptr(),
                    doomed,
                    std::ptr::null(),
                ];
                libc::execv(c"/bin/rm".as_ptr(), argv.as_ptr());
                libc::_exit(127);
            } else if pid > 0 {
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

fn install_handlers() {
    static HANDLERS: Once = Once::new();
    HANDLERS.call_once(|| {
        // SAFETY: installs a handler that only makes async-signal-safe calls, except
        // where the signal is ignored (`nohup`), which stays so.
        unsafe {
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                let previous = libc::signal(signal, on_signal as *const () as libc::sighandler_t);
                if previous == libc::SIG_IGN {
                    libc::signal(signal, libc::SIG_IGN);
                }
            }
        }
    });
}

/// The first slot of `slots` that `take` takes.
fn claim<T>(slots: &[T], take: impl Fn(&T) -> bool) -> Result<usize> {
    match slots.iter().position(take) {
        Some(i) => Ok(i),
        None => bail!("pgkeep runs at most {SLOTS} helper programs or scratch directories at once"),
    }
}

/// A running child; dropping it stops what is left of it.
pub struct Running {
    child: Option<Child>,
    group: i32,
    stop: Stop,
    slot: usize,
}

impl Running {
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("only output() takes the child")
    }

    /// A function that stops the child at once: a client program's whole group, a
    /// server by immediate shutdown (callable from any thread).
    pub fn killer(&self) -> impl Fn() + Sync + use<> {
        let (group, stop) = (self.group, self.stop);
        // SAFETY: signals the child, or the group it leads.
        move || unsafe {
            match stop {
                Stop::Kill => libc::kill(-group, libc::SIGKILL),
                Stop::Quit => libc::kill(group, libc::SIGQUIT),
            };
        }
    }

    /// Waits for the child to exit, collecting what it wrote.
    pub fn output(mut self) -> std::io::Result<std::process::Output> {
        self.child.take().expect("taken once").wait_with_output()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let kill = self.killer();
        if let Some(child) = &mut self.child
            && matches!(child.try_wait(), Ok(None))
        {
            kill();
            let _ = child.wait();
        }
        GROUPS[self.slot].store(0, Ordering::SeqCst);
    }
}

/// Starts client program `cmd` as such a child (see [`spawn_as`]).
pub fn spawn(cmd: &mut Command) -> Result<Running> {
    spawn_as(cmd, Stop::Kill)
}

/// Starts `cmd` as such a child, stopped as `stop` says. Call it from a thread that
/// outlives the child (the kernel's parent-death signal follows the spawning thread).
pub fn spawn_as(cmd: &mut Command, stop: Stop) -> Result<Running> {
    install_handlers();
    cmd.process_group(0);
    let death_signal = match stop {
        Stop::Kill => libc::SIGKILL,
        Stop::Quit => libc::SIGQUIT,
    };
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, death_signal);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    let group = child.id() as i32;
    let marked = if stop == Stop::Quit { -group } else { group };
    let claimed = claim(&GROUPS, |g| {
        g.compare_exchange(0, marked, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    });
    match claimed {
        Ok(slot) => Ok(Running {
            child: Some(child),
            group,
            stop,
            slot,
        }),
        Err(e) => {
            // SAFETY: signals the group this child leads.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            Err(e)
        }
    }
}

/// What a PostgreSQL program said on stderr, trimmed for an error message.
pub fn messages(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = &lines[lines.len().saturating_sub(20)..];
    shown.join("\n")
}

/// A private directory (`pgkeep-PURPOSE-PID-RANDOM`), removed when dropped.
pub struct Scratch {
    path: PathBuf,
    slot: usize,
}

impl Scratch {
    /// One under the system's temporary directory (`TMPDIR`).
    pub fn new(purpose: &str) -> Result<Scratch> {
        Scratch::new_in(&std::env::temp_dir(), purpose)
    }

    /// One under `parent`.
    pub fn new_in(parent: &Path, purpose: &str) -> Result<Scratch> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::DirBuilderExt;
        install_handlers();
        remove_abandoned(parent);
        let random: [u8; 8] = crate::repo::encryption::random()?;
        let named = |purpose: &str| -> Result<PathBuf> {
            let name = format!(
                "pgkeep-{purpose}-{}-{}",
                std::process::id(),
                hex::encode(random)
            );
            Ok(std::path::absolute(parent)?.join(name))
        };
        let path = named(purpose)?;
        let leaked = |p: &Path| CString::new(p.as_os_str().as_bytes()).map(CString::into_raw);
        let (c_path, c_doomed) = (leaked(&path)?, leaked(&named("gone")?)?);
        let slot = claim(&DIRECTORIES, |d| {
            d.compare_exchange(
                std::ptr::null_mut(),
                c_path,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
        })?;
        DOOMED[slot].store(c_doomed, Ordering::SeqCst);
        let scratch = Scratch { path, slot };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&scratch.path)
            .with_context(|| {
                format!(
                    "cannot create the scratch directory {}; choose a writable directory (TMPDIR)",
                    scratch.path.display()
                )
            })?;
        Ok(scratch)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                "cannot remove scratch directory {}: {e}",
                self.path.display()
            ),
        }
        // The rename target first: the slot is free once its path is null.
        DOOMED[self.slot].store(std::ptr::null_mut(), Ordering::SeqCst);
        DIRECTORIES[self.slot].store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// Removes scratch directories in `dir` whose process is gone: what a pgkeep killed
/// mid-way left. Only this user's.
fn remove_abandoned(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = scratch_pid(&name) else {
            continue;
        };
        let mine = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid as libc::pid_t, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if mine && gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The process id in a scratch directory's name `pgkeep-PURPOSE-PID-RANDOM`.
fn scratch_pid(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix("pgkeep-")?.split('-');
    let (_purpose, pid, random) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && random.len() == 16).then_some(())?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_scratch_directories_are_found_by_name() {
        assert_eq!(scratch_pid("pgkeep-dump-4242-0123456789abcdef"), Some(4242));
        assert_eq!(scratch_pid("pgkeep-dump-4242-short"), None);
        assert_eq!(scratch_pid("pgkeep-tests"), None);
        assert_eq!(scratch_pid("other-dump-1-0123456789abcdef"), None);
    }
}
