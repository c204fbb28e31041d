//! `prove` (test restores and what they found), `status` and `history`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Cli, PointArgs, parse_point, progress, reading_context, repo_numbers};
use crate::config::Config;
use crate::engine::operations::history;
use crate::engine::operations::prove::{self, ProveOptions, ProveTarget};
use crate::engine::operations::status::{self, Level, StatusReport, duration};
use crate::engine::physical::target::{Target, TimelineChoice};
use crate::engine::{Context, human_bytes};
use crate::repo::OpenMode;
use crate::repo::history::Run;
use crate::repo::proof::Proof;

#[derive(Args)]
pub struct ProveArgs {
    /// The backup to prove (default: the newest that reaches the target).
    #[arg(long)]
    backup: Option<String>,
    /// latest: recover to the end of the archived WAL; random: a random backup to a
    /// random WAL position before the next backup; immediate: stop at consistency.
    #[arg(long, value_parser = ["latest", "random", "immediate"], conflicts_with = "target_point")]
    target: Option<String>,
    #[command(flatten)]
    point: PointArgs,
    /// Timeline to follow: latest, current or a number.
    #[arg(long, default_value = "latest")]
    target_timeline: String,
    /// Where the scratch copy is restored (default: TMPDIR).
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
}

pub fn run_prove(cli: &Cli, config: &Config, args: &ProveArgs) -> Result<i32> {
    let target = match (parse_point(&args.point)?, args.target.as_deref()) {
        (Some(point), _) => ProveTarget::Given(point),
        (None, Some("random")) => ProveTarget::Random,
        (None, Some("immediate")) => ProveTarget::Given(Target::Immediate),
        (None, _) => ProveTarget::Latest,
    };
    let opts = ProveOptions {
        backup: args.backup.clone(),
        target,
        timeline: args
            .target_timeline
            .parse::<TimelineChoice>()
            .map_err(anyhow::Error::msg)?,
        scratch_parent: args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let ctx = reading_context(cli, config)?;
    let restore_bar = progress::bar("restore");
    let spinner = progress::spinner();
    let proof = history::recorded(
        &ctx,
        "prove",
        || prove::prove(&ctx, &opts, &restore_bar, &spinner),
        history::proof_facts,
    )?;
    spinner.finish_and_clear();
    print_proof(&proof);
    Ok(if proof.passed { 0 } else { 1 })
}

fn print_proof(p: &Proof) {
    let verdict = if p.passed { "passed" } else { "FAILED" };
    println!(
        "proof of backup {} (target {}) {verdict}",
        p.backup, p.target
    );
    println!(
        "  restore   {} in {:.1} s",
        human_bytes(p.restored_bytes),
        p.restore_seconds
    );
    if let (Some(seconds), Some(lsn)) = (p.recovery_seconds, p.lsn_reached) {
        println!(
            "  recovery  to {lsn} ({} of WAL from the backup's start) in {seconds:.1} s",
            human_bytes(p.wal_replayed_bytes.unwrap_or(0))
        );
    }
    if let Some(rto) = p.rto_seconds() {
        println!("  RTO       {rto:.1} s until the copy was open");
    }
    if let Some(seconds) = p.check_seconds {
        println!("  checks    {seconds:.1} s");
    }
    for c in &p.checks {
        if c.passed {
            println!("    ok      {}", c.name);
        } else {
            println!(
                "    FAILED  {}: {}",
                c.name,
                c.message.replace('\n', "\n            ")
            );
        }
    }
}

/// Status of the cluster in each repository; with `--nagios` one line for all.
pub fn run_status(cli: &Cli, config: &Config, json: bool, nagios: bool) -> Result<i32> {
    let now = chrono::Utc::now();
    let gathered: Result<Vec<StatusReport>> = repo_numbers(cli, config)
        .into_iter()
        .map(|n| {
            Context::on_repository(config, cli.cluster.as_deref(), n, OpenMode::Existing)
                .and_then(|ctx| status::status(&ctx, now))
                .map_err(|e| e.context(format!("repository {n}")))
        })
        .collect();
    let reports = match gathered {
        Err(e) if nagios => {
            println!("PGKEEP UNKNOWN - {}", nagios_text(&format!("{e:#}")));
            return Ok(Level::Unknown.nagios_code());
        }
        other => other?,
    };
    let worst = reports
        .iter()
        .map(|r| r.level)
        .max()
        .unwrap_or(Level::Unknown);
    if nagios {
        println!("{}", nagios_line(&reports, worst));
        return Ok(worst.nagios_code());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(0);
    }
    for r in &reports {
        print!("{}", render_status(r));
    }
    Ok(0)
}

fn render_status(r: &StatusReport) -> String {
    let mut out = format!(
        "cluster {}, repository {}: {}\n",
        r.cluster,
        r.repository,
        r.level.name()
    );
    for f in &r.findings {
        out.push_str(&format!(
            "  {:<9} {:<12} {}\n",
            f.level.name(),
            f.check,
            f.message
        ));
    }
    if let Some(a) = &r.archiver {
        out.push_str(&format!(
            "  archiver: {} archived (last {} at {}), {} failed (last {} at {})\n",
            a.archived_count,
            a.last_archived_wal.as_deref().unwrap_or("none"),
            a.last_archived_time.map_or("-".into(), |t| t
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()),
            a.failed_count,
            a.last_failed_wal.as_deref().unwrap_or("none"),
            a.last_failed_time.map_or("-".into(), |t| t
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()),
        ));
    }
    if let Some(d) = &r.newest_dump {
        out.push_str(&format!(
            "  newest logical backup: {} ({} ago)\n",
            d.label,
            duration(d.age_seconds)
        ));
    }
    match r.estimated_rto_seconds {
        Some(s) => out.push_str(&format!(
            "  estimated RTO now: {} (restore of the newest backup and replay of the WAL since, at the rates the newest passed proof measured)\n",
            duration(s)
        )),
        None => out.push_str("  estimated RTO now: unknown until a proof passes (`pgkeep prove`)\n"),
    }
    out
}

/// Text for Nagios' first line: one line, and no `|`, which starts performance data.
fn nagios_text(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

/// Nagios' plugin output: status, the matters not OK, and performance data.
fn nagios_line(reports: &[StatusReport], worst: Level) -> String {
    let mut problems = Vec::new();
    let mut perf = Vec::new();
    for r in reports {
        problems.extend(
            r.findings
                .iter()
                .filter(|f| f.level != Level::Ok)
                .map(|f| format!("{}: {}", r.cluster, nagios_text(&f.message))),
        );
        let tag = if reports.len() > 1 {
            format!(
                "{}_",
                r.repository
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            )
        } else {
            String::new()
        };
        if let Some(b) = &r.newest_backup {
            perf.push(format!("{tag}backup_age={:.0}s", b.age_seconds));
        }
        if let Some(rpo) = &r.rpo {
            perf.push(format!("{tag}rpo_bytes={}B", rpo.bytes));
            if let Some(s) = rpo.seconds {
                perf.push(format!("{tag}rpo={s:.0}s"));
            }
        }
        if let Some(p) = &r.last_proof {
            perf.push(format!("{tag}proof_age={:.0}s", p.age_seconds));
        }
    }
    let summary = if problems.is_empty() {
        "backups, WAL and proofs are within their thresholds".to_string()
    } else {
        problems.join("; ")
    };
    format!("PGKEEP {} - {summary} | {}", worst.name(), perf.join(" "))
}

/// The run history as a table, oldest first; a failed run's error on the next line.
pub fn render_history(cluster: &str, runs: &[Run]) -> String {
    let mut out = format!("runs of cluster {cluster} (times UTC):\n");
    if runs.is_empty() {
        out.push_str("  none yet\n");
    }
    for r in runs {
        let lsns = match (r.start_lsn, r.stop_lsn) {
            (Some(a), Some(b)) => format!("  lsn {a} .. {b}"),
            (None, Some(b)) => format!("  lsn {b}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  {}  {:<6}  {:<6}  {:>9}  {}{}{}{}{}  {}\n",
            r.started.format("%Y-%m-%d %H:%M:%S"),
            r.kind,
            if r.passed { "ok" } else { "FAILED" },
            duration(r.seconds()),
            r.label.as_deref().unwrap_or("-"),
            r.size
                .map(|b| format!("  size {}", human_bytes(b)))
                .unwrap_or_default(),
            r.stored
                .map(|b| format!("  stored {}", human_bytes(b)))
                .unwrap_or_default(),
            r.freed
                .map(|b| format!("  freed {}", human_bytes(b)))
                .unwrap_or_default(),
            lsns,
            r.summary
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("      {}\n", e.replace('\n', "\n      ")));
        }
    }
    out
}
