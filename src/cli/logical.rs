//! The logical-backup commands: `dump`, `dump-restore`, `dump-export` and `dump-import`.

use anyhow::{Result, bail};
use clap::Args;

use super::{Cli, expire_recorded, print_expire, reading_context, repo_numbers};
use crate::config::Config;
use crate::engine::logical::dump::{self, DumpOptions, DumpReport, Scope};
use crate::engine::logical::export::{self, ExportOptions};
use crate::engine::logical::import::{self, ImportOptions};
use crate::engine::logical::restore::{self, DumpRestoreOptions};
use crate::engine::operations::history;
use crate::engine::{Context, human_bytes};
use crate::repo::OpenMode;
use crate::repo::logical::{ArchiveFormat, Selection};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["database", "all", "globals_only"])))]
pub struct DumpArgs {
    /// The database to dump.
    #[arg(long, short = 'd')]
    database: Option<String>,
    /// Dump what pg_dumpall does: the globals (roles, tablespaces), then every
    /// database, each its own dump so that one can be restored alone.
    #[arg(long)]
    all: bool,
    /// Dump only the globals (roles, tablespaces).
    #[arg(long)]
    globals_only: bool,
    /// Dump only tables matching this pattern (pg_dump's -t; repeatable).
    #[arg(long = "table", short = 't', value_name = "PATTERN")]
    tables: Vec<String>,
    /// Leave out tables matching this pattern (pg_dump's -T; repeatable).
    #[arg(long = "exclude-table", short = 'T', value_name = "PATTERN")]
    exclude_tables: Vec<String>,
    /// Dump only schemas matching this pattern (pg_dump's -n; repeatable).
    #[arg(long = "schema", short = 'n', value_name = "PATTERN")]
    schemas: Vec<String>,
    /// Leave out schemas matching this pattern (pg_dump's -N; repeatable).
    #[arg(long = "exclude-schema", short = 'N', value_name = "PATTERN")]
    exclude_schemas: Vec<String>,
    /// Dump only the data, not the schema.
    #[arg(long, conflicts_with = "schema_only")]
    data_only: bool,
    /// Dump only the schema, no data.
    #[arg(long)]
    schema_only: bool,
    /// pg_dump's parallel jobs (default: one per core).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
}

#[derive(Args)]
pub struct DumpRestoreArgs {
    /// The logical backup to restore (`pgkeep info` lists them).
    label: String,
    /// Restore a whole `dump --all` run (LABEL is its globals dump): the globals, then
    /// every database under its own name, created as it was where it does not exist.
    #[arg(long, conflicts_with_all = ["to", "create", "tables", "schemas"])]
    all: bool,
    /// The database the dump holds (checked); by default the dump's own.
    #[arg(long, short = 'd')]
    database: Option<String>,
    /// Restore into this database instead of one named as the dumped one.
    #[arg(long, value_name = "NEWDB")]
    to: Option<String>,
    /// Create the target database (with --clean, drop and create it if it exists).
    #[arg(long, short = 'C')]
    create: bool,
    /// Drop the dump's objects in the target before creating them again.
    #[arg(long, short = 'c')]
    clean: bool,
    /// Restore only this table (pg_restore's -t: a name, not a pattern; repeatable).
    #[arg(long = "table", short = 't', value_name = "TABLE")]
    tables: Vec<String>,
    /// Restore only objects in this schema (pg_restore's -n; repeatable).
    #[arg(long = "schema", short = 'n', value_name = "SCHEMA")]
    schemas: Vec<String>,
    /// pg_restore's parallel jobs (default: one per core; 1 with --single-transaction).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Restore in one transaction: all or nothing.
    #[arg(long, short = '1')]
    single_transaction: bool,
    /// Do not set ownership of objects to match the original database.
    #[arg(long, short = 'O')]
    no_owner: bool,
    /// Skip the ANALYZE that follows the restore.
    #[arg(long)]
    no_analyze: bool,
}

#[derive(Args)]
pub struct DumpExportArgs {
    /// The logical backup to write out.
    label: String,
    /// plain (an SQL script for psql), or the dump's own format (default): directory,
    /// or custom, tar or plain for an imported archive.
    #[arg(long, short = 'F')]
    format: Option<ArchiveFormat>,
    /// Where to write it (a new file, or a new directory for the directory format).
    #[arg(long = "file", short = 'f')]
    path: std::path::PathBuf,
}

#[derive(Args)]
pub struct DumpImportArgs {
    /// A pg_dump archive (directory, custom or tar format) or plain SQL dump.
    path: std::path::PathBuf,
    /// The database it is a dump of.
    #[arg(long, short = 'd')]
    database: String,
    /// Threads storing a directory archive's files (default: one per core).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs pg_dump once per repository and stores the archive in each; a repository that
/// fails is reported and the others still get the dump.
pub fn run_dump(cli: &Cli, config: &Config, args: &DumpArgs) -> Result<i32> {
    let scope = match (&args.database, args.all) {
        (Some(db), _) => Scope::Database(db.clone()),
        (None, true) => Scope::All,
        (None, false) => Scope::GlobalsOnly,
    };
    let opts = DumpOptions {
        scope,
        selection: Selection {
            tables: args.tables.clone(),
            exclude_tables: args.exclude_tables.clone(),
            schemas: args.schemas.clone(),
            exclude_schemas: args.exclude_schemas.clone(),
            data_only: args.data_only,
            schema_only: args.schema_only,
        },
        jobs: args.jobs.unwrap_or_else(cores).max(1),
    };
    let mut failed = Vec::new();
    let policy = &config.retention;
    for n in repo_numbers(cli, config) {
        let started = std::time::Instant::now();
        let done = Context::on_repository(config, cli.cluster.as_deref(), n, OpenMode::Existing)
            .and_then(|ctx| {
                let reports = history::recorded(
                    &ctx,
                    "dump",
                    || dump::dump(&ctx, &opts),
                    |r, run| history::dump_facts(r, run),
                )?;
                for report in &reports {
                    print_stored(report, started);
                }
                if policy.dumps.has_rules() && policy.expire_after_backup {
                    let report = expire_recorded(&ctx, chrono::Utc::now(), false).map_err(|e| {
                        e.context("the dump succeeded, but expiring old backups after it failed")
                    })?;
                    print_expire(&report, false);
                }
                Ok(())
            });
        match done {
            Ok(()) => {}
            Err(e) => {
                eprintln!("pgkeep: error: repository {n}: {e:#}");
                failed.push(n.to_string());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "the dump was not stored in repository {} (errors above)",
            failed.join(", ")
        );
    }
    Ok(0)
}

/// Restores a dump from the first repository (or `--repo N`).
pub fn run_dump_restore(cli: &Cli, config: &Config, args: &DumpRestoreArgs) -> Result<i32> {
    let jobs = match (args.jobs, args.single_transaction) {
        (Some(j), _) => j.max(1),
        (None, true) => 1,
        (None, false) => cores(),
    };
    let opts = DumpRestoreOptions {
        label: args.label.clone(),
        all: args.all,
        database: args.database.clone(),
        to: args.to.clone(),
        create: args.create,
        clean: args.clean,
        tables: args.tables.clone(),
        schemas: args.schemas.clone(),
        jobs,
        single_transaction: args.single_transaction,
        no_owner: args.no_owner,
        analyze: !args.no_analyze,
    };
    let ctx = reading_context(cli, config)?;
    let started = std::time::Instant::now();
    for r in restore::dump_restore(&ctx, &opts)? {
        println!(
            "restored dump {} ({}) into {} in {:.1} s{}",
            r.label,
            human_bytes(r.size),
            match &r.database {
                None => "the cluster's globals".to_string(),
                Some(db) => format!("database {db}"),
            },
            started.elapsed().as_secs_f64(),
            if r.analyzed { ", then ANALYZE" } else { "" }
        );
    }
    Ok(0)
}

/// The summary line of a stored dump.
fn print_stored(r: &DumpReport, started: std::time::Instant) {
    println!(
        "dump {} of {}: {} in {} files, stored {} new, {:.1} s",
        r.label,
        match r.globals {
            true => "the globals (roles, tablespaces)".to_string(),
            false => format!("database {}", r.database),
        },
        human_bytes(r.size),
        r.files,
        human_bytes(r.stored_size),
        started.elapsed().as_secs_f64()
    );
}

pub fn run_dump_export(cli: &Cli, config: &Config, args: &DumpExportArgs) -> Result<i32> {
    let ctx = reading_context(cli, config)?;
    let r = export::export(
        &ctx,
        &ExportOptions {
            label: args.label.clone(),
            format: args.format,
            path: args.path.clone(),
        },
    )?;
    println!(
        "exported dump {} as {} to {}",
        r.label,
        r.format.name(),
        r.path.display()
    );
    Ok(0)
}

pub fn run_dump_import(cli: &Cli, config: &Config, args: &DumpImportArgs) -> Result<i32> {
    let ctx = reading_context(cli, config)?;
    let started = std::time::Instant::now();
    let opts = ImportOptions {
        path: std::path::absolute(&args.path)?,
        database: args.database.clone(),
        jobs: args.jobs.unwrap_or_else(cores).max(1),
    };
    print_stored(&import::import(&ctx, &opts)?, started);
    Ok(0)
}
