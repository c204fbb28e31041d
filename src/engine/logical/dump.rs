//! `pgkeep dump`: runs pg_dump (directory format, uncompressed, so that an unchanged
//! table writes the same bytes every time) into a scratch directory, stores each file of
//! the archive through the chunk store in content-defined chunks, and publishes a dump
//! manifest.
//!
//! Invariants: the manifest is published only after pg_dump succeeded and every chunk
//! it names is durable; the chunk index is loaded and the chunks referred to under the
//! shared data lock, so collection cannot remove them before the manifest exists; the
//! scratch directory is removed on every path out.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};

use super::{major_of, store};
use crate::engine::scratch::{self, Scratch};
use crate::engine::{Context, parallel_map};
use crate::pg::conninfo::ConnParams;
use crate::pg::session::Session;
use crate::pg::tools;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::{ArchiveFormat, DUMP_MANIFEST_VERSION, DumpManifest, Selection};

/// What one run dumps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Database(String),
    /// What `pg_dumpall` does: the globals, then every database, each its own dump.
    All,
    /// Only the globals (roles, tablespaces).
    GlobalsOnly,
}

pub struct DumpOptions {
    pub scope: Scope,
    pub selection: Selection,
    /// pg_dump's `--jobs`, and the threads that store the files; with `All`, shared
    /// among databases dumped side by side.
    pub jobs: usize,
}

pub struct DumpReport {
    pub label: String,
    pub database: String,
    pub globals: bool,
    pub files: usize,
    pub size: u64,
    pub stored_size: u64,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
}

/// The server a run dumps, checked once.
struct Server {
    conn: ConnParams,
    pg_version: u32,
    /// Every database a connection is allowed to (`template0` is not).
    databases: Vec<String>,
}

/// Dumps what `opts.scope` says into the repository; with `All`, the globals dump comes
/// first and names every database the run dumps after it.
pub fn dump(ctx: &Context, opts: &DumpOptions) -> Result<Vec<DumpReport>> {
    if opts.selection.data_only && opts.selection.schema_only {
        bail!("--data-only and --schema-only exclude each other; give one");
    }
    if !matches!(opts.scope, Scope::Database(_)) && opts.selection != Selection::default() {
        bail!(
            "--all and --globals-only dump whole databases; -t, -T, -n, -N, --data-only and --schema-only need --database"
        );
    }
    let server = connect(ctx)?;
    match &opts.scope {
        Scope::Database(db) => {
            if !server.databases.contains(db) {
                bail!(
                    "database '{db}' does not exist on the server (or takes no connections); `psql -l` lists the databases"
                );
            }
            let labels = Labels::default();
            Ok(vec![dump_database(ctx, &server, db, opts, None, &labels)?])
        }
        Scope::GlobalsOnly => Ok(vec![dump_globals(ctx, &server, None)?]),
        Scope::All => {
            // The globals' label names the run; its manifest, naming every database,
            // is published last, so a run that fails part-way has no head and cannot
            // be taken for a whole one.
            let head = ctx.new_label("-dump")?;
            let labels = Labels(Mutex::new(vec![head.clone()]));
            // Up to `jobs` databases side by side, the jobs shared among them.
            let side_by_side = opts.jobs.clamp(1, server.databases.len().max(1));
            let each = DumpOptions {
                scope: opts.scope.clone(),
                selection: opts.selection.clone(),
                jobs: (opts.jobs / side_by_side).max(1),
            };
            let mut reports = parallel_map(server.databases.clone(), side_by_side, |db, _| {
                dump_database(ctx, &server, &db, &each, Some(&head), &labels)
            })?;
            reports.sort_by(|a, b| a.database.cmp(&b.database));
            reports.insert(0, dump_globals(ctx, &server, Some(&head))?);
            Ok(reports)
        }
    }
}

/// Connects, checks that the server is the registered cluster, lists its databases.
fn connect(ctx: &Context) -> Result<Server> {
    let info = ctx.repo.require_info()?;
    let conn = ctx.conn_params()?;
    let mut session = Session::connect(&conn)?;
    if session.system_identifier()? != info.system_identifier {
        bail!(
            "the server at `connection` is not the cluster registered as '{}' (another system identifier); fix `connection`",
            ctx.cluster_name
        );
    }
    let databases = session
        .rows("SELECT datname::text FROM pg_database WHERE datallowconn AND datname <> 'template0' ORDER BY 1")?
        .into_iter()
        .map(|mut row| row.remove(0))
        .collect();
    Ok(Server {
        pg_version: session.version_num,
        conn,
        databases,
    })
}

/// A client program of at least the server's major version.
fn tool_for(ctx: &Context, server: &Server, name: &str) -> Result<tools::Tool> {
    let major = major_of(server.pg_version);
    tools::find(
        name,
        major,
        ctx.cluster.pg_bin.as_deref(),
        &format!("dumping a PostgreSQL {major} server"),
    )
}

/// Labels chosen for dumps not published yet: dumps started in the same second must
/// not take the same one.
#[derive(Default)]
struct Labels(Mutex<Vec<String>>);

impl Labels {
    fn take(&self, ctx: &Context) -> Result<String> {
        let mut taken = self.0.lock().expect("no holder panics");
        let label = ctx.new_label_besides("-dump", &taken)?;
        taken.push(label.clone());
        Ok(label)
    }
}

/// Dumps one database (directory format), part of set `set` if given.
fn dump_database(
    ctx: &Context,
    server: &Server,
    database: &str,
    opts: &DumpOptions,
    set: Option<&str>,
    labels: &Labels,
) -> Result<DumpReport> {
    let pg_dump = tool_for(ctx, server, "pg_dump")?;
    let scratch = Scratch::new("dump")?;
    let archive = scratch.path().join("archive");
    let start_time = Utc::now();
    let label = labels.take(ctx)?;
    let _data = ctx.repo.lock_data_shared()?;
    let store = ChunkStore::open(&ctx.repo)?;
    let cmd = pg_dump_command(&pg_dump, &server.conn, database, opts, &archive);
    let what = format!(
        "pg_dump of database '{database}' (cluster '{}')",
        ctx.cluster_name
    );
    let (files, stored_size) =
        store::store_while_dumping(ctx, &store, cmd, &archive, opts.jobs, &what)?;
    let manifest = DumpManifest {
        version: DUMP_MANIFEST_VERSION,
        label,
        database: database.to_string(),
        pg_version: server.pg_version,
        pg_dump_major: pg_dump.major,
        start_time,
        stop_time: Utc::now(),
        selection: opts.selection.clone(),
        format: ArchiveFormat::Directory,
        globals: false,
        set: set.map(str::to_string),
        set_databases: Vec::new(),
        imported_from: None,
        size: files.iter().map(|f| f.size).sum(),
        stored_size,
        files,
    };
    publish(ctx, manifest)
}

/// Dumps the globals with `pg_dumpall --globals-only` (a plain script); with `head`,
/// as the head of that `dump --all` run, naming every database it dumped.
fn dump_globals(ctx: &Context, server: &Server, head: Option<&str>) -> Result<DumpReport> {
    let pg_dumpall = tool_for(ctx, server, "pg_dumpall")?;
    let scratch = Scratch::new("dump")?;
    let script = scratch.path().join(ArchiveFormat::Plain.file_name());
    let start_time = Utc::now();
    let label = match head {
        Some(head) => head.to_string(),
        None => ctx.new_label("-dump")?,
    };
    let mut cmd = pg_dumpall.command(&server.conn, &server.conn.dbname);
    cmd.args(["--globals-only", "--no-sync"])
        .arg(format!("--database={}", server.conn.dbname))
        .arg("--file")
        .arg(&script);
    run_tool(
        cmd,
        &format!(
            "pg_dumpall --globals-only of cluster '{}'",
            ctx.cluster_name
        ),
    )?;
    let _data = ctx.repo.lock_data_shared()?;
    let store = ChunkStore::open(&ctx.repo)?;
    let size = std::fs::metadata(&script)?.len();
    let source = (script, ArchiveFormat::Plain.file_name().to_string(), size);
    let (files, stored_size) = store::store_files(ctx, &store, vec![source], 1)?;
    let manifest = DumpManifest {
        version: DUMP_MANIFEST_VERSION,
        set: head.map(str::to_string),
        label,
        database: String::new(),
        pg_version: server.pg_version,
        pg_dump_major: pg_dumpall.major,
        start_time,
        stop_time: Utc::now(),
        selection: Selection::default(),
        format: ArchiveFormat::Plain,
        globals: true,
        set_databases: match head {
            Some(_) => server.databases.clone(),
            None => Vec::new(),
        },
        imported_from: None,
        size,
        stored_size,
        files,
    };
    publish(ctx, manifest)
}

/// Publishes a dump whose chunks are all stored.
pub(super) fn publish(ctx: &Context, manifest: DumpManifest) -> Result<DumpReport> {
    ctx.repo.publish_dump(&manifest)?;
    Ok(DumpReport {
        label: manifest.label,
        database: manifest.database,
        globals: manifest.globals,
        files: manifest.files.len(),
        size: manifest.size,
        stored_size: manifest.stored_size,
        start_time: manifest.start_time,
        stop_time: manifest.stop_time,
    })
}

/// The pg_dump options for a selection.
fn selection_args(selection: &Selection) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, values) in [
        ("--table", &selection.tables),
        ("--exclude-table", &selection.exclude_tables),
        ("--schema", &selection.schemas),
        ("--exclude-schema", &selection.exclude_schemas),
    ] {
        args.extend(values.iter().map(|v| format!("{flag}={v}")));
    }
    if selection.data_only {
        args.push("--data-only".into());
    }
    if selection.schema_only {
        args.push("--schema-only".into());
    }
    args
}

/// pg_dump writing database `database` as an uncompressed directory archive at `archive`.
fn pg_dump_command(
    pg_dump: &tools::Tool,
    conn: &ConnParams,
    database: &str,
    opts: &DumpOptions,
    archive: &Path,
) -> Command {
    let mut cmd = pg_dump.command(conn, database);
    // --strict-names: a -t or -n pattern that matches nothing is an error, not an
    // empty dump. --no-sync: the scratch copy is read once and removed.
    cmd.args([
        "--format=directory",
        "--compress=0",
        "--no-sync",
        "--strict-names",
    ]);
    if opts.jobs > 1 {
        cmd.arg(format!("--jobs={}", opts.jobs));
    }
    cmd.args(selection_args(&opts.selection));
    cmd.arg("--file").arg(archive);
    cmd
}

/// Runs a dumping program to its end; `what` names it in the error.
fn run_tool(mut cmd: Command, what: &str) -> Result<()> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = scratch::spawn(&mut cmd)?
        .output()
        .with_context(|| format!("cannot wait for {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed; nothing was published:\n{}",
            scratch::messages(&output.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_becomes_pg_dump_options() {
        let s = Selection {
            tables: vec!["public.t*".into()],
            exclude_tables: vec!["public.tmp".into()],
            schemas: vec!["app".into()],
            exclude_schemas: vec!["audit".into()],
            data_only: true,
            schema_only: false,
        };
        assert_eq!(
            selection_args(&s),
            [
                "--table=public.t*",
                "--exclude-table=public.tmp",
                "--schema=app",
                "--exclude-schema=audit",
                "--data-only"
            ]
        );
    }
}
