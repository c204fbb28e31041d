//! `prove`: a test restore of a backup that shows it restores. The backup is restored
//! into a scratch directory, a scratch server (see [`crate::engine::scratch::server`])
//! recovers it to the target and opens, pgkeep checks it got there (the LSN), runs
//! `pg_amcheck` on every database and the cluster's probes, and the server and the
//! directory go, also on failure or interruption. What it found is recorded in the
//! repository beside the backup (`repo::proof`).
//!
//! Invariants: the scratch server never archives and is never reachable over TCP, so a
//! proof adds nothing to the repository but its record; input that names no backup, or
//! a target that no backup reaches (as `restore` checks it), is an error before
//! anything is restored and records no proof; from the restore on, every failure
//! (damage, missing WAL, a target the WAL does not reach, no room in the scratch
//! directory) is a failed check in the record: the backup did not restore here.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use chrono::Utc;
use indicatif::ProgressBar;

use crate::engine::Context;
use crate::engine::physical::restore::{self, RestoreOptions};
use crate::engine::physical::target::{self, Target, TimelineChoice};
use crate::engine::scratch::server::{self, Purpose, ScratchServer};
use crate::engine::scratch::{self, Scratch};
use crate::engine::wal::scan as walscan;
use crate::engine::wal::timelines;
use crate::format::history::TimelinePath;
use crate::format::lsn::Lsn;
use crate::format::wal::SegmentSize;
use crate::pg::session::Session;
use crate::pg::tools::{self, Tool};
use crate::repo::manifest::Manifest;
use crate::repo::proof::{Check, Proof};

/// What a proof recovers to.
pub enum ProveTarget {
    /// The end of the archived WAL.
    Latest,
    /// A backup picked at random, recovered to a random WAL position before the next
    /// backup on its timeline (the newest: to the end of the WAL).
    Random,
    Given(Target),
}

pub struct ProveOptions {
    /// The backup to restore (default: the newest that reaches the target).
    pub backup: Option<String>,
    pub target: ProveTarget,
    pub timeline: TimelineChoice,
    /// Where the scratch directory is made (default: `TMPDIR`).
    pub scratch_parent: PathBuf,
}

/// How many lines of a failing check's output its message keeps.
const MESSAGE_LINES: usize = 20;

pub fn prove(
    ctx: &Context,
    opts: &ProveOptions,
    restore_bar: &ProgressBar,
    progress: &ProgressBar,
) -> Result<Proof> {
    server::refuse_root("prove")?;
    let major = ctx.repo.require_info()?.pg_version / 10000;
    let postgres = server::server_program(ctx, major, "prove")?;
    let amcheck = tools::find(
        "pg_amcheck",
        major,
        ctx.cluster.pg_bin.as_deref(),
        "to check the recovered copy",
    )?;
    let manifests = ctx.repo.readable_manifests(opts.backup.as_deref())?;
    let (target, timeline, backup) = resolve_target(ctx, opts, &manifests)?;
    let scratch = Scratch::new_in(&opts.scratch_parent, "prove")?;
    server::check_socket_path(scratch.path())?;
    let mut restore_opts = RestoreOptions {
        pgdata: scratch.path().join("data"),
        backup,
        target,
        action: Some("pause".into()),
        timeline,
        tablespace_map: Vec::new(),
        tablespaces_into: Some(scratch.path().join("tablespaces")),
        archive: Some(false),
        only_database: None,
    };
    let manifest = restore::choose_backup(ctx, &restore_opts, &manifests)?;
    restore_opts.backup = Some(manifest.label.clone());
    let mut run = Run::new(manifest, describe(&opts.target, &restore_opts.target));

    let restored = restore::restore(ctx, &restore_opts, restore_bar);
    run.proof.restore_seconds = run.clock.elapsed().as_secs_f64();
    match restored {
        Ok(summary) => {
            run.proof.restored_bytes = summary.bytes;
            run.pass("restore");
        }
        Err(e) => return run.fail("restore", &e).record(ctx),
    }

    let live = server::live_standby_settings(ctx).unwrap_or_else(|e| {
        tracing::info!("{e:#}; the scratch server takes the restored pg_control's settings");
        Vec::new()
    });
    let recovered = ScratchServer::start(
        ctx,
        &postgres,
        &restore_opts.pgdata,
        scratch.path(),
        Purpose::Proof,
        &live,
    )
    .and_then(|mut server| {
        let recovered = server.wait_recovered(progress)?;
        Ok((server, recovered))
    });
    let opened_at = run.clock.elapsed().as_secs_f64();
    let (mut server, recovered) = match recovered {
        Ok(ok) => ok,
        Err(e) => return run.fail("recovery", &e).record(ctx),
    };
    run.proof.recovery_seconds = Some(opened_at - run.proof.restore_seconds);
    let lsn: Option<Lsn> = recovered.lsn.parse().ok();
    run.proof.lsn_reached = lsn;
    run.proof.wal_replayed_bytes = lsn.map(|l| l.0.saturating_sub(manifest.start_lsn.0));
    match reached(ctx, manifest, &restore_opts, lsn) {
        Ok(()) => run.pass("recovery"),
        Err(e) => return run.fail("recovery", &e).record(ctx),
    }
    server.use_bootstrap_superuser()?;

    let checks_started = Instant::now();
    progress.set_message("checking every database with pg_amcheck");
    run.check("pg_amcheck", run_amcheck(&amcheck, &server));
    for probe in &ctx.cluster.probes {
        let name = format!("probe in {}: {}", probe.database, probe.sql);
        progress.set_message(name.clone());
        run.check(&name, run_probe(&server, &probe.database, &probe.sql));
    }
    run.proof.check_seconds = Some(checks_started.elapsed().as_secs_f64());
    drop(server);
    drop(scratch);
    run.record(ctx)
}

/// The target and timeline to restore with, and the backup if one is named or drawn.
fn resolve_target(
    ctx: &Context,
    opts: &ProveOptions,
    manifests: &[Manifest],
) -> Result<(Target, TimelineChoice, Option<String>)> {
    match &opts.target {
        ProveTarget::Latest => Ok((Target::End, opts.timeline, opts.backup.clone())),
        ProveTarget::Given(target) => Ok((target.clone(), opts.timeline, opts.backup.clone())),
        ProveTarget::Random => {
            let candidates: Vec<&Manifest> = match &opts.backup {
                Some(label) => manifests.iter().filter(|m| &m.label == label).collect(),
                None => manifests.iter().collect(),
            };
            if candidates.is_empty() {
                bail!(match &opts.backup {
                    Some(label) =>
                        format!("backup '{label}' does not exist; `pgkeep info` lists the backups"),
                    None =>
                        "the repository has no backups of this cluster yet; run `pgkeep backup` first"
                            .into(),
                });
            }
            let m = candidates[random_below(candidates.len() as u64) as usize];
            // Up to the next backup's start checkpoint on the same timeline (a record that
            // was archived, as that backup needed it), within the WAL archived without a
            // gap from this backup (the WAL window may have removed what lies between).
            let next = manifests
                .iter()
                .filter(|n| n.timeline == m.timeline && n.start_lsn > m.stop_lsn)
                .min_by_key(|n| n.start_lsn);
            let seg = SegmentSize(m.wal_segment_size);
            let archive = walscan::archived_segments(ctx, seg)?;
            let archived_to = walscan::path_end(
                &archive,
                seg,
                &TimelinePath::single(m.timeline),
                seg.segno(m.start_lsn),
            )
            .map(|end| seg.start_lsn(end));
            let upper = match (next, archived_to) {
                (Some(n), Some(a)) => Some(n.checkpoint_lsn.min(a)),
                _ => None,
            };
            Ok(match upper.and_then(|u| u.0.checked_sub(m.stop_lsn.0)) {
                Some(span) => {
                    let at = Lsn(m.stop_lsn.0 + random_below(span + 1));
                    (
                        Target::Lsn(at),
                        TimelineChoice::Current,
                        Some(m.label.clone()),
                    )
                }
                None if next.is_some() => (
                    Target::Immediate,
                    TimelineChoice::Current,
                    Some(m.label.clone()),
                ),
                None => (Target::End, opts.timeline, Some(m.label.clone())),
            })
        }
    }
}

/// A uniformly random number below `n` (at least 1).
fn random_below(n: u64) -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system's generator does not fail on Linux; a fixed draw would still prove.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes) % n.max(1)
}

/// The target as recorded: as given, and what `random` drew.
fn describe(asked: &ProveTarget, target: &Target) -> String {
    let drawn = match target {
        Target::End => "latest".to_string(),
        Target::Immediate => "immediate".to_string(),
        Target::Time(t) => format!("time {}", target::format_time(t)),
        Target::Xid(x) => format!("xid {x}"),
        Target::Name(n) => format!("name {n}"),
        Target::Lsn(l) => format!("lsn {l}"),
    };
    match asked {
        ProveTarget::Random => format!("random: {drawn}"),
        _ => drawn,
    }
}

/// Whether recovery ended where it had to get: past the backup's consistency point always, to the position asked for, and for the end of the WAL into
/// the newest archived segment of the path it followed.
fn reached(
    ctx: &Context,
    manifest: &Manifest,
    opts: &RestoreOptions,
    lsn: Option<Lsn>,
) -> Result<()> {
    let Some(lsn) = lsn else {
        bail!("the scratch server reported no replay position");
    };
    if lsn < manifest.stop_lsn {
        bail!(
            "recovery ended at {lsn}, before backup {} became consistent at {}",
            manifest.label,
            manifest.stop_lsn
        );
    }
    match &opts.target {
        Target::Lsn(target) if lsn < *target => {
            bail!("recovery ended at {lsn}, before the target {target}")
        }
        Target::End => {
            let seg = SegmentSize(manifest.wal_segment_size);
            let paths = timelines::timeline_paths(&ctx.repo)?;
            let path = target::target_path(&paths, opts.timeline, std::slice::from_ref(manifest))
                .unwrap_or_else(|| TimelinePath::single(manifest.timeline));
            let archive = walscan::archived_segments(ctx, seg)?;
            if let Some(end) =
                walscan::path_end(&archive, seg, &path, seg.segno(manifest.start_lsn))
                && lsn < seg.start_lsn(end)
            {
                bail!(
                    "recovery ended at {lsn}, before the newest archived segment {} of the WAL it followed",
                    seg.name(path.timeline_of_segment(seg, end), end)
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `pg_amcheck` of every database (heap and B-tree indexes), installing `amcheck` where
/// it is missing (the copy is writable and thrown away).
fn run_amcheck(amcheck: &Tool, server: &ScratchServer) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = amcheck.command(&server.params("postgres"), "postgres");
    cmd.args(["--all", "--install-missing", "--jobs", &jobs.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = scratch::spawn(&mut cmd)?.output()?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        bail!("{}", first_lines(&text));
    }
    Ok(())
}

/// Runs a probe, which must return one row holding true.
fn run_probe(server: &ScratchServer, database: &str, sql: &str) -> Result<()> {
    let mut session = Session::connect(&server.params(database))?;
    let rows = session.rows(&format!(
        "SELECT ok::text FROM ({}) AS probe(ok)",
        sql.trim().trim_end_matches(';')
    ))?;
    match rows.as_slice() {
        [row] if row.len() == 1 && row[0] == "true" => Ok(()),
        [row] if row.len() == 1 => bail!("it returned {}, not true", row[0]),
        _ => bail!("it returned {} rows, not one", rows.len()),
    }
}

fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines[..lines.len().min(MESSAGE_LINES)].join("\n");
    if lines.len() > MESSAGE_LINES {
        out.push_str(&format!("\n({} more lines)", lines.len() - MESSAGE_LINES));
    }
    out
}

/// A proof being made: its record, and the clock its phases are timed by.
struct Run {
    proof: Proof,
    clock: Instant,
}

impl Run {
    fn new(manifest: &Manifest, target: String) -> Run {
        let now = Utc::now();
        Run {
            proof: Proof {
                backup: manifest.label.clone(),
                target,
                started: now,
                finished: now,
                passed: true,
                lsn_reached: None,
                restored_bytes: 0,
                wal_replayed_bytes: None,
                restore_seconds: 0.0,
                recovery_seconds: None,
                check_seconds: None,
                checks: Vec::new(),
                host: crate::os::host_name(),
            },
            clock: Instant::now(),
        }
    }

    fn pass(&mut self, name: &str) {
        self.proof.checks.push(Check {
            name: name.to_string(),
            passed: true,
            message: String::new(),
        });
    }

    fn check(&mut self, name: &str, result: Result<()>) {
        match result {
            Ok(()) => self.pass(name),
            Err(e) => {
                self.fail(name, &e);
            }
        }
    }

    fn fail(&mut self, name: &str, error: &anyhow::Error) -> &mut Run {
        self.proof.passed = false;
        self.proof.checks.push(Check {
            name: name.to_string(),
            passed: false,
            message: format!("{error:#}"),
        });
        self
    }

    /// Stores the proof in the repository and returns it.
    fn record(&mut self, ctx: &Context) -> Result<Proof> {
        self.proof.finished = Utc::now();
        ctx.repo.put_proof(&self.proof).with_context(|| {
            format!(
                "the proof of backup {} ran, but its record could not be stored",
                self.proof.backup
            )
        })?;
        Ok(self.proof.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_is_cut() {
        let text: String = (0..30).map(|i| format!("line {i}\n\n")).collect();
        let cut = first_lines(&text);
        assert!(cut.starts_with("line 0\nline 1\n"));
        assert!(cut.ends_with("line 19\n(10 more lines)"));
        assert_eq!(first_lines("one\n"), "one");
    }

    #[test]
    fn random_draws_stay_below() {
        assert!((0..100).all(|_| random_below(3) < 3));
        assert_eq!(random_below(0), 0);
    }

    #[test]
    fn targets_are_described_as_drawn() {
        let lsn = Target::Lsn("0/3000060".parse().unwrap());
        assert_eq!(
            describe(&ProveTarget::Random, &lsn),
            "random: lsn 0/3000060"
        );
        assert_eq!(describe(&ProveTarget::Latest, &Target::End), "latest");
    }
}
