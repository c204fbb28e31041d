//! `pgkeep serve`: the long-running process (in the foreground, for systemd). It runs
//! each cluster's scheduled jobs, recomputes every cluster's status on a timer and
//! after each job, tells of failed jobs and crossed thresholds, and serves `/metrics`
//! and a read-only web view from the last status.
//!
//! Invariants:
//! - Jobs of one cluster never overlap: a job falling due while another of its
//!   cluster runs waits for it; one falling due while the same job still runs or
//!   waits is skipped, and the skip is told.
//! - A due time is recorded as its job starts (or is skipped), never while it only
//!   waits: no job runs twice for one due time, and one missed while `serve` was down
//!   (or still waiting when it stopped) runs once at start.
//! - On SIGTERM or SIGINT no job starts; running jobs get SIGTERM (pgkeep's commands
//!   stop cleanly on it) and `stop_seconds`, then SIGKILL to their process group;
//!   queued notices still go out, for at most `NOTICE_FLUSH`.

pub mod http;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod picture;
pub mod schedule;
pub mod watch;
pub mod web;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::engine::operations::status::Level;
use jobs::{Finished, Job, Running};
use metrics::JobStats;
use notify::{Beat, Event, Notice, Notifier};
use schedule::{DueTimes, Schedule};
use watch::{Alerts, Snapshot, View};

/// How often the loop looks at jobs, due times and signals.
const TICK: Duration = Duration::from_millis(250);

/// How long queued notices may take to go out once serve stops.
const NOTICE_FLUSH: Duration = Duration::from_secs(20);

/// How many finished jobs the web view lists.
const RECENT_JOBS: usize = 200;

/// What the HTTP side reads.
#[derive(Default)]
pub struct Shared {
    pub snapshot: Snapshot,
    pub jobs: JobStats,
    /// The jobs that ended, newest last.
    pub recent: VecDeque<Finished>,
    /// Where the job logs are (`STATE/logs`).
    pub logs: std::path::PathBuf,
}

/// The shared state, also after a panic elsewhere left its lock poisoned (every
/// writer leaves it consistent at each step).
pub fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs until SIGTERM or SIGINT; `config_path` is handed to the jobs.
pub fn serve(config: &Config, config_path: &Path) -> Result<i32> {
    crate::os::one_malloc_arena();
    config.serve.check()?;
    let schedules = schedule::schedules(config, Utc::now())?;
    let (addr, token) = http::endpoint(&config.serve)?;
    let state = &config.serve.state_path;
    std::fs::create_dir_all(state).with_context(|| {
        format!(
            "cannot create serve.state_path {}; create it, writable by this user, or set another",
            state.display()
        )
    })?;
    let due_times = DueTimes::load(state)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| {
            format!("cannot listen on {addr}; is another pgkeep serve running? set serve.listen")
        })?;
    let shared = Arc::new(Mutex::new(Shared {
        logs: state.join("logs"),
        ..Shared::default()
    }));
    let (notifier, sender) = notify::Notifier::start(&config.notify, runtime.handle())?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(http::serve(listener, token, shared.clone(), async {
        let _ = http_stopped.await;
    }));
    println!("pgkeep serve: metrics and web view on http://{addr}/");
    let now = Utc::now();
    let next: Vec<Option<DateTime<Utc>>> = (schedules.iter())
        .map(|s| schedule::first_due(s, due_times.last(&s.key()), now))
        .collect();
    for (s, next) in schedules.iter().zip(&next) {
        let next = next.map_or("never".into(), |t| t.to_rfc3339());
        println!("  {}: next at {next}", s.key());
    }

    let mut service = Service {
        config,
        config_path,
        notifier,
        shared,
        host: crate::os::host_name(),
        due_times,
        running: BTreeMap::new(),
        waiting: BTreeMap::new(),
        alerts: Alerts::default(),
    };
    std::thread::scope(|scope| service.run(scope, &schedules, next));

    drop(service);
    runtime.block_on(async {
        let _ = tokio::time::timeout(NOTICE_FLUSH, sender).await;
        let _ = stop_http.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    });
    // A notice command still running is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(0)
}

struct Service<'c> {
    config: &'c Config,
    config_path: &'c Path,
    notifier: Notifier,
    shared: Arc<Mutex<Shared>>,
    host: String,
    due_times: DueTimes,
    /// The job running for each cluster.
    running: BTreeMap<String, Running>,
    /// The jobs that fell due while their cluster was busy, in order, with when.
    waiting: BTreeMap<String, VecDeque<(Job, DateTime<Utc>)>>,
    alerts: Alerts,
}

impl<'c> Service<'c> {
    fn run<'s>(
        &mut self,
        scope: &'s std::thread::Scope<'s, '_>,
        schedules: &[Schedule],
        mut next: Vec<Option<DateTime<Utc>>>,
    ) where
        'c: 's,
    {
        let stop = crate::os::stop_on_signals();
        let clusters: Vec<String> = self.config.cluster.keys().cloned().collect();
        // Refreshes follow the monotonic clock, so a clock stepped back does not stop
        // them; due times follow the wall clock, as cron's do.
        let refresh_every = Duration::from_secs(self.config.serve.refresh_seconds);
        let mut next_refresh = Instant::now();
        let mut stale: BTreeSet<String> = BTreeSet::new();
        let (views_out, views_in) = mpsc::channel::<Vec<View>>();
        let mut refreshing = false;
        jobs::prune_logs(&self.config.serve.state_path, self.config.serve.log_days);

        while !stop.load(Ordering::Relaxed) {
            for done in self.poll_jobs() {
                stale.insert(done.cluster.clone());
                self.finished(done);
            }
            self.start_waiting();
            let now = Utc::now();
            for (s, due) in schedules.iter().zip(next.iter_mut()) {
                if due.is_some_and(|t| t <= now) {
                    *due = s.next_after(now);
                    self.fall_due(s, now);
                }
            }
            if let Ok(views) = views_in.try_recv() {
                refreshing = false;
                self.apply(views);
            }
            if !refreshing && Instant::now() >= next_refresh {
                next_refresh = Instant::now() + refresh_every;
                stale.extend(clusters.iter().cloned());
            }
            if !refreshing && !stale.is_empty() {
                refreshing = true;
                let which: Vec<String> = std::mem::take(&mut stale).into_iter().collect();
                let (config, out) = (self.config, views_out.clone());
                scope.spawn(move || {
                    let views = watch::gather(config, &which);
                    crate::os::return_free_memory();
                    let _ = out.send(views);
                });
            }
            std::thread::sleep(TICK);
        }
        println!("pgkeep serve: stopping");
        for (cluster, queue) in std::mem::take(&mut self.waiting) {
            for (job, due) in queue {
                self.notice(
                    Event::JobStopped,
                    &cluster,
                    job.name(),
                    Level::Warning,
                    format!(
                        "{} due at {} did not run: serve stopped first (it runs when serve starts again)",
                        job.name(),
                        due.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                );
            }
        }
        for job in self.running.values_mut() {
            job.terminate();
        }
        while !self.running.is_empty() {
            for done in self.poll_jobs() {
                self.finished(done);
            }
            std::thread::sleep(TICK);
        }
    }

    /// The jobs that ended since the last look.
    fn poll_jobs(&mut self) -> Vec<Finished> {
        let grace = Duration::from_secs(self.config.serve.stop_seconds);
        let done: Vec<Finished> = self
            .running
            .values_mut()
            .filter_map(|job| job.poll(grace))
            .collect();
        for d in &done {
            self.running.remove(&d.cluster);
        }
        done
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    fn heartbeats(&self, cluster: &str) -> Option<&crate::config::JobTable<String>> {
        self.config.cluster.get(cluster).map(|c| &c.heartbeat)
    }

    fn notice(&self, event: Event, cluster: &str, job: &str, level: Level, message: String) {
        self.notifier.notify(Notice {
            event,
            cluster: cluster.to_string(),
            job: Some(job.to_string()),
            repository: None,
            check: None,
            level,
            message,
            time: Utc::now(),
            host: self.host.clone(),
        });
    }

    /// `schedule` is due: start its job, queue it behind the job its cluster runs, or
    /// skip it if that same job already runs or waits.
    fn fall_due(&mut self, schedule: &Schedule, now: DateTime<Utc>) {
        let (cluster, job) = (schedule.cluster.as_str(), schedule.job);
        let running = self.running.get(cluster);
        let waiting = self.waiting.entry(cluster.to_string()).or_default();
        let queued: Vec<Job> = waiting.iter().map(|w| w.0).collect();
        match admit(running.map(|r| r.job), &queued, job) {
            Admit::Start => self.start(cluster, job, now),
            Admit::Wait => waiting.push_back((job, now)),
            Admit::Skip => {
                let message = match running.filter(|r| r.job == job) {
                    Some(r) => format!(
                        "{} was due at {} but its run started {} is still going; skipped",
                        job.name(),
                        now.format("%Y-%m-%d %H:%M:%S UTC"),
                        r.started.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                    None => format!(
                        "{} was due at {} but an earlier run still waits for the cluster's running job; skipped",
                        job.name(),
                        now.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                };
                println!("{cluster}: {message}");
                self.record_due(cluster, job, now);
                self.shared()
                    .jobs
                    .entry((cluster.to_string(), job))
                    .or_default()
                    .skipped += 1;
                self.notice(
                    Event::JobSkipped,
                    cluster,
                    job.name(),
                    Level::Warning,
                    message,
                );
            }
        }
    }

    /// Records that `job` of `cluster` was handled for its due time `due`; false (and
    /// told) if that cannot be stored, in which case the job must not run: after a
    /// crash it would run again for the same due time.
    fn record_due(&mut self, cluster: &str, job: Job, due: DateTime<Utc>) -> bool {
        let key = schedule::key(cluster, job);
        match self.due_times.record(&key, due) {
            Ok(()) => true,
            Err(e) => {
                self.notice(
                    Event::JobFailed,
                    cluster,
                    job.name(),
                    Level::Critical,
                    format!(
                        "not started: {e:#}; make serve.state_path writable by the user serve runs as"
                    ),
                );
                false
            }
        }
    }

    /// Starts the next waiting job of each cluster that has none running.
    fn start_waiting(&mut self) {
        let ready: Vec<(String, (Job, DateTime<Utc>))> = (self.waiting.iter_mut())
            .filter(|(cluster, _)| !self.running.contains_key(*cluster))
            .filter_map(|(cluster, queue)| Some((cluster.clone(), queue.pop_front()?)))
            .collect();
        for (cluster, (job, due)) in ready {
            self.start(&cluster, job, due);
        }
    }

    /// Starts `job` of `cluster`, due at `due`, once that is recorded.
    fn start(&mut self, cluster: &str, job: Job, due: DateTime<Utc>) {
        if !self.record_due(cluster, job, due) {
            return;
        }
        let state = &self.config.serve.state_path;
        match jobs::start(self.config_path, state, cluster, job) {
            Ok(run) => {
                println!(
                    "{cluster}: {} started (log {})",
                    job.name(),
                    run.log.display()
                );
                if let Some(beats) = self.heartbeats(cluster) {
                    self.notifier.beat(beats, job, Beat::Start, String::new());
                }
                self.shared()
                    .jobs
                    .entry((cluster.to_string(), job))
                    .or_default()
                    .running = true;
                self.running.insert(cluster.to_string(), run);
            }
            Err(e) => {
                let now = Utc::now();
                self.finished(Finished {
                    cluster: cluster.to_string(),
                    job,
                    started: now,
                    finished: now,
                    passed: false,
                    stopped: false,
                    error: Some(format!("{e:#}")),
                    log: None,
                });
            }
        }
    }

    /// Counts, tells and pings for a job that ended.
    fn finished(&mut self, done: Finished) {
        let name = done.job.name();
        {
            let mut shared = self.shared();
            let stat = shared
                .jobs
                .entry((done.cluster.clone(), done.job))
                .or_default();
            stat.running = false;
            stat.last_seconds = Some(done.seconds());
            stat.last_end = Some(done.finished);
            if done.passed {
                stat.passed += 1;
                stat.last_success = Some(done.finished);
            } else {
                stat.failed += 1;
            }
            shared.recent.push_back(done.clone());
            if shared.recent.len() > RECENT_JOBS {
                shared.recent.pop_front();
            }
        }
        let log = done
            .log
            .as_ref()
            .map_or(String::new(), |l| format!(" (log {})", l.display()));
        let took = done.seconds();
        let (event, level, beat, message) = match &done.error {
            None => (
                Event::JobSucceeded,
                Level::Ok,
                Some(Beat::Success),
                format!("{name} succeeded in {took:.1} s"),
            ),
            // Stopped with serve: not the job's failure, so no failure ping.
            Some(error) if done.stopped => (
                Event::JobStopped,
                Level::Warning,
                None,
                format!("{name} stopped after {took:.1} s as serve stopped: {error}{log}"),
            ),
            Some(error) => (
                Event::JobFailed,
                Level::Critical,
                Some(Beat::Fail),
                format!("{name} failed after {took:.1} s: {error}{log}"),
            ),
        };
        println!("{}: {message}", done.cluster);
        if let (Some(beats), Some(beat)) = (self.heartbeats(&done.cluster), beat) {
            self.notifier.beat(beats, done.job, beat, message.clone());
        }
        self.notice(event, &done.cluster, name, level, message);
        jobs::prune_logs(&self.config.serve.state_path, self.config.serve.log_days);
    }

    /// Takes in fresh views: the snapshot, and the alerts they raise and clear.
    fn apply(&mut self, views: Vec<View>) {
        for notice in self.alerts.update(&views, &self.host) {
            self.notifier.notify(notice);
        }
        watch::merge(&mut self.shared().snapshot, views);
    }
}

/// What becomes of a job that falls due.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Start,
    /// Behind the job its cluster runs.
    Wait,
    /// The same job runs or waits already: once is enough.
    Skip,
}

fn admit(running: Option<Job>, waiting: &[Job], due: Job) -> Admit {
    match running {
        _ if waiting.contains(&due) => Admit::Skip,
        None => Admit::Start,
        Some(job) if job == due => Admit::Skip,
        Some(_) => Admit::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_of_a_cluster_never_overlap_and_a_still_running_job_is_not_run_again() {
        assert_eq!(admit(None, &[], Job::Backup), Admit::Start);
        assert_eq!(admit(Some(Job::Backup), &[], Job::Backup), Admit::Skip);
        assert_eq!(admit(Some(Job::Backup), &[], Job::Prove), Admit::Wait);
        let prove_waits = [Job::Prove];
        assert_eq!(
            admit(Some(Job::Backup), &prove_waits, Job::Prove),
            Admit::Skip
        );
        assert_eq!(
            admit(Some(Job::Backup), &prove_waits, Job::Expire),
            Admit::Wait
        );
        // Between two ticks the cluster may be idle with a job still queued.
        assert_eq!(admit(None, &prove_waits, Job::Prove), Admit::Skip);
    }
}
