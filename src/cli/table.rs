//! `restore-table`: one table as of a point in time.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{Cli, TargetArgs, parse_target, progress, reading_context};
use crate::config::Config;
use crate::engine::human_bytes;
use crate::engine::physical::target::TimelineChoice;
use crate::engine::table::{self, Destination, RestoreTableOptions};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["into_database", "to_file"])))]
pub struct RestoreTableArgs {
    /// The table, as schema.table (quote names with capitals or dots: '"Sales"."Q1"').
    #[arg(long)]
    table: String,
    /// The database the table is in.
    #[arg(long, short = 'd')]
    database: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Timeline to follow: latest, current or a number.
    #[arg(long, default_value = "latest")]
    target_timeline: String,
    /// Create the table as it was in this database of the live cluster, under a new name.
    #[arg(long)]
    into_database: Option<String>,
    /// The restored table's name, NAME or SCHEMA.NAME (default: the table's name with
    /// `_restored_` and the time it is as of, in its schema); an existing name is an error.
    #[arg(long = "as", value_name = "NAME", requires = "into_database")]
    as_name: Option<String>,
    /// Write the table as it was to this new file, as pg_dump does.
    #[arg(long)]
    to_file: Option<PathBuf>,
    /// The file's format: plain (an SQL script) or custom (for pg_restore).
    #[arg(long, default_value = "custom", requires = "to_file")]
    format: String,
    /// Where the scratch copy of the database is restored (default: TMPDIR).
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
}

pub fn run_restore_table(cli: &Cli, config: &Config, args: &RestoreTableArgs) -> Result<i32> {
    let destination = match (&args.into_database, &args.to_file) {
        (Some(database), _) => Destination::Database {
            database: database.clone(),
            name: args.as_name.clone(),
        },
        (None, Some(path)) => Destination::File {
            path: path.clone(),
            format: args.format.clone(),
        },
        (None, None) => unreachable!("clap requires a destination"),
    };
    let opts = RestoreTableOptions {
        table: table::parse_table(&args.table)?,
        database: args.database.clone(),
        target: parse_target(&args.target)?,
        timeline: args
            .target_timeline
            .parse::<TimelineChoice>()
            .map_err(anyhow::Error::msg)?,
        destination,
        scratch_parent: args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let ctx = reading_context(cli, config)?;
    let restore_bar = progress::bar("restore");
    let spinner = progress::spinner();
    let r = table::restore_table(&ctx, &opts, &restore_bar, &spinner)?;
    spinner.finish_and_clear();
    let rows = r.rows.map(|n| format!("{n} rows, ")).unwrap_or_default();
    println!(
        "restored table {} as of {} into {} ({rows}from backup {}, {} restored) in {:.1} s",
        r.table,
        r.as_of,
        r.written_to,
        r.backup,
        human_bytes(r.restored_bytes),
        r.seconds
    );
    if !r.left_out.is_empty() {
        println!("left out of the copy: {}", r.left_out.join(", "));
    }
    Ok(0)
}
