//! `archive-push` and `archive-get`: the endpoints PostgreSQL's `archive_command` and
//! `restore_command` call.
//!
//! Invariants: push returns success only once the file is durable in the repository; a
//! file already archived with the same content is a success; different content under the
//! same name is an error and the stored file is never replaced.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::engine::Context;
use crate::engine::repositories::Repositories;
use crate::format::wal::{self, WalFile};
use crate::repo::object;

/// Maps a file read-only with its pages populated up front: for a 16 MB segment this
/// avoids thousands of page faults and a copy, a large share of archive-push's time.
fn read_mapped(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: PostgreSQL does not modify a segment once it hands it to archive_command.
    unsafe { memmap2::MmapOptions::new().populate().map(&file) }
}

/// Archives one WAL file (segment, `.partial`, `.backup` or `.history`) in every
/// repository, reading it once. Returns the BLAKE3 hash of what was stored.
pub fn push(repos: &Repositories, path: &Path) -> Result<blake3::Hash> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let file = WalFile::parse(name).with_context(|| {
        format!(
            "'{}' is not a WAL file name; archive_command must pass %p",
            path.display()
        )
    })?;
    let data = read_wal_file(path)?;
    if let Err(failures) = repos.every(|ctx| store(ctx, name, &file, &data)) {
        bail!(
            "{} is not archived in {failures:#}; PostgreSQL keeps it and tries again",
            path.display()
        );
    }
    Ok(blake3::hash(&data))
}

/// The BLAKE3 hash of the WAL file at `path`, to compare with what was pushed.
pub fn hash_file(path: &Path) -> Result<blake3::Hash> {
    Ok(blake3::hash(&read_wal_file(path)?))
}

fn read_wal_file(path: &Path) -> Result<memmap2::Mmap> {
    read_mapped(path).with_context(|| format!("cannot read WAL file {}", path.display()))
}

/// Archives WAL file `name` (parsed as `file`) with content `data`, from any source:
/// `archive_command`'s file, a history file a backup found missing, a streamed segment.
pub fn store(ctx: &Context, name: &str, file: &WalFile, data: &[u8]) -> Result<()> {
    let info = ctx.repo.require_info()?;
    if let WalFile::Segment { .. } = file {
        if data.len() as u64 != info.wal_segment_size {
            bail!(
                "WAL segment {name} is {} bytes but the cluster's segments are {}; refusing a truncated or foreign segment",
                data.len(),
                info.wal_segment_size
            );
        }
        if let Some(header) = wal::parse_long_header(data)
            && header.system_identifier != info.system_identifier
        {
            bail!(
                "WAL segment {name} comes from database system {} but repository cluster '{}' is system {}; \
                 check that archive_command names the right --cluster",
                header.system_identifier,
                ctx.cluster_name,
                info.system_identifier
            );
        }
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let encoded = object::encode_parallel(data, ctx.repo_config.compress_level, workers)?;
    if ctx.repo.put_wal_new(name, &encoded)? {
        return Ok(());
    }
    // Already archived (a retry after a crash, or two pushers). The stored copy is read
    // back whole, so a damaged copy is never taken for the good one PostgreSQL would
    // then delete.
    let stored = ctx
        .repo
        .get_wal_object(name)?
        .with_context(|| format!("archived {name} vanished while being compared"))?;
    match object::decode(&stored) {
        Ok(plain) if plain[..] == data[..] => {
            tracing::info!("{name} is already archived with identical content");
            Ok(())
        }
        Ok(_) => bail!(
            "{name} is already archived with different content; pgkeep never overwrites archived WAL: \
             check whether another server archives to cluster '{}'",
            ctx.cluster_name
        ),
        Err(e) => bail!(
            "the archived copy of {name} ({}) is damaged ({e}); move it out of the repository and \
             PostgreSQL's next attempt will archive its good copy",
            ctx.repo.describe_wal(name)
        ),
    }
}

/// Fetches one archived WAL file to `dest`. `Ok(false)` when it is not in the archive,
/// which PostgreSQL treats as the normal end of archived WAL. A segment not archived
/// whole comes from receive-wal's streamed copy if there is one: recovery replays it to
/// where streaming stopped, so nothing the receiver confirmed is missing.
pub fn get(ctx: &Context, name: &str, dest: &Path) -> Result<bool> {
    let streamed = matches!(WalFile::parse(name), Some(WalFile::Segment { .. }));
    let data = match ctx.repo.get_wal(name)? {
        Some(data) => data,
        None if streamed => match ctx.repo.get_streamed(name)? {
            Some(data) => {
                tracing::info!("{name} is not archived whole; using receive-wal's streamed copy");
                data
            }
            None => return Ok(false),
        },
        None => return Ok(false),
    };
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = dir.join(format!(".pgkeep.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(&data)?;
        std::fs::rename(&temp, dest)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write {}", dest.display()));
    }
    Ok(true)
}

/// Waits until the named WAL file is in the archive.
pub fn wait_for_wal(ctx: &Context, name: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if ctx.repo.has_wal(name)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
