//! A running `pgkeep receive-wal` for tests that stream WAL into the repository.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{Env, as_postgres};

/// A running `pgkeep receive-wal`, its output appended to a log file.
pub struct Receiver {
    pub child: Child,
    log: PathBuf,
}

impl Receiver {
    pub fn start(env: &Env) -> Receiver {
        Receiver::start_with(env, &env.config)
    }

    /// receive-wal with config file `config`.
    pub fn start_with(env: &Env, config: &Path) -> Receiver {
        let log = env.path("receive-wal.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = as_postgres(&env.pgkeep)
            .arg("--config")
            .arg(config)
            .args(["receive-wal", "-v"])
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Receiver { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: nothing is flushed or stored on the way out.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status must be success.
    pub fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "receive-wal exited with {status}:\n{}",
            self.log()
        );
    }

    pub fn wait_for(&mut self, what: &str, text: &str) {
        self.wait_for_more(what, text, 0);
    }

    /// Waits until the log (of every run so far) holds `text` more than `seen` times.
    pub fn wait_for_more(&mut self, what: &str, text: &str, seen: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log().matches(text).count() <= seen {
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "receive-wal never {what} ({exited:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
