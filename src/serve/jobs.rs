//! Jobs: each a child `pgkeep` process with the same config, its output kept as the
//! run's log (`STATE/logs/CLUSTER/STAMP-JOB.log`). A child of its own cannot take
//! `serve` down with it, and its memory is returned when it ends.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    Backup,
    Full,
    Dump,
    Expire,
    Verify,
    Prove,
}

impl Job {
    pub const ALL: [Job; 6] = [
        Job::Backup,
        Job::Full,
        Job::Dump,
        Job::Expire,
        Job::Verify,
        Job::Prove,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::Backup => "backup",
            Job::Full => "full",
            Job::Dump => "dump",
            Job::Expire => "expire",
            Job::Verify => "verify",
            Job::Prove => "prove",
        }
    }

    pub fn from_name(name: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|j| j.name() == name)
    }

    /// The pgkeep command line that does it.
    fn args(self) -> &'static [&'static str] {
        match self {
            Job::Backup => &["backup"],
            Job::Full => &["backup", "--full"],
            Job::Dump => &["dump", "--all"],
            Job::Expire => &["expire"],
            Job::Verify => &["verify"],
            Job::Prove => &["prove", "--target", "random"],
        }
    }
}

/// A job that is running.
pub struct Running {
    pub cluster: String,
    pub job: Job,
    pub started: DateTime<Utc>,
    pub log: PathBuf,
    child: Child,
    /// When SIGTERM was sent, for the SIGKILL after the grace period.
    terminated: Option<Instant>,
}

/// How a job ended.
#[derive(Clone)]
pub struct Finished {
    pub cluster: String,
    pub job: Job,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub passed: bool,
    /// Whether serve stopped it (on its own SIGTERM).
    pub stopped: bool,
    /// The error pgkeep printed, or how the process ended.
    pub error: Option<String>,
    /// Its log, if it started.
    pub log: Option<PathBuf>,
}

impl Finished {
    pub fn seconds(&self) -> f64 {
        (self.finished - self.started).num_milliseconds() as f64 / 1000.0
    }
}

/// Starts `job` of `cluster`, its output to a new log under `state`.
pub fn start(config: &Path, state: &Path, cluster: &str, job: Job) -> Result<Running> {
    let started = Utc::now();
    let dir = state.join("logs").join(cluster);
    let unwritable = |path: &Path| {
        format!(
            "cannot create {}; make serve.state_path writable by the user serve runs as",
            path.display()
        )
    };
    std::fs::create_dir_all(&dir).with_context(|| unwritable(&dir))?;
    let log = dir.join(format!(
        "{}-{}.log",
        started.format("%Y%m%dT%H%M%SZ"),
        job.name()
    ));
    let out = File::create(&log).with_context(|| unwritable(&log))?;
    let err = out.try_clone()?;
    let program = std::env::current_exe().context("cannot find the pgkeep program")?;
    // A process group of its own: a SIGKILL after the grace period reaches whatever
    // the job started, too (its pg_dump, its scratch server).
    let child = Command::new(program)
        .process_group(0)
        .arg("--config")
        .arg(config)
        .arg("--cluster")
        .arg(cluster)
        .args(job.args())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} of cluster {cluster}; check that the pgkeep program is still where serve was started from",
                job.name()
            )
        })?;
    Ok(Running {
        cluster: cluster.to_string(),
        job,
        started,
        log,
        child,
        terminated: None,
    })
}

impl Running {
    /// How it ended, if it has; after SIGTERM and `grace`, it is killed.
    pub fn poll(&mut self, grace: Duration) -> Option<Finished> {
        if self.terminated.is_some_and(|t| t.elapsed() > grace) {
            // SAFETY: killpg(2) on the process group our child leads.
            unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(e) => {
                return Some(self.finished(Some(format!("cannot wait for the job: {e}"))));
            }
        };
        let error = match (status.success(), status.code()) {
            (true, _) => None,
            (false, Some(code)) => {
                Some(error_line(&self.log).unwrap_or_else(|| format!("exited with code {code}")))
            }
            (false, None) => Some("stopped by a signal".to_string()),
        };
        Some(self.finished(error))
    }

    fn finished(&self, error: Option<String>) -> Finished {
        Finished {
            cluster: self.cluster.clone(),
            job: self.job,
            started: self.started,
            finished: Utc::now(),
            passed: error.is_none(),
            stopped: self.terminated.is_some(),
            error,
            log: Some(self.log.clone()),
        }
    }

    /// Asks the job to stop: pgkeep's commands stop cleanly on SIGTERM (a backup
    /// publishes nothing half-made, a proof removes its scratch server and directory).
    pub fn terminate(&mut self) {
        if self.terminated.is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            self.terminated = Some(Instant::now());
        }
    }
}

/// The last `pgkeep: error:` line of a log's end (what the command said went wrong),
/// or its last line.
fn error_line(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let mut file = File::open(log).ok()?;
    let size = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(size.saturating_sub(TAIL))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let last_error = lines
        .clone()
        .filter_map(|l| l.strip_prefix("pgkeep: error: "))
        .next_back();
    last_error
        .or_else(|| lines.next_back())
        .map(|l| l.chars().take(2000).collect())
}

/// Removes the job logs older than `days`.
pub fn prune_logs(state: &Path, days: u64) {
    let Ok(clusters) = std::fs::read_dir(state.join("logs")) else {
        return;
    };
    let horizon = Duration::from_secs(days * 86_400);
    for log in clusters
        .flatten()
        .flat_map(|c| std::fs::read_dir(c.path()).into_iter().flatten())
    {
        let Ok(log) = log else { continue };
        let old = log
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > horizon));
        if old {
            let _ = std::fs::remove_file(log.path());
        }
    }
}
