//! `prove`: test restores and what they found.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Cli, PointArgs, parse_point, progress};
use crate::config::Config;
use crate::engine::operations::prove::{self, ProveOptions, ProveTarget};
use crate::engine::physical::target::{Target, TimelineChoice};
use crate::engine::{Context, human_bytes};
use crate::repo::OpenMode;
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
    let ctx = Context::on_repository(
        config,
        cli.cluster.as_deref(),
        cli.repo.unwrap_or(1),
        OpenMode::Existing,
    )?;
    let restore_bar = progress::bar("restore");
    let spinner = progress::spinner();
    let proof = prove::prove(&ctx, &opts, &restore_bar, &spinner)?;
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
