//! The repositories one command works on: writers go to every one, readers take the
//! first that has what they need. Each is opened on first use and then kept, so a
//! process that stores or fetches many files (the background pusher, the WAL
//! prefetcher) opens each repository once; one that fails to open is tried again at
//! its next use, so a long-lived process outlasts an outage.

use std::sync::OnceLock;

use anyhow::{Result, anyhow};

use crate::config::Config;
use crate::engine::Context;
use crate::repo::OpenMode;

pub struct Repositories<'a> {
    config: &'a Config,
    cluster: Option<&'a str>,
    mode: OpenMode,
    opened: Vec<(usize, OnceLock<Context<'a>>)>,
}

impl<'a> Repositories<'a> {
    /// Repositories `numbers` (places in the config, from 1), none opened yet.
    pub fn new(
        config: &'a Config,
        cluster: Option<&'a str>,
        numbers: &[usize],
        mode: OpenMode,
    ) -> Repositories<'a> {
        Repositories {
            config,
            cluster,
            mode,
            opened: numbers.iter().map(|&n| (n, OnceLock::new())).collect(),
        }
    }

    /// Repository `n`, opened now if it is not yet, or why it cannot be.
    fn context<'s>(&self, n: usize, cell: &'s OnceLock<Context<'a>>) -> Result<&'s Context<'a>> {
        if let Some(ctx) = cell.get() {
            return Ok(ctx);
        }
        let ctx = Context::on_repository(self.config, self.cluster, n, self.mode)?;
        // (Another thread may have opened it meanwhile; either copy will do.)
        let _ = cell.set(ctx);
        Ok(cell.get().expect("set above"))
    }

    /// The first answer of `job` over the repositories in order. A repository that fails
    /// is passed over for the next; `Ok(None)` when none has it and at least one healthy
    /// repository said so, the last failure when every one failed.
    pub fn first<T>(&self, job: impl Fn(&Context) -> Result<Option<T>>) -> Result<Option<T>> {
        let mut failure = None;
        let mut answered = false;
        for (n, cell) in &self.opened {
            match self.context(*n, cell).and_then(&job) {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => answered = true,
                Err(e) => {
                    tracing::warn!("repository {n}: {e:#}; trying the next repository");
                    failure = Some(e.context(format!("repository {n}")));
                }
            }
        }
        match failure {
            Some(e) if !answered => Err(e),
            _ => Ok(None),
        }
    }

    /// Runs `job` on every repository, going on past a failure. The error lists each
    /// repository that failed, by number and location, with its reason.
    pub fn every(&self, job: impl Fn(&Context) -> Result<()>) -> Result<()> {
        let failures: Vec<String> = self
            .opened
            .iter()
            .filter_map(|(n, cell)| {
                let err = self.context(*n, cell).and_then(&job).err()?;
                let location = self.config.repositories.get(n.wrapping_sub(1));
                Some(match location {
                    Some(r) => format!("repository {n} ({}): {err:#}", r.path),
                    None => format!("repository {n}: {err:#}"),
                })
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("{}", failures.join("; ")))
        }
    }
}
