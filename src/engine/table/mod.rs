//! `restore-table`: one table as of a point in time, into the live database under a new
//! name or into a file.
//!
//! The newest backup before the target is restored into a scratch directory, only the
//! table's database and the cluster-wide files (the others stay empty); a scratch
//! server recovers it to the target and pauses there (see [`server`]); the table is
//! copied out of it ([`definition`], or pg_dump for a file); the server is killed and
//! the directory removed, also on failure or interruption ([`crate::engine::scratch`]).
//!
//! Everything that can be checked is checked before the restore starts: the names, the
//! destination (a new name that is free, a file that does not exist), the server
//! program, the user; the restore itself checks the target and the free space.

mod definition;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use indicatif::ProgressBar;

use crate::engine::Context;
use crate::engine::physical::restore::{self, RestoreOptions};
use crate::engine::physical::target::{Target, TimelineChoice};
use crate::engine::scratch::server::{self, Purpose, ScratchServer};
use crate::engine::scratch::{self, Scratch};
use crate::pg::session::Session;
use crate::pg::tools::{self, Tool};

pub use self::definition::TableName;

/// Where the table goes.
pub enum Destination {
    /// Into database `database` of the live cluster, as `name` (default: the table's
    /// name with `_restored_` and the time it was as of).
    Database {
        database: String,
        name: Option<String>,
    },
    /// A pg_dump file of the table, as it was (`custom` or `plain`).
    File { path: PathBuf, format: String },
}

pub struct RestoreTableOptions {
    pub table: TableName,
    pub database: String,
    pub target: Target,
    pub timeline: TimelineChoice,
    pub destination: Destination,
    /// Where the scratch directory is made (default: `TMPDIR`).
    pub scratch_parent: PathBuf,
}

pub struct RestoreTableReport {
    pub backup: String,
    pub table: TableName,
    /// The restored copy's name, or the file written.
    pub written_to: String,
    /// Rows copied (for a file: none counted).
    pub rows: Option<u64>,
    /// The last transaction the scratch server replayed, and its WAL position.
    pub as_of: String,
    pub restored_bytes: u64,
    pub left_out: Vec<String>,
    pub seconds: f64,
}

/// Parses `SCHEMA.TABLE` as SQL does: a name in double quotes is taken as written (`""`
/// for a quote), others are folded to lower case; without a schema, `public`.
pub fn parse_table(text: &str) -> Result<TableName> {
    match name_parts(text)?.as_slice() {
        [schema, name] => Ok(TableName {
            schema: schema.clone(),
            name: name.clone(),
        }),
        [name] => Ok(TableName {
            schema: "public".into(),
            name: name.clone(),
        }),
        _ => Err(bad_name(text)),
    }
}

fn bad_name(text: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "'{text}' is not a name like schema.table (quote names with capitals or dots: '\"Sales\".\"Q1\"')"
    )
}

/// The dot-separated parts of a qualified name.
fn name_parts(text: &str) -> Result<Vec<String>> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    loop {
        let (part, after) = match rest.strip_prefix('"') {
            Some(quoted) => unquote(quoted).ok_or_else(|| bad_name(text))?,
            None => {
                let end = rest.find('.').unwrap_or(rest.len());
                (rest[..end].to_lowercase(), &rest[end..])
            }
        };
        if part.is_empty() {
            return Err(bad_name(text));
        }
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => return Ok(parts),
            None => return Err(bad_name(text)),
        }
    }
}

/// A quoted name's text (after its opening quote) and what follows its closing quote.
fn unquote(quoted: &str) -> Option<(String, &str)> {
    let mut name = String::new();
    let mut chars = quoted.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            name.push(c);
        } else if chars.peek().is_some_and(|&(_, next)| next == '"') {
            name.push('"');
            chars.next();
        } else {
            return Some((name, &quoted[i + 1..]));
        }
    }
    None
}

pub fn restore_table(
    ctx: &Context,
    opts: &RestoreTableOptions,
    restore_bar: &ProgressBar,
    progress: &ProgressBar,
) -> Result<RestoreTableReport> {
    let started = Instant::now();
    if matches!(opts.target, Target::End | Target::Immediate) {
        bail!(
            "restore-table needs a point in time: give --target-time, --target-name, --target-xid or --target-lsn"
        );
    }
    server::refuse_root("restore-table")?;
    let major = ctx.repo.require_info()?.pg_version / 10000;
    let postgres = server::server_program(ctx, major, "restore-table")?;
    check_destination(ctx, opts, major)?;
    let scratch = Scratch::new_in(&opts.scratch_parent, "table")?;
    server::check_socket_path(scratch.path())?;
    let pgdata = scratch.path().join("data");
    let restored = restore::restore(
        ctx,
        &RestoreOptions {
            pgdata: pgdata.clone(),
            backup: None,
            target: opts.target.clone(),
            action: Some("pause".into()),
            timeline: opts.timeline,
            tablespace_map: Vec::new(),
            tablespaces_into: Some(scratch.path().join("tablespaces")),
            archive: Some(false),
            only_database: Some(opts.database.clone()),
        },
        restore_bar,
    )?;
    let live_settings = server::live_standby_settings(ctx)?;
    let mut server = ScratchServer::start(
        ctx,
        &postgres,
        &pgdata,
        scratch.path(),
        Purpose::Table,
        &live_settings,
    )?;
    let mut at_target = server.wait_paused(&opts.database, progress)?;
    let as_of = at_target.rows(
        "SELECT coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00'), ''), \
                coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS'), to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS')), \
                pg_last_wal_replay_lsn()::text",
    )?;
    let (as_of_time, stamp, lsn) = (&as_of[0][0], &as_of[0][1], &as_of[0][2]);
    let def = definition::read(&mut at_target, &opts.table)?;
    progress.set_message(format!("copying {}", opts.table));
    let (written_to, rows) = match &opts.destination {
        Destination::Database { database, name } => {
            let copy = copy_name(&opts.table, name.as_deref(), stamp)?;
            // A new session: the one that checked may have timed out during the restore.
            let mut live = connect_live(ctx, database)?;
            let rows =
                definition::create_copy(&mut at_target, &mut live, &opts.table, &def, &copy)?;
            (copy.to_string(), Some(rows))
        }
        Destination::File { path, format } => {
            dump_to_file(ctx, &server, opts, major, path, format)?;
            (path.display().to_string(), None)
        }
    };
    drop(at_target);
    drop(server);
    drop(scratch);
    Ok(RestoreTableReport {
        backup: restored.label,
        table: opts.table.clone(),
        written_to,
        rows,
        as_of: if as_of_time.is_empty() {
            format!("WAL position {lsn}")
        } else {
            format!("{as_of_time} (WAL position {lsn})")
        },
        restored_bytes: restored.bytes,
        left_out: match opts.destination {
            Destination::Database { .. } => def.left_out,
            Destination::File { .. } => Vec::new(),
        },
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The copy's name: `--as NAME` (in the table's schema) or `--as SCHEMA.NAME`, else
/// `TABLE_restored_STAMP`.
fn copy_name(table: &TableName, name: Option<&str>, stamp: &str) -> Result<TableName> {
    let Some(name) = name else {
        let suffix = format!("_restored_{stamp}");
        let mut base = table.name.clone();
        while base.len() + suffix.len() > 63 {
            base.pop();
        }
        return Ok(TableName {
            schema: table.schema.clone(),
            name: base + &suffix,
        });
    };
    match name_parts(name)?.as_slice() {
        [schema, name] => Ok(TableName {
            schema: schema.clone(),
            name: name.clone(),
        }),
        [name] => Ok(TableName {
            schema: table.schema.clone(),
            name: name.clone(),
        }),
        _ => Err(bad_name(name)),
    }
}

/// A session to database `database` of the live cluster.
fn connect_live(ctx: &Context, database: &str) -> Result<Session> {
    let mut params = ctx.conn_params()?;
    params.dbname = database.to_string();
    Session::connect(&params)
}

/// Checks the destination before anything is restored.
fn check_destination(ctx: &Context, opts: &RestoreTableOptions, major: u32) -> Result<()> {
    match &opts.destination {
        Destination::File { path, format } => {
            if !["plain", "custom"].contains(&format.as_str()) {
                bail!("--format must be plain or custom, not '{format}'");
            }
            if path.exists() {
                bail!(
                    "{} exists; restore-table writes only a new file",
                    path.display()
                );
            }
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                bail!(
                    "directory {} does not exist; create it or choose another --to-file",
                    parent.display()
                );
            }
            dump_tool(ctx, major)?;
            Ok(())
        }
        Destination::Database { database, name } => {
            let mut live = connect_live(ctx, database)?;
            let copy = copy_name(&opts.table, name.as_deref(), "00000000000000")?;
            let schema_there = live.text_with(
                "SELECT count(*)::text FROM pg_namespace WHERE nspname = $1",
                &[&copy.schema],
            )?;
            if schema_there == "0" {
                bail!(
                    "schema {} does not exist in database {database}; create it, or name the copy in another schema with --as SCHEMA.NAME",
                    copy.schema
                );
            }
            if name.is_some() {
                let taken = live.text_with(
                    "SELECT count(*)::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                    &[&copy.schema, &copy.name],
                )?;
                if taken != "0" {
                    bail!(
                        "{copy} already exists in database {database}; choose another name with --as"
                    );
                }
            }
            Ok(())
        }
    }
}

fn dump_tool(ctx: &Context, major: u32) -> Result<Tool> {
    tools::find(
        "pg_dump",
        major,
        ctx.cluster.pg_bin.as_deref(),
        "to dump a table of this cluster",
    )
}

/// pg_dump of the table from the scratch server into `path`, written under a temporary
/// name, made durable, then renamed.
fn dump_to_file(
    ctx: &Context,
    server: &ScratchServer,
    opts: &RestoreTableOptions,
    major: u32,
    path: &Path,
    format: &str,
) -> Result<()> {
    let temp = path.with_file_name(format!(
        ".{}.pgkeep-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let pattern = format!(
        "\"{}\".\"{}\"",
        opts.table.schema.replace('"', "\"\""),
        opts.table.name.replace('"', "\"\"")
    );
    let mut cmd = dump_tool(ctx, major)?.command(&server.params(&opts.database), &opts.database);
    cmd.args([
        "--table",
        &pattern,
        "--strict-names",
        "--format",
        format,
        "--file",
    ])
    .arg(&temp)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let output = scratch::spawn(&mut cmd)?.output()?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&temp);
        bail!(
            "pg_dump of {} failed: {}",
            opts.table,
            scratch::messages(&output.stderr)
        );
    }
    std::fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot fsync {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
    crate::os::sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_read_like_sql() {
        let t = |s: &str| {
            parse_table(s)
                .map(|t| (t.schema, t.name))
                .map_err(|e| e.to_string())
        };
        assert_eq!(t("app.Orders"), Ok(("app".into(), "orders".into())));
        assert_eq!(t("orders"), Ok(("public".into(), "orders".into())));
        assert_eq!(
            t("\"Sales\".\"Q1.\"\"x\"\"\""),
            Ok(("Sales".into(), "Q1.\"x\"".into()))
        );
        for bad in ["", "a.b.c", "a.", ".b", "\"a", "\"a\"b"] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn copies_are_named_after_the_table_and_time() {
        let orders = TableName {
            schema: "app".into(),
            name: "orders".into(),
        };
        let named = |name, stamp| copy_name(&orders, name, stamp).unwrap().to_string();
        assert_eq!(
            named(None, "20261202101500"),
            "app.orders_restored_20261202101500"
        );
        assert_eq!(named(Some("Old_Orders"), "x"), "app.old_orders");
        assert_eq!(named(Some("audit.\"Old\""), "x"), "audit.Old");
        assert!(copy_name(&orders, Some("a.b.c"), "x").is_err());
        let long = TableName {
            schema: "app".into(),
            name: "t".repeat(60),
        };
        assert_eq!(
            copy_name(&long, None, "20261202101500").unwrap().name.len(),
            63
        );
    }
}
