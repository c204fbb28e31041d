//! receive-wal's uploader thread: stores what the stream thread queues in every
//! repository, so a slow or unreachable repository never holds up the stream (nor, in
//! synchronous mode, the primary's commits).
//!
//! Invariant: a local file is removed only once stored in every repository. A queued
//! file that is gone was stored and removed by an earlier entry for it (a segment
//! streamed twice): that is success, not an error to retry.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use crossbeam_channel::Receiver;

use crate::engine::repositories::Repositories;
use crate::engine::wal::archive;
use crate::format::wal::WalFile;
use crate::os::sync_dir;
use crate::repo::{ReceiverStatus, object};

use super::MAX_BACKOFF;

/// How long the uploader keeps trying once receive-wal is stopping; what is still not
/// stored then waits in the receive directory for the next start.
const STOPPING_GRACE: Duration = Duration::from_secs(20);

/// What the uploader is asked to store.
pub enum Upload {
    /// A local file (`NAME` or `NAME.partial`) to archive and then remove.
    File(String),
    /// The streamed copy of segment `name`: the local file `NAME.receiving` as it is.
    Streamed(String),
    /// The receiver's state, for `info`: stored once, not retried.
    Status(Box<ReceiverStatus>),
}

/// Stores each queued upload, retrying with backoff until it is stored, or until the
/// grace period once `stop` is set.
pub fn store_uploads(
    repos: &Repositories,
    dir: &Path,
    queue: &Receiver<Upload>,
    stop: &AtomicBool,
) {
    let mut stopping_since = None;
    for upload in queue {
        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = match &upload {
                Upload::File(name) => store_file(repos, dir, name),
                Upload::Streamed(name) => store_streamed(repos, dir, name),
                Upload::Status(status) => {
                    if let Err(e) = repos.every(|ctx| ctx.repo.put_receiver_status(status)) {
                        tracing::warn!("cannot record receive-wal's state: {e:#}");
                    }
                    break;
                }
            };
            let Err(e) = outcome else { break };
            if stop.load(Ordering::Relaxed) {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STOPPING_GRACE {
                    tracing::error!("{e:#}; it is stored at the next start of receive-wal");
                    break;
                }
            }
            tracing::error!("{e:#}; trying again in {}s", backoff.as_secs());
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Archives a local file and removes it. A `.partial` of a timeline that PostgreSQL's
/// own archiver stored already (a promoted server archives its old timeline's last
/// segment too) is left as the server wrote it.
fn store_file(repos: &Repositories, dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    let file = WalFile::parse(name).context("queued files have WAL names")?;
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    repos
        .every(|ctx| match file {
            WalFile::Partial { .. } if ctx.repo.has_wal(name)? => {
                tracing::info!("{name} is archived already; keeping that copy");
                Ok(())
            }
            _ => archive::store(ctx, name, &file, &data),
        })
        .with_context(|| format!("streamed {name} is not archived"))?;
    // The segment is archived (whole, or as its timeline's end): a streamed copy of it
    // is of no more use, and must not be served instead.
    let segment = name.trim_end_matches(".partial");
    if let Err(e) = repos.every(|ctx| ctx.repo.delete_streamed(segment)) {
        tracing::warn!("cannot remove the streamed copy of {segment}: {e:#}");
    }
    fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    sync_dir(dir)?;
    tracing::info!("archived streamed {name}");
    Ok(())
}

/// Stores the local `NAME.receiving` as the streamed copy of segment `name`, unless the
/// segment was finished meanwhile (its whole copy is queued after this).
fn store_streamed(repos: &Repositories, dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(format!("{name}.receiving"));
    let data = match fs::read(&path) {
        Ok(data) => data,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    repos
        .every(|ctx| {
            let encoded = object::encode(&data, ctx.repo_config.compress_level)?;
            ctx.repo.put_streamed(name, &encoded)
        })
        .with_context(|| format!("the streamed copy of {name} is not stored"))?;
    tracing::info!("stored the streamed copy of {name}");
    Ok(())
}
