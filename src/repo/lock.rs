//! The lock service: advisory locks that coordinate the commands working on one
//! cluster's repository (one backup at a time, no collection while a backup runs). A
//! service of its own beside the storage: on a local disk a lock is `flock(2)`, on object
//! storage it has to be a lease object with an expiry.

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// With other shared holders.
    Shared,
    /// Alone.
    Exclusive,
}

/// Takes named locks.
pub trait LockService: Send + Sync {
    /// Takes lock `name`, held until the guard is dropped and released if the process
    /// dies. `Ok(None)` when `wait` is false and the lock is held in a conflicting mode.
    fn lock(&self, name: &str, mode: LockMode, wait: bool) -> anyhow::Result<Option<LockGuard>>;
}

/// A held lock; released when dropped.
pub struct LockGuard {
    _held: Box<dyn Send + Sync>,
}

impl LockGuard {
    /// A guard that holds `held` (a locked file, a lease keeper) until dropped.
    pub fn new(held: impl Send + Sync + 'static) -> LockGuard {
        LockGuard {
            _held: Box::new(held),
        }
    }
}
