//! The commands: each configures the read → checksum → chunk → compress → store pipeline
//! (or its reverse) for one job.

pub mod catalog;
pub mod info;
pub mod logical;
pub mod operations;
pub mod physical;
pub mod repositories;
pub mod retention;
pub mod scratch;
pub mod setup;
pub mod table;
pub mod verify;
pub mod wal;

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::config::{BackupSource, ClusterConfig, Config, Location, RepositoryConfig};
use crate::pg::conninfo::{self, ConnParams};
use crate::pg::session::Session;
use crate::repo::{self, ClusterRepo, OpenMode};

/// Everything a command needs: the configuration, the chosen cluster and one of its
/// repositories.
pub struct Context<'a> {
    pub config: &'a Config,
    pub cluster_name: &'a str,
    pub cluster: &'a ClusterConfig,
    pub repo: ClusterRepo,
    pub repo_config: &'a RepositoryConfig,
    /// The repository's place in the config, from 1.
    pub repo_number: usize,
}

impl<'a> Context<'a> {
    /// A context on the first repository of the config.
    pub fn new(config: &'a Config, cluster: Option<&str>, mode: OpenMode) -> Result<Context<'a>> {
        Context::on_repository(config, cluster, 1, mode)
    }

    /// A context on repository `number` (from 1) of the config.
    pub fn on_repository(
        config: &'a Config,
        cluster: Option<&str>,
        number: usize,
        mode: OpenMode,
    ) -> Result<Context<'a>> {
        let (cluster_name, cluster) = config.select_cluster(cluster)?;
        let repo_config = config
            .repositories
            .get(number.wrapping_sub(1))
            .with_context(|| {
                format!(
                    "the config has {} repositories, so there is no repository {number}",
                    config.repositories.len()
                )
            })?;
        refuse_root(cluster, &repo_config.path)?;
        let repo = repo::open(repo_config, cluster_name, mode)?;
        Ok(Context {
            config,
            cluster_name,
            cluster,
            repo,
            repo_config,
            repo_number: number,
        })
    }

    pub fn conn_params(&self) -> Result<ConnParams> {
        conninfo::resolve(&self.cluster.connection)
    }

    pub fn connect(&self) -> Result<Session> {
        Session::connect(&self.conn_params()?)
    }

    /// Checks that the server behind `connection` is the cluster configured as `pgdata`;
    /// a cluster backed up over replication runs elsewhere, and its `pgdata` is not there.
    pub fn check_data_directory(&self, session: &mut Session) -> Result<()> {
        let pgdata = match &self.cluster.pgdata {
            Some(p) if self.cluster.backup_source() == BackupSource::DataDirectory => p,
            _ => return Ok(()),
        };
        let server_dir = session.setting("data_directory")?;
        let same = match (Path::new(&server_dir).canonicalize(), pgdata.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => Path::new(&server_dir) == pgdata,
        };
        if !same {
            bail!(
                "the server at `connection` runs data directory {server_dir}, but cluster '{}' has pgdata = {}; fix one of them",
                self.cluster_name,
                pgdata.display()
            );
        }
        Ok(())
    }

    /// A label that sorts by time, `suffix` after the time, unique among the
    /// repository's backups and dumps (`-N` appended if taken).
    pub fn new_label(&self, suffix: &str) -> Result<String> {
        self.new_label_besides(suffix, &[])
    }

    /// As [`Context::new_label`], and none of `taken` either (labels chosen for what is
    /// not published yet).
    pub fn new_label_besides(&self, suffix: &str, taken: &[String]) -> Result<String> {
        let base = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut existing: HashSet<String> = self.repo.backup_labels()?.into_iter().collect();
        existing.extend(self.repo.dump_labels()?);
        existing.extend(taken.iter().cloned());
        let mut label = format!("{base}{suffix}");
        let mut n = 1;
        while existing.contains(&label) {
            label = format!("{base}{suffix}-{n}");
            n += 1;
        }
        Ok(label)
    }

    /// The command line that runs pgkeep with this config and cluster, shell-quoted, for
    /// `archive_command` and `restore_command`.
    pub fn self_command(&self) -> Result<String> {
        let exe = std::env::current_exe()?;
        Ok(format!(
            "{} --config {} --cluster {}",
            shell_quote(&exe.to_string_lossy()),
            shell_quote(&self.config.path.to_string_lossy()),
            shell_quote(self.cluster_name)
        ))
    }
}

/// Refuses to run as root when the cluster or the repository belongs to another user:
/// what root writes (locks, objects, restored files) that user could not use later, and
/// PostgreSQL never runs as root.
fn refuse_root(cluster: &ClusterConfig, repository: &Location) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let mut paths: Vec<_> = (cluster.pgdata.iter())
        .map(|p| ("data directory", p))
        .collect();
    if let Location::Local(path) = repository {
        paths.push(("repository", path));
    }
    for (what, path) in paths {
        if let Ok(meta) = std::fs::metadata(path)
            && meta.uid() != 0
        {
            let owner = crate::os::user_name(meta.uid());
            bail!(
                "pgkeep is running as root, but the {what} {} belongs to {owner}; run it as that user \
                 (`sudo -u {owner} pgkeep ...`), so that everything it writes stays usable by {owner}",
                path.display()
            );
        }
    }
    Ok(())
}

/// Runs `work` over `items` (in the order given) on `jobs` threads. The first failure
/// raises `stop`, which the others see before their next item (and which long items
/// should poll), and is the error returned.
pub fn parallel_map<T: Send, R: Send>(
    items: Vec<T>,
    jobs: usize,
    work: impl Fn(T, &AtomicBool) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let feed = |send: &mut dyn FnMut(T) -> Result<()>| items.into_iter().try_for_each(send);
    Ok(parallel_feed(jobs, feed, work)?.1)
}

/// As [`parallel_map`], the items coming from `produce`, which runs on the calling
/// thread while the workers take what it sends (through a short queue, so a stream is
/// read no faster than it is worked). Returns what `produce` returned and the results.
/// A worker's failure makes the next send fail; the worker's error is the one returned.
pub fn parallel_feed<T: Send, R: Send, P>(
    jobs: usize,
    produce: impl FnOnce(&mut dyn FnMut(T) -> Result<()>) -> Result<P>,
    work: impl Fn(T, &AtomicBool) -> Result<R> + Sync,
) -> Result<(P, Vec<R>)> {
    let jobs = jobs.max(1);
    let (tx, rx) = crossbeam_channel::bounded(2 * jobs);
    let stop = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let (produced, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                let (rx, stop, first_error, work) = (rx.clone(), &stop, &first_error, &work);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    for item in rx {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match work(item, stop) {
                            Ok(r) => done.push(r),
                            Err(e) => {
                                if !stop.swap(true, Ordering::Relaxed) {
                                    *first_error.lock().unwrap() = Some(e);
                                }
                                break;
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        drop(rx);
        let mut send = |item: T| match stop.load(Ordering::Relaxed) {
            true => Err(stopped()),
            false => tx.send(item).map_err(|_| stopped()),
        };
        let produced = produce(&mut send);
        if produced.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop(tx);
        let results = handles
            .into_iter()
            .flat_map(|h| h.join().expect("a worker panicked"))
            .collect::<Vec<R>>();
        (produced, results)
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok((produced?, results)),
    }
}

/// The error a worker returns when it stops because another one failed.
pub fn stopped() -> anyhow::Error {
    anyhow::anyhow!("stopped because another worker failed")
}

/// Quotes a word for `/bin/sh` unless it needs none.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Human-readable byte counts for summaries.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/pgkeep"), "/usr/bin/pgkeep");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
