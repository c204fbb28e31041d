//! What a restored directory is told: the recovery settings in `postgresql.auto.conf`
//! and the `tablespace_map` naming the tablespaces' new locations.

use std::fs::{self, File};
use std::path::Path;

use anyhow::{Context as _, Result};

use super::files::sync_file;
use super::{Plan, RestoreOptions};
use crate::engine::Context;
use crate::engine::physical::target::{self, Target, TimelineChoice};
use crate::engine::wal::spool;
use crate::format::{guc, tablespace_map};
use crate::repo::manifest::Manifest;

/// Settings pgkeep owns in `postgresql.auto.conf`; old values are removed so that a
/// leftover target from an earlier restore cannot conflict. (`archive_mode` is pgkeep's
/// only on a line it marked with [`ARCHIVE_OFF_MARK`].)
const RECOVERY_KEYS: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_lsn",
    "recovery_target_action",
    "recovery_target_timeline",
    "recovery_target_inclusive",
];

/// Ends the `archive_mode = 'off'` line that `--archive off` writes, so a later restore
/// of a backup of that copy knows the line is pgkeep's and not the DBA's.
const ARCHIVE_OFF_MARK: &str = "# pgkeep restore --archive off";
const SETTINGS_HEADER: &str = "# Recovery settings added by pgkeep restore";

/// Whether a line of `postgresql.auto.conf` is one an earlier pgkeep restore wrote.
fn is_pgkeep_line(line: &str) -> bool {
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    RECOVERY_KEYS.contains(&key.as_str())
        || line.starts_with(SETTINGS_HEADER)
        || (key == "archive_mode" && line.trim_end().ends_with(ARCHIVE_OFF_MARK))
}

/// Appends the recovery settings to `postgresql.auto.conf`, dropping earlier ones.
pub(super) fn write_recovery_settings(
    ctx: &Context,
    pgdata: &Path,
    manifest: &Manifest,
    opts: &RestoreOptions,
    archiving: bool,
) -> Result<()> {
    let path = pgdata.join("postgresql.auto.conf");
    // Bytes, not text: every other setting must survive whatever its encoding.
    let existing = fs::read(&path).unwrap_or_default();
    let mut kept: Vec<u8> = Vec::with_capacity(existing.len());
    for line in existing.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if !is_pgkeep_line(&String::from_utf8_lossy(line)) {
            kept.extend_from_slice(line);
            kept.push(b'\n');
        }
    }
    let mut text = String::new();
    text.push_str(&format!("{SETTINGS_HEADER} of backup {}\n", manifest.label));
    if !archiving {
        text.push_str(&format!("archive_mode = 'off' {ARCHIVE_OFF_MARK}\n"));
    }
    if ctx.config.archive.asynchronous
        && let Err(e) = spool::clear_prefetched(&ctx.config.archive, ctx.cluster_name, pgdata)
    {
        tracing::warn!("{e:#}; remove it before starting the restored server");
    }
    text.push_str(&format!(
        "restore_command = {}\n",
        guc::quote(&restore_command(ctx, "")?)
    ));
    let target = match &opts.target {
        Target::End => None,
        Target::Immediate => Some(("recovery_target", "immediate".to_string())),
        Target::Time(t) => Some(("recovery_target_time", target::format_time(t))),
        Target::Xid(x) => Some(("recovery_target_xid", x.to_string())),
        Target::Name(n) => Some(("recovery_target_name", n.clone())),
        Target::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
    };
    if let Some((key, value)) = target {
        text.push_str(&format!("{key} = {}\n", guc::quote(&value)));
        if let Some(action) = &opts.action {
            text.push_str(&format!(
                "recovery_target_action = {}\n",
                guc::quote(action)
            ));
        }
    }
    let timeline = match opts.timeline {
        TimelineChoice::Latest => "latest".to_string(),
        TimelineChoice::Current => "current".to_string(),
        TimelineChoice::Id(n) => n.to_string(),
    };
    text.push_str(&format!(
        "recovery_target_timeline = {}\n",
        guc::quote(&timeline)
    ));
    kept.extend_from_slice(text.as_bytes());
    fs::write(&path, kept).with_context(|| format!("cannot write {}", path.display()))?;
    File::open(&path)?.sync_all()?;
    let signal = pgdata.join("recovery.signal");
    File::create(&signal)?.sync_all()?;
    Ok(())
}

/// The `restore_command` that fetches WAL from this repository, with `options` for
/// archive-get. Restored from another than the first repository (which failed, or was
/// passed over by --repo), recovery reads WAL from that one only.
pub fn restore_command(ctx: &Context, options: &str) -> Result<String> {
    let mut pgkeep = ctx.self_command()?;
    if ctx.repo_number != 1 {
        pgkeep.push_str(&format!(" --repo {}", ctx.repo_number));
    }
    Ok(format!(
        "{} archive-get {options}%f \"%p\"",
        guc::escape_percent(&pgkeep)
    ))
}

/// `tablespace_map` naming the tablespaces' new locations.
pub(super) fn write_tablespace_map(plan: &Plan) -> Result<()> {
    let entries: Vec<tablespace_map::Entry> = plan
        .locations
        .iter()
        .map(|(&oid, loc)| tablespace_map::Entry {
            oid,
            path: loc.clone(),
        })
        .collect();
    let path = plan.pgdata.join("tablespace_map");
    fs::write(&path, tablespace_map::render(&entries))?;
    sync_file(&path)
}
