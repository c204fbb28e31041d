//! The run history: every backup, dump, expire, verify and proof run recorded with its
//! outcome (`repo::history`), so the backup-history table DBAs keep by hand is kept for
//! them.

use anyhow::Result;
use chrono::Utc;

use crate::engine::Context;
use crate::engine::logical::dump::DumpReport;
use crate::engine::retention::expire::ExpireReport;
use crate::engine::retention::policy::{BackupFacts, Plan};
use crate::engine::verify::VerifyReport;
use crate::repo::history::Run;
use crate::repo::manifest::Manifest;
use crate::repo::proof::Proof;

/// Runs `job` and records it in the history of `ctx`'s repository whatever its outcome;
/// `facts` fills in what a finished run made (and may judge it failed, as a proof that
/// found a problem). A record that cannot be stored is a warning: the caller gets the
/// job's own outcome.
pub fn recorded<T>(
    ctx: &Context,
    kind: &str,
    job: impl FnOnce() -> Result<T>,
    facts: impl FnOnce(&T, &mut Run),
) -> Result<T> {
    let mut run = Run {
        kind: kind.to_string(),
        started: Utc::now(),
        passed: true,
        host: crate::os::host_name(),
        ..Run::default()
    };
    let outcome = job();
    run.finished = Utc::now();
    match &outcome {
        Ok(made) => facts(made, &mut run),
        Err(e) => {
            run.passed = false;
            run.error = Some(format!("{e:#}"));
        }
    }
    if let Err(e) = ctx.repo.put_run(&run) {
        tracing::warn!("the {kind} run is not in the history: {e:#}");
    }
    outcome
}

/// What a backup made: the manifest it published.
pub fn backup_facts(m: &Manifest, run: &mut Run) {
    run.label = Some(m.label.clone());
    run.size = Some(m.size);
    run.stored = Some(m.stored_size);
    run.start_lsn = Some(m.start_lsn);
    run.stop_lsn = Some(m.stop_lsn);
    run.summary = match &m.parent {
        Some(p) => format!("incremental from {p}, {} files", m.files.len()),
        None => format!("full, {} files", m.files.len()),
    };
}

/// What a dump run made: one dump, or a `--all` run headed by its globals.
pub fn dump_facts(dumps: &[DumpReport], run: &mut Run) {
    let head = dumps.iter().find(|d| d.globals).or(dumps.first());
    run.label = head.map(|d| d.label.clone());
    run.size = Some(dumps.iter().map(|d| d.size).sum());
    run.stored = Some(dumps.iter().map(|d| d.stored_size).sum());
    run.summary = match dumps {
        [d] if d.globals => "the globals".into(),
        [d] => format!("database {}", d.database),
        _ => format!(
            "{} databases and the globals",
            dumps.len().saturating_sub(1)
        ),
    };
}

/// What an expire removed.
pub fn expire_facts(r: &ExpireReport, run: &mut Run) {
    let removed = |facts: &[BackupFacts], plan: &Plan| {
        facts
            .iter()
            .filter(|b| !plan.keep.contains_key(&b.label))
            .count()
    };
    let dumps: usize = r.dumps.iter().map(|d| removed(&d.dumps, &d.plan)).sum();
    run.freed = r.gc.as_ref().map(|gc| gc.bytes_freed);
    run.summary = format!(
        "removed {} backups, {dumps} logical backups and {} WAL files{}",
        removed(&r.backups, &r.plan),
        r.wal_removed.len(),
        if r.gc_deferred {
            "; collection deferred (a backup, restore or verify was running)"
        } else {
            ""
        }
    );
}

/// What a verify found: a problem fails the run.
pub fn verify_facts(r: &VerifyReport, run: &mut Run) {
    run.passed = r.problems.is_empty();
    run.error = r
        .problems
        .first()
        .map(|p| format!("{} ({} problems)", p.what, r.problems.len()));
    run.summary = format!(
        "{} backups, {} logical backups, {} chunks, {} WAL files",
        r.backups, r.dumps, r.chunks, r.wal_files
    );
}

/// What a proof found: a failed check fails the run.
pub fn proof_facts(p: &Proof, run: &mut Run) {
    run.label = Some(p.backup.clone());
    run.passed = p.passed;
    run.error = p.failure();
    run.size = Some(p.restored_bytes);
    run.stop_lsn = p.lsn_reached;
    run.summary = format!(
        "target {}{}",
        p.target,
        p.rto_seconds()
            .map(|s| format!(", RTO {s:.1} s"))
            .unwrap_or_default()
    );
}
