//! `init` and `check`: register the cluster, and prove archiving works end to end.

mod hazards;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::wal::archive::wait_for_wal;
use super::wal::receive;
use super::{Context, shell_quote};
use crate::format::guc;
use crate::pg::session::Session;
use crate::repo::ClusterInfo;

/// Registers the cluster in the repository, or confirms it is the one registered.
pub fn init(ctx: &Context) -> Result<String> {
    let mut session = ctx.connect()?;
    ctx.check_data_directory(&mut session)?;
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

/// What `check` found: problems (each stops archiving or backups, exit 1) and warnings
/// (worth knowing, nothing fails).
#[derive(Default)]
pub struct CheckReport {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// The argument `archive_command` passes to `archive-push`, unquoted.
fn archive_push_argument(archive_command: &str) -> Option<String> {
    let rest = archive_command.split_once("archive-push")?.1;
    let word = rest.split_whitespace().next()?;
    Some(word.trim_matches(|c| c == '"' || c == '\'').to_string())
}

/// What is wrong with `archive_command` for this cluster, with the fix.
fn archive_command_problem(ctx: &Context, archive_command: &str) -> Result<Option<String>> {
    let expected = format!(
        "{} archive-push %p",
        guc::escape_percent(&ctx.self_command()?)
    );
    let config = ctx.config.path.to_string_lossy();
    let names_config = [config.to_string(), shell_quote(&config)].iter().any(|c| {
        archive_command.contains(c.as_str()) || archive_command.contains(&guc::escape_percent(c))
    });
    let names_us = archive_command.contains("archive-push")
        && names_config
        && (ctx.config.cluster.len() == 1 || archive_command.contains(ctx.cluster_name));
    let fix = format!("set archive_command = {} and reload", guc::quote(&expected));
    if !names_us {
        return Ok(Some(format!(
            "archive_command is '{archive_command}'; {fix}"
        )));
    }
    match archive_push_argument(archive_command).as_deref() {
        Some("%p") => Ok(None),
        Some(other) => Ok(Some(format!(
            "archive_command passes {other} to archive-push, which needs the path of the WAL file (%p); {fix}"
        ))),
        None => Ok(Some(format!(
            "archive_command gives archive-push no file; {fix}"
        ))),
    }
}

/// A setting changed in the config file that needs a restart to apply.
fn pending_restart(session: &mut Session, name: &str) -> Result<bool> {
    Ok(session.text(&format!(
        "SELECT pending_restart::text FROM pg_settings WHERE name = '{name}'"
    ))? == "true")
}

/// Checks the whole chain: the repository, the server, its archiving settings, and that
/// a WAL segment actually arrives.
pub fn check(ctx: &Context) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let problems = &mut report.problems;
    let info = match ctx.repo.info()? {
        Some(i) => i,
        None => {
            problems.push(format!(
                "cluster '{}' is not registered; run `pgkeep init`",
                ctx.cluster_name
            ));
            return Ok(report);
        }
    };
    let mut session = ctx.connect()?;
    if let Err(e) = ctx.check_data_directory(&mut session) {
        problems.push(e.to_string());
    }
    let sysid = session.system_identifier()?;
    if sysid != info.system_identifier {
        problems.push(format!(
            "the server is database system {sysid} but repository cluster '{}' is {}; point `connection` at the right server",
            ctx.cluster_name, info.system_identifier
        ));
    }
    let restart = |session: &mut Session, name: &str| -> Result<&'static str> {
        Ok(if pending_restart(session, name)? {
            " (it is set in the config file, but takes effect only when PostgreSQL restarts)"
        } else {
            ""
        })
    };
    if session.setting("wal_level")? == "minimal" {
        let pending = restart(&mut session, "wal_level")?;
        problems.push(format!(
            "wal_level is minimal{pending}; set wal_level = replica in postgresql.conf and restart PostgreSQL"
        ));
    }
    let mut archiving = Vec::new();
    if session.setting("archive_mode")? == "off" {
        let pending = restart(&mut session, "archive_mode")?;
        archiving.push(format!(
            "archive_mode is off{pending}; set archive_mode = on in postgresql.conf and restart PostgreSQL"
        ));
    }
    let archive_command = session.setting("archive_command")?;
    archiving.extend(archive_command_problem(ctx, &archive_command)?);
    wal_delivery(ctx, &mut session, archiving, &mut report)?;
    if session.setting("data_checksums")? != "on" {
        report.warnings.push(
            "the cluster has no data checksums, so backups cannot validate pages: damage on disk \
             is backed up unnoticed; enable them with pg_checksums --enable (server stopped)"
                .into(),
        );
    }
    hazards::check(ctx, &mut session, &mut report)?;
    let failing = hazards::archiver_failing(&mut session)?;
    if !report.problems.is_empty() || session.in_recovery()? {
        // No WAL switch to show whether archiving works now: what the archiver said last.
        report.problems.extend(failing);
        return Ok(report);
    }
    let failed_before = archiver_failures(&mut session)?;
    let segment = session.switch_wal()?;
    let stuck = wait_for_archiving(ctx, &mut session, &segment, failed_before)?;
    // A failure that a switch since shows fixed is history, not a problem.
    report.problems.extend(stuck.map(|p| match failing {
        Some(f) => format!("{p} ({f})"),
        None => p,
    }));
    Ok(report)
}

/// Whether WAL reaches the repository: through `archive_command` (`archiving` holds
/// what is wrong with it) or receive-wal's slot. Archiving that is not set up is no
/// problem while receive-wal streams over its slot, as on a backup host.
fn wal_delivery(
    ctx: &Context,
    session: &mut Session,
    archiving: Vec<String>,
    report: &mut CheckReport,
) -> Result<()> {
    let slot = receive::slot_of(&ctx.config.receive, ctx.cluster_name);
    let active = session.text(&format!(
        "SELECT coalesce((SELECT active::text FROM pg_replication_slots WHERE slot_name = '{}'), 'none')",
        slot.replace('\'', "''")
    ))?;
    match (active.as_str(), archiving.is_empty()) {
        ("none", _) | (_, true) => report.problems.extend(archiving),
        ("true", false) => report.warnings.push(format!(
            "WAL reaches the repository only through receive-wal (slot {slot}), as archiving is not set up: {}",
            archiving.join("; ")
        )),
        _ => {
            report.problems.push(format!(
                "receive-wal's slot {slot} is not in use and archiving is not set up, so no WAL reaches the repository \
                 (and the slot holds WAL on the server): start `pgkeep receive-wal`, or set up archiving"
            ));
            report.problems.extend(archiving);
        }
    }
    Ok(())
}

/// How often `archive_command` has failed, from `pg_stat_archiver`.
fn archiver_failures(session: &mut Session) -> Result<u64> {
    Ok(session
        .text("SELECT failed_count::text FROM pg_stat_archiver")?
        .parse()?)
}

/// Waits until `segment` is in the repository; the problem if it does not get there.
/// Returns early when the archiver reports a failure, which it does within a second or
/// so, rather than wait out the timeout.
fn wait_for_archiving(
    ctx: &Context,
    session: &mut Session,
    segment: &str,
    failed_before: u64,
) -> Result<Option<String>> {
    let timeout = Duration::from_secs(ctx.config.backup.archive_timeout);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if wait_for_wal(ctx, segment, Duration::from_secs(1))? {
            return Ok(None);
        }
        if archiver_failures(session)? > failed_before {
            let failed =
                session.text("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver")?;
            return Ok(Some(format!(
                "archive_command failed for {failed}; the PostgreSQL log has the command's error \
                 (look for \"archive command failed\"), fix it and run `pgkeep check` again"
            )));
        }
    }
    Ok(Some(format!(
        "WAL segment {segment} did not reach the repository within {} s after a WAL switch; \
         look at the PostgreSQL log for archive_command errors, or at receive-wal's log",
        timeout.as_secs()
    )))
}
