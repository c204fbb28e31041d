//! PostgreSQL's programs run as children that never outlive pgkeep: each leads its own
//! process group (so its workers are stopped with it), is killed by the kernel if
//! pgkeep dies (`PR_SET_PDEATHSIG`), and is killed first if pgkeep is interrupted
//! (SIGINT, SIGTERM), before its pipes close.
//!
//! Why: pg_restore takes the end of a pipe for the end of a table's data and commits
//! what it has, and an orphaned pg_dump holds its snapshot. A child killed while a pipe
//! is still open commits nothing of the table it was loading.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context as _, Result};

/// The process group of the running child, 0 when there is none (pgkeep runs one such
/// program at a time).
static RUNNING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    let group = RUNNING.load(Ordering::SeqCst);
    // SAFETY: kill, signal and raise are async-signal-safe.
    unsafe {
        if group > 0 {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// A running child; dropping it kills what is left of its group.
pub struct Running {
    child: Option<Child>,
    group: i32,
}

impl Running {
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("only output() takes the child")
    }

    /// A function that kills the child's whole group at once (callable from any thread).
    pub fn killer(&self) -> impl Fn() + Sync + use<> {
        let group = self.group;
        // SAFETY: signals the group this child leads.
        move || unsafe {
            libc::kill(-group, libc::SIGKILL);
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
        RUNNING.store(0, Ordering::SeqCst);
    }
}

/// Starts `cmd` as such a child. Call it from a thread that outlives the child (the
/// kernel's parent-death signal follows the spawning thread).
pub fn spawn(cmd: &mut Command) -> Result<Running> {
    static HANDLERS: Once = Once::new();
    HANDLERS.call_once(|| {
        // SAFETY: installs a handler that only makes async-signal-safe calls.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        }
    });
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    let group = child.id() as i32;
    RUNNING.store(group, Ordering::SeqCst);
    Ok(Running {
        child: Some(child),
        group,
    })
}
