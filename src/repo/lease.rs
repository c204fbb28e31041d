//! Locks on object storage: lease objects with an expiry, for the [`LockService`] of a
//! repository that no `flock(2)` can reach.
//!
//! Invariants:
//! - A contender first stores its own lease `NAME/MODE.HOLDER`, then lists `NAME/`, and
//!   holds the lock only if no other live lease conflicts with it (an exclusive lease
//!   conflicts with every other, shared ones only with exclusive ones). Otherwise it
//!   deletes its lease and gives up or tries again after a random pause. Because every
//!   contender writes before it looks, and S3, Azure and GCS list what was written
//!   (strong consistency), two conflicting contenders never both win.
//! - A lease is live while its object was stored within [`TTL`]. The holder stores it
//!   again every [`RENEW`], so a holder that dies lets its lock go within `TTL`; clocks
//!   that differ by more than `TTL - RENEW` break this, as they break every lease.
//! - A released lock deletes its lease. A lease whose holder was a process of this host
//!   that has ended is not live either (it could not delete its lease as it ended).

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use ring::rand::{SecureRandom, SystemRandom};

use super::lock::{LockGuard, LockMode, LockService};
use super::storage::Storage;

/// How long a lease lives without renewal.
pub const TTL: Duration = Duration::from_secs(60);
/// How often a holder renews its lease.
pub const RENEW: Duration = Duration::from_secs(10);

/// Lease locks in a storage.
pub struct LeaseLocks {
    storage: Arc<dyn Storage>,
}

impl LeaseLocks {
    pub fn new(storage: Arc<dyn Storage>) -> LeaseLocks {
        LeaseLocks { storage }
    }

    /// Whether `name`'s other live leases leave room for one in `mode`; expired leases
    /// found on the way are deleted.
    fn free_for(&self, name: &str, own: &str, mode: LockMode) -> Result<bool> {
        let now = chrono::Utc::now().timestamp();
        for lease in self.storage.list(name)? {
            if lease.key == own {
                continue;
            }
            if now - lease.modified > TTL.as_secs() as i64 || holder_is_gone(&lease.key) {
                let _ = self.storage.delete(&lease.key);
                continue;
            }
            let theirs_exclusive = lease
                .key
                .rsplit('/')
                .next()
                .unwrap_or("")
                .starts_with("exclusive.");
            if mode == LockMode::Exclusive || theirs_exclusive {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl LockService for LeaseLocks {
    fn lock(&self, name: &str, mode: LockMode, wait: bool) -> Result<Option<LockGuard>> {
        let mode_name = match mode {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        };
        let key = format!("{name}/{mode_name}.{}", holder_id()?);
        let body = serde_json::to_vec(&serde_json::json!({
            "host": crate::os::host_name(),
            "pid": std::process::id(),
            "mode": mode_name,
        }))?;
        loop {
            self.storage.put(&key, &body)?;
            if self.free_for(name, &key, mode)? {
                let renewer = Renewer::start(self.storage.clone(), key, body);
                return Ok(Some(LockGuard::new(renewer)));
            }
            self.storage.delete(&key)?;
            if !wait {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(500 + random_u64()? % 2000));
        }
    }
}

/// Keeps a lease alive until dropped, then deletes it.
struct Renewer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    storage: Arc<dyn Storage>,
    key: String,
}

impl Renewer {
    fn start(storage: Arc<dyn Storage>, key: String, body: Vec<u8>) -> Renewer {
        let (stop, stopped) = mpsc::channel::<()>();
        let (s, k) = (storage.clone(), key.clone());
        let thread = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(RENEW) {
                if let Err(e) = s.put(&k, &body) {
                    tracing::error!(
                        "cannot renew lock lease {k}: {e:#}; if this lasts {}s, another command may take the lock",
                        TTL.as_secs()
                    );
                }
            }
        });
        Renewer {
            stop: Some(stop),
            thread: Some(thread),
            storage,
            key,
        }
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.storage.delete(&self.key) {
            tracing::warn!(
                "cannot delete lock lease {}: {e:#}; it expires by itself",
                self.key
            );
        }
    }
}

/// Whether lease `key` was taken by a process of this host that is no longer running
/// (it could not delete its lease, say because the service was down as it ended).
fn holder_is_gone(key: &str) -> bool {
    let holder = key.rsplit('/').next().unwrap_or("");
    let Some((_, id)) = holder.split_once('.') else {
        return false;
    };
    let mut parts = id.rsplitn(3, '-');
    let (Some(_random), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    host == holder_host()
        && unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// This host's name as lease keys carry it.
fn holder_host() -> String {
    crate::os::host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn random_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system has no randomness to give"))?;
    Ok(u64::from_le_bytes(bytes))
}

/// A name no other holder has: host, process and a random part.
fn holder_id() -> Result<String> {
    Ok(format!(
        "{}-{}-{:016x}",
        holder_host(),
        std::process::id(),
        random_u64()?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::storage::LocalStorage;

    #[test]
    fn leases_exclude_as_modes_say() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let locks = LeaseLocks::new(storage.clone());
        let name = "c/locks/data";
        let shared = locks.lock(name, LockMode::Shared, false).unwrap().unwrap();
        let shared2 = locks.lock(name, LockMode::Shared, false).unwrap().unwrap();
        assert!(
            locks
                .lock(name, LockMode::Exclusive, false)
                .unwrap()
                .is_none()
        );
        drop((shared, shared2));
        let exclusive = locks
            .lock(name, LockMode::Exclusive, false)
            .unwrap()
            .unwrap();
        assert!(locks.lock(name, LockMode::Shared, false).unwrap().is_none());
        assert!(
            locks
                .lock(name, LockMode::Exclusive, false)
                .unwrap()
                .is_none()
        );
        drop(exclusive);
        assert!(
            storage.list(name).unwrap().is_empty(),
            "released leases are deleted"
        );
    }

    #[test]
    fn a_dead_local_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let locks = LeaseLocks::new(storage.clone());
        let name = "c/locks/backup";
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let alive = std::process::id();
        for pid in [dead, alive] {
            let key = format!("{name}/exclusive.{}-{pid}-00", holder_host());
            storage.put(&key, b"{}").unwrap();
            let taken = locks.lock(name, LockMode::Exclusive, false).unwrap();
            assert_eq!(taken.is_some(), pid == dead, "holder {pid}");
            storage.delete(&key).unwrap();
        }
    }

    #[test]
    fn an_expired_lease_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let locks = LeaseLocks::new(storage.clone());
        let name = "c/locks/data";
        // A holder that died: its lease is older than the TTL.
        storage
            .put(&format!("{name}/exclusive.dead-1-0"), b"{}")
            .unwrap();
        assert!(locks.lock(name, LockMode::Shared, false).unwrap().is_none());
        let stale = std::time::SystemTime::now() - TTL - Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(name).join("exclusive.dead-1-0"))
            .unwrap()
            .set_modified(stale)
            .unwrap();
        let taken = locks.lock(name, LockMode::Exclusive, false).unwrap();
        assert!(taken.is_some(), "a dead holder's lease expires");
        assert_eq!(
            storage.list(name).unwrap().len(),
            1,
            "the expired lease was deleted"
        );
    }
}
