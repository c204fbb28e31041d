//! `init` and `check`: register the cluster, and prove archiving works end to end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::Context;
use crate::format::wal::WalFile;
use crate::pg::session::Session;
use crate::repo::ClusterInfo;

/// Checks that the server behind `connection` is the cluster configured as `pgdata`.
pub(super) fn check_data_directory(ctx: &Context, session: &mut Session) -> Result<()> {
    let server_dir = session.setting("data_directory")?;
    let same = match (
        Path::new(&server_dir).canonicalize(),
        ctx.cluster.pgdata.canonicalize(),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => Path::new(&server_dir) == ctx.cluster.pgdata,
    };
    if !same {
        bail!(
            "the server at `connection` runs data directory {server_dir}, but cluster '{}' has pgdata = {}; fix one of them",
            ctx.cluster_name,
            ctx.cluster.pgdata.display()
        );
    }
    Ok(())
}

/// Registers the cluster in the repository, or confirms it is the one registered.
pub fn init(ctx: &Context) -> Result<String> {
    let mut session = ctx.connect()?;
    check_data_directory(ctx, &mut session)?;
    let info = ClusterInfo {
        system_identifier: session.system_identifier()?,
        pg_version: session.version_num,
        wal_segment_size: session.wal_segment_size()?,
    };
    match ctx.repo.info()? {
        Some(existing) if existing.system_identifier != info.system_identifier => bail!(
            "repository cluster '{}' belongs to database system {}, but this server is system {}; \
             use another cluster name for a different server",
            ctx.cluster_name,
            existing.system_identifier,
            info.system_identifier
        ),
        Some(_) => Ok(format!(
            "cluster '{}' is already registered (system {})",
            ctx.cluster_name, info.system_identifier
        )),
        None => {
            ctx.repo.create()?;
            ctx.repo.put_info(&info)?;
            Ok(format!(
                "registered cluster '{}': system {}, PostgreSQL {}, {} MiB WAL segments",
                ctx.cluster_name,
                info.system_identifier,
                info.pg_version / 10000,
                info.wal_segment_size >> 20
            ))
        }
    }
}

/// Waits until the named WAL file is in the archive.
pub fn wait_for_wal(ctx: &Context, name: &str, timeout: Duration) -> Result<bool> {
    let file = WalFile::parse(name).expect("PostgreSQL's WAL names parse");
    let key = ctx.repo.wal_key(&file, name);
    let deadline = Instant::now() + timeout;
    loop {
        if ctx.repo.storage.exists(&key)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks the whole chain; returns the list of problems found (empty when all is well).
pub fn check(ctx: &Context) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let info = match ctx.repo.info()? {
        Some(i) => i,
        None => {
            problems.push(format!(
                "cluster '{}' is not registered; run `pgkeep init`",
                ctx.cluster_name
            ));
            return Ok(problems);
        }
    };
    let mut session = ctx.connect()?;
    if let Err(e) = check_data_directory(ctx, &mut session) {
        problems.push(e.to_string());
    }
    let sysid = session.system_identifier()?;
    if sysid != info.system_identifier {
        problems.push(format!(
            "the server is database system {sysid} but repository cluster '{}' is {}; point `connection` at the right server",
            ctx.cluster_name, info.system_identifier
        ));
    }
    let wal_level = session.setting("wal_level")?;
    if wal_level == "minimal" {
        problems.push(
            "wal_level is minimal; set wal_level = replica in postgresql.conf and restart".into(),
        );
    }
    let archive_mode = session.setting("archive_mode")?;
    if archive_mode == "off" {
        problems.push(
            "archive_mode is off; set archive_mode = on in postgresql.conf and restart".into(),
        );
    }
    let archive_command = session.setting("archive_command")?;
    let expected = format!("{} archive-push %p", ctx.self_command()?);
    let names_us = archive_command.contains("archive-push")
        && archive_command.contains(&*ctx.config.path.to_string_lossy())
        && (ctx.config.cluster.len() == 1 || archive_command.contains(ctx.cluster_name));
    if !names_us {
        problems.push(format!(
            "archive_command is '{archive_command}'; set archive_command = '{}' and reload",
            expected.replace('\'', "''")
        ));
    }
    if !problems.is_empty() {
        return Ok(problems);
    }
    if session.in_recovery()? {
        return Ok(problems);
    }
    let segment = session.switch_wal()?;
    let timeout = Duration::from_secs(ctx.config.backup.archive_timeout);
    if !wait_for_wal(ctx, &segment, timeout)? {
        problems.push(format!(
            "WAL segment {segment} did not reach the repository within {} s after a WAL switch; \
             look at the PostgreSQL log for archive_command errors",
            timeout.as_secs()
        ));
    }
    Ok(problems)
}
