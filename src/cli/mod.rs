//! Command-line parsing, output and exit codes. Everything else lives in the library.

mod logical;
mod operations;
mod progress;
mod table;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigSource, Encryption};
use crate::engine::operations::history;
use crate::engine::physical::backup;
use crate::engine::physical::restore::{self, RestoreOptions};
use crate::engine::physical::target::{self, Target, TimelineChoice};
use crate::engine::repositories::Repositories;
use crate::engine::retention::expire;
use crate::engine::wal::{archive, receive, spool};
use crate::engine::{Context, human_bytes, info, setup, verify};
use crate::repo::OpenMode;
use crate::repo::encryption::secret::SecretSource;

/// Where the config is looked for when neither --config nor PGKEEP_CONFIG says.
const DEFAULT_CONFIG: &str = "/etc/pgkeep/pgkeep.toml";

/// Exit code for archive-get failures other than "not archived": PostgreSQL treats
/// codes above 125 as fatal and stops recovery, instead of taking the failure as the
/// end of WAL and promoting a database that is missing data.
const EXIT_STOP_RECOVERY: i32 = 126;

#[derive(Parser)]
#[command(
    name = "pgkeep",
    version,
    about = "PostgreSQL backup and point-in-time recovery"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "PGKEEP_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Cluster (a [cluster.NAME] section); may be left out when the config has one.
    #[arg(long, global = true)]
    cluster: Option<String>,
    /// Work on this repository only (its place in the config, from 1); by default
    /// commands work on every repository, and readers use the first that has the data.
    #[arg(long, global = true)]
    repo: Option<usize>,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register the cluster in the repository (creating the repository if needed).
    Init,
    /// Check configuration, connection, archiving settings, and that WAL arrives.
    Check,
    /// Take an online backup: incremental when the repository has a parent for it.
    Backup {
        /// Read and hash every file, taking nothing from a parent backup.
        #[arg(long)]
        full: bool,
    },
    /// Archive one WAL file (for archive_command = '... archive-push %p').
    ArchivePush { path: PathBuf },
    /// Fetch one archived WAL file (for restore_command = '... archive-get %f "%p"').
    ArchiveGet {
        name: String,
        dest: PathBuf,
        /// Fetch only this file, even with asynchronous archiving (no background
        /// fetcher, no spool): for a scratch server that leaves nothing behind.
        #[arg(long, hide = true)]
        no_get_ahead: bool,
    },
    /// The background pusher of asynchronous archive-push (started by archive-push).
    #[command(hide = true)]
    ArchivePusher { pg_wal: PathBuf },
    /// The background WAL fetcher of asynchronous archive-get (started by archive-get).
    #[command(hide = true)]
    ArchiveFetcher { after: String },
    /// Stream WAL from the server into the repository over a replication slot (runs in
    /// the foreground until SIGINT or SIGTERM, reconnecting when the server goes away).
    ReceiveWal {
        /// Confirm each flush at once, to serve as a synchronous standby (also
        /// `[receive] synchronous`).
        #[arg(long)]
        synchronous: bool,
        /// Seconds between status updates to the server.
        #[arg(long, default_value_t = 10)]
        status_interval: u64,
    },
    /// Restore a backup into a new data directory, set up to recover to a target.
    Restore(Box<RestoreArgs>),
    /// Show backups, the WAL archive and the recoverable window.
    Info {
        /// Machine-readable output (shape documented in docs/INFO-JSON.md).
        #[arg(long)]
        json: bool,
    },
    /// Re-read and check every chunk and WAL file, and WAL continuity.
    Verify,
    /// Every backup, dump, expire, verify and proof run, with its times, sizes, LSNs and
    /// result, oldest first.
    History {
        /// Machine-readable output (an array of runs).
        #[arg(long)]
        json: bool,
    },
    /// RPO, RTO, the recoverable window, the newest backup and proof, each judged OK,
    /// WARNING or CRITICAL against [status] (exit 0, or with --nagios Nagios' codes).
    Status {
        /// Machine-readable output.
        #[arg(long, conflicts_with = "nagios")]
        json: bool,
        /// One line with performance data, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
        #[arg(long)]
        nagios: bool,
    },
    /// Apply the retention policy: remove expired backups, WAL and unreferenced data.
    Expire {
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evaluate the policy as of this time instead of now (with a time zone); backups
        /// that ended after it are kept and fill no rule's slot.
        #[arg(long)]
        now: Option<String>,
    },
    /// Manage the key slots of an encrypted repository (rotation rewrites no data).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Store a logical backup of one database (runs pg_dump).
    Dump(Box<logical::DumpArgs>),
    /// Restore a logical backup into a database (runs pg_restore).
    DumpRestore(Box<logical::DumpRestoreArgs>),
    /// Write a logical backup out for pg_restore or psql.
    DumpExport(Box<logical::DumpExportArgs>),
    /// Store an existing pg_dump archive as a logical backup.
    DumpImport(Box<logical::DumpImportArgs>),
    /// Restore one table as of a point in time, into the live database under a new
    /// name or into a file (restores its database into a scratch server).
    RestoreTable(Box<table::RestoreTableArgs>),
    /// Test-restore a backup: restore it into a scratch directory, recover a scratch
    /// server to the target, check it (pg_amcheck, the cluster's probes), record the
    /// proof and its measured recovery time in the repository.
    Prove(Box<operations::ProveArgs>),
    /// Run the scheduled jobs of every cluster, send notifications, and serve /metrics
    /// and the web view (in the foreground, until SIGTERM).
    Serve,
    /// Keep a backup whatever the retention policy says.
    Pin { label: String },
    /// Let the retention policy remove a backup again.
    Unpin { label: String },
}

#[derive(Subcommand)]
enum KeyAction {
    /// List the key slots; the one the configured key opens is marked.
    List,
    /// Add a slot for another secret: afterwards either secret opens the repository.
    Add(NewKey),
    /// Remove a slot: its secret no longer opens the repository.
    Remove { id: String },
}

#[derive(Args)]
#[group(id = "new_key", required = true, multiple = false)]
struct NewKey {
    /// A file holding the new passphrase.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// The environment variable holding the new passphrase.
    #[arg(long)]
    passphrase_env: Option<String>,
    /// A command that prints the new secret.
    #[arg(long)]
    key_command: Option<String>,
}

impl NewKey {
    fn source(&self) -> Result<SecretSource> {
        Ok(
            match (
                &self.passphrase_file,
                &self.passphrase_env,
                &self.key_command,
            ) {
                (Some(f), _, _) => SecretSource::File(f.clone()),
                (_, Some(var), _) => {
                    SecretSource::Passphrase(std::env::var(var).map_err(|_| {
                        anyhow::anyhow!("environment variable {var} is not set (or not text)")
                    })?)
                }
                (_, _, Some(c)) => SecretSource::Command(c.clone()),
                _ => bail!("give --passphrase-file, --passphrase-env or --key-command"),
            },
        )
    }
}

/// A recovery target that is a point in the WAL.
#[derive(Args)]
#[group(id = "target_point", multiple = false)]
pub(super) struct PointArgs {
    /// Recover to this time (with a time zone, e.g. '2026-11-21 09:30:00+00').
    #[arg(long)]
    target_time: Option<String>,
    /// Recover up to the commit of this transaction.
    #[arg(long)]
    target_xid: Option<u64>,
    /// Recover to this named restore point (pg_create_restore_point).
    #[arg(long)]
    target_name: Option<String>,
    /// Recover to this WAL position.
    #[arg(long)]
    target_lsn: Option<String>,
}

#[derive(Args)]
pub(super) struct TargetArgs {
    #[command(flatten)]
    point: PointArgs,
    /// 'immediate': stop as soon as the backup is consistent.
    #[arg(long, value_parser = ["immediate"], conflicts_with = "target_point")]
    target: Option<String>,
}

#[derive(Args)]
struct RestoreArgs {
    /// New data directory (must be empty or not exist).
    #[arg(long)]
    pgdata: PathBuf,
    /// Backup label to restore (default: the newest that can reach the target).
    #[arg(long)]
    backup: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
    /// What the server does at the target: promote (end recovery, open for writes),
    /// pause (PostgreSQL's default: stay read-only so the data can be checked, then
    /// `SELECT pg_wal_replay_resume()` ends recovery) or shutdown.
    #[arg(long)]
    target_action: Option<String>,
    /// Timeline to follow: latest, current or a number.
    #[arg(long, default_value = "latest")]
    target_timeline: String,
    /// Relocate a tablespace: OLD=NEW (repeatable).
    #[arg(long, value_name = "OLD=NEW")]
    tablespace_map: Vec<String>,
    /// Whether the restored server archives WAL into the repository. Default: on when
    /// restoring into the cluster's configured pgdata, off anywhere else, so a test
    /// copy never writes into production's archive.
    #[arg(long, value_parser = ["on", "off"])]
    archive: Option<String>,
}

pub(super) fn parse_target(t: &TargetArgs) -> Result<Target> {
    Ok(match parse_point(&t.point)? {
        Some(point) => point,
        None if t.target.is_some() => Target::Immediate,
        None => Target::End,
    })
}

/// The point a `--target-*` option names, if one does.
pub(super) fn parse_point(t: &PointArgs) -> Result<Option<Target>> {
    Ok(Some(if let Some(time) = &t.target_time {
        Target::Time(target::parse_time(time)?)
    } else if let Some(xid) = t.target_xid {
        Target::Xid(xid)
    } else if let Some(name) = &t.target_name {
        Target::Name(name.clone())
    } else if let Some(lsn) = &t.target_lsn {
        Target::Lsn(lsn.parse().map_err(anyhow::Error::msg)?)
    } else {
        return Ok(None);
    }))
}

fn restore_options(args: &RestoreArgs) -> Result<RestoreOptions> {
    let mut map = Vec::new();
    for m in &args.tablespace_map {
        let Some((old, new)) = m.split_once('=') else {
            bail!("--tablespace-map '{m}' must be OLD=NEW");
        };
        map.push((old.to_string(), new.to_string()));
    }
    Ok(RestoreOptions {
        pgdata: args.pgdata.clone(),
        backup: args.backup.clone(),
        target: parse_target(&args.target)?,
        action: args.target_action.clone(),
        timeline: args
            .target_timeline
            .parse::<TimelineChoice>()
            .map_err(anyhow::Error::msg)?,
        tablespace_map: map,
        tablespaces_into: None,
        archive: args.archive.as_deref().map(|a| a == "on"),
        only_database: None,
    })
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGKEEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("pgkeep={default}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let is_archive_get = matches!(cli.command, Command::ArchiveGet { .. });
    if is_archive_get {
        // A panic exits 101, which PostgreSQL takes for "not archived": recovery would end
        // early and promote a database missing data. Any failure must stop recovery.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::exit(EXIT_STOP_RECOVERY);
        }));
    }
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgkeep: error: {e:#}");
            if is_archive_get {
                EXIT_STOP_RECOVERY
            } else {
                1
            }
        }
    }
}

/// One line a backup, then a warning per file with bad page checksums.
fn print_backup_summary(o: &backup::BackupOutcome, secs: f64) {
    let m = &o.manifest;
    let kind = match &m.parent {
        Some(p) => format!("incremental from {p}"),
        None => "full".to_string(),
    };
    let reused = o.unread;
    println!(
        "backup {} ({kind}): {} in {} files, read {}{}, stored {} new, {:.1} s, {}/s{}",
        m.label,
        human_bytes(m.size),
        m.files.len(),
        human_bytes(o.read),
        if reused > 0 {
            format!(" ({} taken unread from the parent)", human_bytes(reused))
        } else {
            String::new()
        },
        human_bytes(m.stored_size),
        secs,
        human_bytes((m.size as f64 / secs.max(0.001)) as u64),
        match m.bad_block_count() {
            0 => String::new(),
            n =>
                format!(", WARNING: {n} blocks failed page checksum validation (see `pgkeep info`)"),
        }
    );
    if o.stored_again > 0 {
        let n = o.stored_again;
        println!(
            "healed: stored {n} chunk{} again, as the stored cop{} did not match {}checksum (recorded; `pgkeep verify` names any backup still damaged)",
            if n == 1 { "" } else { "s" },
            if n == 1 { "y" } else { "ies" },
            if n == 1 { "its " } else { "their " },
        );
    }
    if !m.data_checksums {
        eprintln!(
            "warning: the cluster has no data checksums, so no page was validated; enable them with pg_checksums --enable (server stopped)"
        );
    }
    for f in m.files.iter().filter(|f| !f.bad_blocks.is_empty()) {
        eprintln!(
            "warning: {} has invalid page checksums in blocks {:?}",
            f.path, f.bad_blocks
        );
    }
}

/// What was restored, and what the server will do once started.
fn print_restore_summary(s: &restore::RestoreSummary, opts: &RestoreOptions) {
    println!(
        "restored backup {} ({} in {} files) into {} in {:.1} s; start PostgreSQL on it to recover",
        s.label,
        human_bytes(s.bytes),
        s.files,
        opts.pgdata.display(),
        s.seconds
    );
    let at_target = match (&opts.target, opts.action.as_deref()) {
        (Target::End, _) => {
            "recovery replays all archived WAL, then the server opens for writes on a new timeline"
        }
        (_, Some("promote")) => {
            "at the target, recovery ends and the server opens for writes on a new timeline"
        }
        (_, Some("shutdown")) => {
            "at the target, the server shuts down; start it with another target to recover further"
        }
        _ => {
            "at the target, the server pauses read-only (PostgreSQL's default --target-action pause): \
             check the data, then run `SELECT pg_wal_replay_resume()` to end recovery and open for writes; \
             a query can wait on a lock held by a transaction still open at the target"
        }
    };
    println!("next: {at_target}");
    if s.archiving {
        println!(
            "archiving: on{}; the restored server archives its WAL into the repository",
            if s.in_place {
                " (restored in place of the cluster)"
            } else {
                " (--archive on)"
            }
        );
    } else {
        println!(
            "archiving: off (archive_mode = off in postgresql.auto.conf), so this copy never writes into the repository; \
             restore with --archive on for a copy that replaces the cluster"
        );
    }
    if s.tde_keys {
        println!(
            "note: the backup holds pg_tde's keys (pg_tde/); PostgreSQL starts only if the key providers they name \
             (keyring files, certificates, the KMS or Vault) are reachable from this host at the same paths"
        );
    }
    if !s.in_place {
        println!(
            "note: the copy keeps the original's port and socket settings; if the original runs on this host, \
             start the copy on another port (pg_ctl -D {} -o '-p PORT' start)",
            opts.pgdata.display()
        );
    }
}

/// What expire kept, removed and freed.
fn print_expire(r: &expire::ExpireReport, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    let backups = print_plan(&r.backups, &r.plan);
    for d in &r.dumps {
        println!("logical backups, {}:", d.group);
        print_plan(&d.dumps, &d.plan);
    }
    match (r.wal_removed.first(), r.wal_removed.last()) {
        (Some(first), Some(last)) => println!(
            "WAL: {verb} {} files ({first} .. {last})",
            r.wal_removed.len()
        ),
        _ => println!("WAL: nothing to remove"),
    }
    if let Some(from) = &r.plan.wal_from {
        println!(
            "point-in-time recovery stays possible from backup {from} on, along every timeline it and the later backups lie on"
        );
        let older: Vec<&str> = backups
            .iter()
            .filter(|b| r.plan.keep.contains_key(&b.label))
            .take_while(|b| &b.label != from)
            .map(|b| b.label.as_str())
            .collect();
        if !older.is_empty() {
            println!(
                "restorable only to their consistency point: {}",
                older.join(", ")
            );
        }
    }
    if let Some(gc) = &r.gc {
        println!(
            "data: removed {} packs, rewrote {}, freed {}",
            gc.packs_removed,
            gc.packs_rewritten,
            human_bytes(gc.bytes_freed)
        );
    }
    if r.gc_deferred {
        println!(
            "data: a backup, restore or verify is running; unneeded WAL and unreferenced data are removed by the next expire"
        );
    }
    if dry_run {
        println!("dry run: nothing was removed");
    }
}

/// One line per backup, oldest first: kept and why, or expiring. Returns them sorted.
fn print_plan(
    backups: &[crate::engine::retention::policy::BackupFacts],
    plan: &crate::engine::retention::policy::Plan,
) -> Vec<crate::engine::retention::policy::BackupFacts> {
    let mut backups = backups.to_vec();
    backups.sort_by_key(|b| b.stop_time);
    for b in &backups {
        match plan.keep.get(&b.label) {
            Some(reasons) => {
                let why: Vec<&str> = reasons.iter().map(|r| r.describe()).collect();
                println!(
                    "keep    {}  {}  ({})",
                    b.label,
                    b.stop_time.format("%Y-%m-%d %H:%M"),
                    why.join(", ")
                );
            }
            None => println!(
                "expire  {}  {}",
                b.label,
                b.stop_time.format("%Y-%m-%d %H:%M")
            ),
        }
    }
    backups
}

fn run_key(ctx: &Context, action: &KeyAction) -> Result<()> {
    match action {
        KeyAction::List => {
            for slot in ctx.repo.key_slots()? {
                println!(
                    "{}  {}  {}{}",
                    slot.id,
                    slot.created.format("%Y-%m-%d %H:%M:%S UTC"),
                    slot.source,
                    if slot.in_use {
                        "  (opens with the configured key)"
                    } else {
                        ""
                    }
                );
            }
        }
        KeyAction::Add(new) => {
            let id = ctx.repo.add_key_slot(&new.source()?)?;
            println!(
                "added key slot {id}: the new secret opens the repository; to retire the old one, point the config at the new secret, then `pgkeep key remove` the old slot"
            );
        }
        KeyAction::Remove { id } => {
            ctx.repo.remove_key_slot(id)?;
            println!("removed key slot {id}: its secret no longer opens the repository");
        }
    }
    Ok(())
}

/// The repositories a command works on: the one `--repo` names, or every one.
fn repo_numbers(cli: &Cli, config: &Config) -> Vec<usize> {
    match cli.repo {
        Some(n) => vec![n],
        None => (1..=config.repositories.len()).collect(),
    }
}

/// Runs `job` on each repository in turn, going on past a failure; every failure is
/// reported, and any fails the command. With several, each result is headed by its
/// repository.
fn each_repository(
    cli: &Cli,
    config: &Config,
    mode: OpenMode,
    job: impl Fn(&Context) -> Result<i32>,
) -> Result<i32> {
    let numbers = repo_numbers(cli, config);
    let cluster = cli.cluster.as_deref();
    if let [n] = numbers[..] {
        return job(&Context::on_repository(config, cluster, n, mode)?);
    }
    let mut code = 0;
    let mut failed = Vec::new();
    for n in numbers {
        println!("repository {n} ({}):", config.repositories[n - 1].path);
        match Context::on_repository(config, cluster, n, mode).and_then(|ctx| job(&ctx)) {
            Ok(c) => code = code.max(c),
            Err(e) => {
                eprintln!("pgkeep: error: repository {n}: {e:#}");
                failed.push(n.to_string());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "the command failed on repository {} (errors above); fix that and run it again, or give --repo N for one repository",
            failed.join(", ")
        );
    }
    Ok(code)
}

/// Runs `job` on the repositories in order until one has what it needs (`Some`); one
/// that fails is passed over with a warning. `None` if one that worked has nothing, an
/// error only if every one failed: what is archived is in every repository (archive-push
/// succeeds only then), so a working repository's "not there" holds for all.
fn first_repository<T>(
    cli: &Cli,
    config: &Config,
    job: impl Fn(&Context) -> Result<Option<T>>,
) -> Result<Option<T>> {
    all_repositories(cli, config).first(job)
}

/// The repository a reading command uses: `--repo N`, or the first.
fn reading_context<'c>(cli: &'c Cli, config: &'c Config) -> Result<Context<'c>> {
    Context::on_repository(
        config,
        cli.cluster.as_deref(),
        cli.repo.unwrap_or(1),
        OpenMode::Existing,
    )
}

fn run(cli: &Cli) -> Result<i32> {
    let source = if cli.config == std::path::Path::new(DEFAULT_CONFIG) {
        ConfigSource::Default
    } else {
        ConfigSource::Given
    };
    let config = Config::load(&cli.config, source)?;
    let existing = OpenMode::Existing;
    match &cli.command {
        Command::Init => each_repository(cli, &config, OpenMode::MaybeNew, |ctx| {
            println!("{}", setup::init(ctx)?);
            Ok(0)
        }),
        Command::Check => each_repository(cli, &config, existing, run_check),
        Command::Backup { full } => run_backup(cli, &config, *full),
        Command::Expire { dry_run, now } => {
            let now = match now {
                Some(t) => target::parse_time(t)?.with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            each_repository(cli, &config, existing, |ctx| {
                print_expire(&expire_recorded(ctx, now, *dry_run)?, *dry_run);
                Ok(0)
            })
        }
        Command::Key { action } => {
            // Keys belong to one repository: the one named, else the first encrypted.
            let n = cli.repo.unwrap_or_else(|| {
                let encrypted = config
                    .repositories
                    .iter()
                    .position(|r| r.encryption != Encryption::None);
                encrypted.map_or(1, |i| i + 1)
            });
            let ctx = Context::on_repository(&config, cli.cluster.as_deref(), n, existing)?;
            run_key(&ctx, action)?;
            Ok(0)
        }
        Command::Pin { label } => each_repository(cli, &config, existing, |ctx| {
            ctx.repo.set_pinned(label, true)?;
            println!("backup {label} is pinned: no retention rule removes it");
            Ok(0)
        }),
        Command::Unpin { label } => each_repository(cli, &config, existing, |ctx| {
            ctx.repo.set_pinned(label, false)?;
            println!("backup {label} is no longer pinned");
            Ok(0)
        }),
        Command::ArchivePush { path } => run_archive_push(cli, &config, path),
        Command::ArchivePusher { pg_wal } => {
            let spool = open_spool(cli, &config, pg_wal.parent().unwrap_or(pg_wal))?;
            let repos = all_repositories(cli, &config);
            let jobs = config.archive.push_jobs;
            spool::run_pusher(&spool, &helper(cli, &config)?, &repos, pg_wal, jobs)?;
            Ok(0)
        }
        Command::ArchiveFetcher { after } => {
            let spool = open_spool(cli, &config, &std::env::current_dir()?)?;
            let repos = all_repositories(cli, &config);
            spool::run_fetcher(&spool, &repos, after, config.archive.get_ahead)?;
            Ok(0)
        }
        Command::ArchiveGet {
            name,
            dest,
            no_get_ahead,
        } => {
            if config.archive.asynchronous && !no_get_ahead {
                // The spool only saves time: any trouble with it, and the repository serves.
                let prefetched =
                    open_spool(cli, &config, &std::env::current_dir()?).and_then(|spool| {
                        spool::take_prefetched(&spool, &helper(cli, &config)?, name, dest)
                    });
                match prefetched {
                    Ok(true) => return Ok(0),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("{e:#}; fetching {name} from the repository"),
                }
            }
            let found = first_repository(cli, &config, |ctx| {
                Ok(archive::get(ctx, name, dest)?.then_some(()))
            })?;
            if found.is_none() {
                tracing::info!("{name} is not in the archive");
                return Ok(1);
            }
            Ok(0)
        }
        Command::ReceiveWal {
            synchronous,
            status_interval,
        } => run_receive_wal(cli, &config, *synchronous, *status_interval),
        Command::Restore(args) => run_restore(cli, &config, args),
        Command::Dump(args) => logical::run_dump(cli, &config, args),
        Command::DumpRestore(args) => logical::run_dump_restore(cli, &config, args),
        Command::DumpExport(args) => logical::run_dump_export(cli, &config, args),
        Command::DumpImport(args) => logical::run_dump_import(cli, &config, args),
        Command::RestoreTable(args) => table::run_restore_table(cli, &config, args),
        Command::Prove(args) => operations::run_prove(cli, &config, args),
        Command::Info { json: true } => {
            let report = first_repository(cli, &config, |ctx| Ok(Some(info::current(ctx)?)))?
                .expect("first_repository returns a report or an error");
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
        Command::Info { json: false } => each_repository(cli, &config, existing, |ctx| {
            print!("{}", info::render(&info::current(ctx)?));
            Ok(0)
        }),
        Command::Verify => each_repository(cli, &config, existing, run_verify),
        Command::Serve => crate::serve::serve(&config, &config.path),
        Command::History { json: true } => {
            let runs = first_repository(cli, &config, |ctx| Ok(Some(ctx.repo.runs()?)))?
                .unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&runs)?);
            Ok(0)
        }
        Command::History { json: false } => each_repository(cli, &config, existing, |ctx| {
            print!(
                "{}",
                operations::render_history(ctx.cluster_name, &ctx.repo.runs()?)
            );
            Ok(0)
        }),
        Command::Status { json, nagios } => operations::run_status(cli, &config, *json, *nagios),
    }
}

fn run_check(ctx: &Context) -> Result<i32> {
    let report = setup::check(ctx)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if !report.problems.is_empty() {
        for p in &report.problems {
            eprintln!("problem: {p}");
        }
        return Ok(1);
    }
    println!(
        "ok: configuration, connection and WAL archiving all work for cluster '{}'",
        ctx.cluster_name
    );
    Ok(0)
}

/// Backs up into the first repository that opens, copies the backup into every other
/// one, then expires in each if the policy says so.
fn run_backup(cli: &Cli, config: &Config, full: bool) -> Result<i32> {
    let cluster = cli.cluster.as_deref();
    let mut others = Vec::new();
    let mut first = None;
    let mut failed = Vec::new();
    for n in repo_numbers(cli, config) {
        match Context::on_repository(config, cluster, n, OpenMode::Existing) {
            Ok(ctx) if first.is_none() => first = Some(ctx),
            Ok(ctx) => others.push(ctx),
            Err(e) => {
                eprintln!("pgkeep: error: repository {n}: {e:#}");
                failed.push(n);
            }
        }
    }
    let Some(ctx) = first else {
        bail!("no repository could be opened (errors above); the backup was not taken");
    };
    let bar = progress::bar("backup");
    let started = std::time::Instant::now();
    let outcome = history::recorded(
        &ctx,
        "backup",
        || backup::backup(&ctx, full, &bar),
        |o, run| history::backup_facts(&o.manifest, run),
    )?;
    print_backup_summary(&outcome, started.elapsed().as_secs_f64());
    let mut written = vec![&ctx];
    for other in &others {
        let started = std::time::Instant::now();
        let copied = history::recorded(
            other,
            "backup",
            || backup::replicate(&ctx, &outcome.manifest, other),
            |r, run| {
                history::backup_facts(&r.manifest, run);
                run.summary = format!("copied from repository {}", ctx.repo_number);
            },
        );
        match copied {
            Ok(r) => {
                println!(
                    "backup {} copied to repository {} ({}): read {} from repository {}, stored {} new{}, {:.1} s",
                    r.manifest.label,
                    other.repo_number,
                    other.repo_config.path,
                    human_bytes(r.read),
                    ctx.repo_number,
                    human_bytes(r.manifest.stored_size),
                    match r.wal_copied {
                        0 => String::new(),
                        n => format!(", {n} missing WAL files copied"),
                    },
                    started.elapsed().as_secs_f64()
                );
                written.push(other);
            }
            Err(e) => {
                eprintln!("pgkeep: error: repository {}: {e:#}", other.repo_number);
                failed.push(other.repo_number);
            }
        }
    }
    let policy = &config.retention;
    if policy.has_rules() && policy.expire_after_backup {
        for ctx in written {
            let report = expire_recorded(ctx, chrono::Utc::now(), false).map_err(|e| {
                e.context(format!(
                    "the backup succeeded, but expiring old backups in repository {} after it failed",
                    ctx.repo_number
                ))
            })?;
            print_expire(&report, false);
        }
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|n| n.to_string()).collect();
        bail!(
            "backup {} is not in repository {} (errors above); fix it, and the next backup goes there too",
            outcome.manifest.label,
            list.join(", ")
        );
    }
    Ok(0)
}

/// Archives the file in every repository; it is archived only once every one has it.
fn run_archive_push(cli: &Cli, config: &Config, path: &std::path::Path) -> Result<i32> {
    if config.archive.asynchronous && spool::is_marked_ready(path) {
        let timeout = std::time::Duration::from_secs(config.archive.push_timeout);
        let spool = open_spool(cli, config, &spool::data_directory_of(path)?)?;
        spool::push(&spool, &helper(cli, config)?, path, timeout)?;
    } else {
        archive::push(&all_repositories(cli, config), path)?;
    }
    Ok(0)
}

/// Streams WAL into the repositories until SIGINT or SIGTERM.
fn run_receive_wal(cli: &Cli, config: &Config, synchronous: bool, interval: u64) -> Result<i32> {
    let (cluster, settings) = config.select_cluster(cli.cluster.as_deref())?;
    let receive = &config.receive;
    let slot = receive::slot_of(receive, cluster);
    receive::check_slot_name(&slot)?;
    let options = receive::ReceiveOptions {
        slot,
        directory: receive
            .directory
            .clone()
            .unwrap_or_else(|| config.archive.spool_path.join(cluster).join("receive")),
        synchronous: synchronous || receive.synchronous,
        status_interval: std::time::Duration::from_secs(interval.max(1)),
        warn_slot_wal: receive.warn_slot_wal_mb.saturating_mul(1 << 20),
    };
    let params = crate::pg::conninfo::resolve(&settings.connection)?;
    let stop = crate::os::stop_on_signals();
    receive::receive(&all_repositories(cli, config), &params, &options, stop)?;
    Ok(0)
}

/// The repositories the command works on (`--repo`, or every one), opened on first use.
fn all_repositories<'a>(cli: &'a Cli, config: &'a Config) -> Repositories<'a> {
    Repositories::new(
        config,
        cli.cluster.as_deref(),
        &repo_numbers(cli, config),
        OpenMode::Existing,
    )
}

/// The spool of the selected cluster's data directory `pgdata`, for asynchronous
/// archiving.
fn open_spool(cli: &Cli, config: &Config, pgdata: &std::path::Path) -> Result<spool::Spool> {
    let (cluster, _) = config.select_cluster(cli.cluster.as_deref())?;
    spool::Spool::open(&config.archive, cluster, pgdata)
}

/// How this command starts its background pusher or fetcher.
fn helper<'a>(cli: &Cli, config: &'a Config) -> Result<spool::Helper<'a>> {
    let (cluster, _) = config.select_cluster(cli.cluster.as_deref())?;
    Ok(spool::Helper {
        config,
        cluster,
        repo: cli.repo,
    })
}

/// Restores from the first repository that can: one that fails before writing anything
/// is passed over for the next.
fn run_restore(cli: &Cli, config: &Config, args: &RestoreArgs) -> Result<i32> {
    let opts = restore_options(args)?;
    let numbers = repo_numbers(cli, config);
    for (i, &n) in numbers.iter().enumerate() {
        let bar = progress::bar("restore");
        let restored =
            Context::on_repository(config, cli.cluster.as_deref(), n, OpenMode::Existing)
                .and_then(|ctx| restore::restore(&ctx, &opts, &bar));
        match restored {
            Ok(s) => {
                print_restore_summary(&s, &opts);
                return Ok(0);
            }
            Err(e) if i + 1 < numbers.len() && restore::nothing_written(&opts.pgdata) => {
                eprintln!(
                    "warning: repository {n}: {e:#}; restoring from repository {} instead",
                    numbers[i + 1]
                );
            }
            Err(e) => return Err(e.context(format!("repository {n}"))),
        }
    }
    unreachable!("the config has at least one repository")
}

/// `expire`, recorded in the history unless it is a dry run (which changes nothing).
pub(super) fn expire_recorded(
    ctx: &Context,
    now: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
) -> Result<expire::ExpireReport> {
    if dry_run {
        return expire::expire(ctx, now, true);
    }
    history::recorded(
        ctx,
        "expire",
        || expire::expire(ctx, now, false),
        history::expire_facts,
    )
}

fn run_verify(ctx: &Context) -> Result<i32> {
    let r = history::recorded(ctx, "verify", || verify::verify(ctx), history::verify_facts)?;
    for p in &r.problems {
        let breaks = if p.breaks.is_empty() {
            "no backup".to_string()
        } else {
            p.breaks.join(", ")
        };
        eprintln!("problem: {} (affects: {breaks})", p.what);
    }
    if !r.problems.is_empty() {
        eprintln!("verify found {} problem(s)", r.problems.len());
        if r.full_backup_heals {
            eprintln!(
                "to heal: run `pgkeep backup --full` (and `pgkeep dump` of a damaged dump's database); each stores again every \
                 damaged chunk whose data the database still holds, and backups that need other damaged data stay damaged"
            );
        }
        return Ok(1);
    }
    println!(
        "verify ok: {} backups, {} logical backups, {} chunks, {} WAL files checked",
        r.backups, r.dumps, r.chunks, r.wal_files
    );
    Ok(0)
}
