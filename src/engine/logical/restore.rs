//! `pgkeep dump-restore`: restores a logical backup through pg_restore into a database
//! of the configured server, in parallel where pg_restore can, then runs ANALYZE.
//!
//! Invariants: the target database is checked before anything is written to it (it
//! must exist, or `--create` makes it; it must hold no objects, or `--clean` replaces
//! them); a chunk that does not read back stops pg_restore at once and fails the
//! restore, so a partly fed table is never taken for a restored one.

use anyhow::{Context as _, Result, bail};

use super::feed;
use crate::engine::Context;
use crate::engine::scratch::Scratch;
use crate::pg::conninfo::ConnParams;
use crate::pg::session::{Session, quote_ident};
use crate::pg::tools;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::{ArchiveFormat, DumpManifest};

pub struct DumpRestoreOptions {
    pub label: String,
    /// Restore the whole `dump --all` run whose globals dump `label` is.
    pub all: bool,
    /// The database the dump must hold (a check), if given.
    pub database: Option<String>,
    /// Restore into this database instead of the dumped one's name.
    pub to: Option<String>,
    pub create: bool,
    pub clean: bool,
    pub tables: Vec<String>,
    pub schemas: Vec<String>,
    pub jobs: usize,
    pub single_transaction: bool,
    pub no_owner: bool,
    pub analyze: bool,
}

pub struct DumpRestoreReport {
    pub label: String,
    /// The database restored into; `None` for the globals.
    pub database: Option<String>,
    pub size: u64,
    pub analyzed: bool,
}

pub fn dump_restore(ctx: &Context, opts: &DumpRestoreOptions) -> Result<Vec<DumpRestoreReport>> {
    if opts.single_transaction && opts.jobs > 1 {
        bail!(
            "--single-transaction and --jobs exclude each other (a parallel restore uses several sessions); give one"
        );
    }
    if opts.create && opts.clean && (!opts.tables.is_empty() || !opts.schemas.is_empty()) {
        bail!(
            "--create --clean drops the whole database, and --table or --schema would bring back only part of it; \
             leave out --create to replace just those objects"
        );
    }
    // Held from before the manifests are read: collection must not remove a dump (or
    // its chunks) this restore has chosen.
    let _reading = ctx.repo.lock_data_shared()?;
    let dump = ctx.repo.load_dump(&opts.label)?;
    if let Some(db) = &opts.database
        && db != &dump.database
    {
        bail!(
            "logical backup '{}' holds database '{}', not '{db}'; `pgkeep info` lists the dumps",
            dump.label,
            dump.database
        );
    }
    let conn = ctx.conn_params()?;
    let store = ChunkStore::open(&ctx.repo)?;
    if opts.all {
        return restore_set(ctx, &store, &conn, &dump, opts);
    }
    if dump.globals {
        let prepared = prepare(ctx, &store, &dump)?;
        restore_globals(&store, &conn, &dump, &prepared)?;
        return Ok(vec![report(&dump, None, false)]);
    }
    if dump.format == ArchiveFormat::Plain
        && (opts.clean || opts.no_owner || !opts.tables.is_empty() || !opts.schemas.is_empty())
    {
        bail!(
            "logical backup '{}' is a plain SQL script, which psql runs whole; --clean, --no-owner, --table and --schema need an archive format",
            dump.label
        );
    }
    let target = opts.to.clone().unwrap_or_else(|| dump.database.clone());
    // Everything that can fail without touching the server comes before the target is
    // created or dropped.
    let prepared = prepare(ctx, &store, &dump)?;
    prepare_target(&conn, &target, opts, dump.selection.data_only)?;
    run_restore(
        &store,
        &conn,
        &dump,
        &prepared,
        &Target::Existing(&target),
        opts,
    )?;
    let analyzed = opts.analyze && !dump.selection.schema_only;
    if analyzed {
        analyze(&conn, &target, opts)?;
    }
    Ok(vec![report(&dump, Some(&target), analyzed)])
}

fn report(dump: &DumpManifest, database: Option<&str>, analyzed: bool) -> DumpRestoreReport {
    DumpRestoreReport {
        label: dump.label.clone(),
        database: database.map(str::to_string),
        size: dump.size,
        analyzed,
    }
}

/// Where a restore goes.
enum Target<'a> {
    /// Into this database, which exists.
    Existing(&'a str),
    /// Into a database pg_restore creates as the dumped one was (name, encoding,
    /// locale, owner, settings), connected first to the maintenance database.
    Created,
}

/// A dump laid out for the program that restores it, found new enough.
struct Prepared<'d> {
    scratch: Scratch,
    laid: feed::Laid<'d>,
    tool: tools::Tool,
}

/// Lays `dump` out and finds its program: psql for a plain script, else pg_restore,
/// each at least as new as the pg_dump that wrote it.
fn prepare<'d>(ctx: &Context, store: &ChunkStore, dump: &'d DumpManifest) -> Result<Prepared<'d>> {
    let name = match dump.format {
        ArchiveFormat::Plain => "psql",
        _ => "pg_restore",
    };
    let tool = tools::find(
        name,
        dump.pg_dump_major,
        ctx.cluster.pg_bin.as_deref(),
        &format!("a dump written by pg_dump {}", dump.pg_dump_major),
    )?;
    let scratch = Scratch::new("restore")?;
    let laid = feed::lay_out(store, dump, scratch.path())?;
    Ok(Prepared {
        scratch,
        laid,
        tool,
    })
}

/// Restores one prepared dump: a plain script through psql, an archive through
/// pg_restore.
fn run_restore(
    store: &ChunkStore,
    conn: &ConnParams,
    dump: &DumpManifest,
    prepared: &Prepared,
    into: &Target,
    opts: &DumpRestoreOptions,
) -> Result<()> {
    let (connect_to, shown) = match into {
        Target::Existing(db) => (*db, *db),
        Target::Created => (conn.dbname.as_str(), dump.database.as_str()),
    };
    let mut cmd = prepared.tool.command(conn, connect_to);
    match dump.format {
        ArchiveFormat::Plain => {
            cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .arg(format!("--dbname={}", conninfo_dbname(connect_to)));
            if opts.single_transaction {
                cmd.arg("--single-transaction");
            }
            cmd.arg("--file");
        }
        format => {
            cmd.args(restore_args(opts, format, connect_to));
            if matches!(into, Target::Created) {
                cmd.arg("--create");
            }
        }
    }
    cmd.arg(&prepared.laid.path);
    let what = format!("restoring '{}' into database '{shown}'", dump.label);
    feed::run(cmd, store, &prepared.laid, prepared.scratch.path(), &what)
        .map_err(|e| {
            e.context(format!(
                "database '{shown}' may hold part of the dump: restore again with --clean, or into another database"
            ))
        })
        .map(drop)
}

/// Runs the globals script. A role that exists already (the one connected, at least)
/// is not an error: the script's `ALTER ROLE` after each `CREATE ROLE` gives it the
/// dumped attributes. Any other error is. Messages are asked for in English, as they
/// are read here.
fn restore_globals(
    store: &ChunkStore,
    conn: &ConnParams,
    dump: &DumpManifest,
    prepared: &Prepared,
) -> Result<()> {
    let mut cmd = prepared.tool.command(conn, &conn.dbname);
    let options = conn.options.as_deref().unwrap_or_default();
    cmd.env("PGOPTIONS", format!("{options} -c lc_messages=C"))
        .args(["-X", "-q"])
        .arg(format!("--dbname={}", conninfo_dbname(&conn.dbname)))
        .arg("--file")
        .arg(&prepared.laid.path);
    let what = format!("restoring the globals of '{}'", dump.label);
    let messages = feed::run(cmd, store, &prepared.laid, prepared.scratch.path(), &what)?;
    let errors: Vec<&str> = messages
        .lines()
        .filter(|l| {
            l.contains("ERROR:") && !(l.contains("role \"") && l.ends_with("already exists"))
        })
        .collect();
    if !errors.is_empty() {
        bail!(
            "psql reported errors {what} (the statements before them took effect):\n{}",
            errors.join("\n")
        );
    }
    Ok(())
}

/// Restores a whole `dump --all` run: the globals, then every database, each into an
/// existing database of that name that holds nothing (or with `--clean`), or created
/// as it was. Every dump is laid out and every target checked before anything is
/// written.
fn restore_set(
    ctx: &Context,
    store: &ChunkStore,
    conn: &ConnParams,
    globals: &DumpManifest,
    opts: &DumpRestoreOptions,
) -> Result<Vec<DumpRestoreReport>> {
    if globals.set.as_deref() != Some(globals.label.as_str()) {
        bail!(
            "--all restores a `pgkeep dump --all` run from its globals dump, and '{}' is not one; `pgkeep info` lists the dumps",
            globals.label
        );
    }
    if opts.single_transaction {
        bail!(
            "--all restores each database in its own transactions; leave out --single-transaction"
        );
    }
    if opts.to.is_some() || opts.create || !opts.tables.is_empty() || !opts.schemas.is_empty() {
        bail!(
            "--all restores every database under its own name; leave out --to, --create, --table and --schema"
        );
    }
    let dumps = ctx.repo.dumps()?;
    let mut members = Vec::new();
    for db in &globals.set_databases {
        let member = dumps
            .iter()
            .find(|d| d.set.as_deref() == Some(globals.label.as_str()) && &d.database == db)
            .with_context(|| {
                format!(
                    "the `dump --all` run '{}' has no dump of database '{db}' (it was removed); restore the databases it has one by one",
                    globals.label
                )
            })?;
        members.push(member);
    }
    let prepared_globals = prepare(ctx, store, globals)?;
    let mut plan = Vec::new();
    let mut session = Session::connect(conn)?;
    for member in members {
        let exists = database_exists(&mut session, &member.database)?;
        if exists && !opts.clean {
            refuse_if_not_empty(conn, &member.database)?;
        }
        plan.push((member, exists, prepare(ctx, store, member)?));
    }
    drop(session);
    restore_globals(store, conn, globals, &prepared_globals)?;
    let mut reports = vec![report(globals, None, false)];
    for (member, exists, prepared) in &plan {
        let into = match exists {
            true => Target::Existing(&member.database),
            false => Target::Created,
        };
        run_restore(store, conn, member, prepared, &into, opts).map_err(|e| {
            let done: Vec<&str> = reports
                .iter()
                .filter_map(|r| r.database.as_deref())
                .collect();
            e.context(format!(
                "the globals and {} were restored before this failed",
                match done.is_empty() {
                    true => "no database".to_string(),
                    false => format!("databases {}", done.join(", ")),
                }
            ))
        })?;
        let analyzed = opts.analyze && !member.selection.schema_only;
        if analyzed {
            analyze(conn, &member.database, opts)?;
        }
        reports.push(report(member, Some(&member.database), analyzed));
    }
    Ok(reports)
}

fn database_exists(session: &mut Session, name: &str) -> Result<bool> {
    Ok(session.text_with(
        "SELECT count(*)::text FROM pg_database WHERE datname = $1",
        &[name],
    )? != "0")
}

/// pg_restore's options for a restore into `target`.
fn restore_args(opts: &DumpRestoreOptions, format: ArchiveFormat, target: &str) -> Vec<String> {
    let mut args = vec![
        format!("--format={}", format.name()),
        format!("--dbname={}", conninfo_dbname(target)),
    ];
    // A tar archive is read in order: pg_restore restores it in one session.
    if opts.jobs > 1 && format != ArchiveFormat::Tar {
        args.push(format!("--jobs={}", opts.jobs));
    }
    args.extend(opts.tables.iter().map(|t| format!("--table={t}")));
    args.extend(opts.schemas.iter().map(|s| format!("--schema={s}")));
    if !opts.tables.is_empty() || !opts.schemas.is_empty() {
        // A name the dump does not hold is an error, not a restore of nothing.
        args.push("--strict-names".into());
    }
    if opts.clean {
        args.extend(["--clean".into(), "--if-exists".into()]);
    }
    if opts.single_transaction {
        args.push("--single-transaction".into());
    }
    if opts.no_owner {
        args.push("--no-owner".into());
    }
    args
}

/// `dbname='...'` as libpq parses it: a bare name containing `=` would be taken for a
/// connection string.
fn conninfo_dbname(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Makes sure `target` may be restored into: created with `--create`, and holding
/// nothing unless `--clean` replaces it.
/// A data-only dump loads rows into tables that must exist: its target is not
/// required to be empty (nor does `--clean` drop anything for it).
fn prepare_target(
    conn: &ConnParams,
    target: &str,
    opts: &DumpRestoreOptions,
    data_only: bool,
) -> Result<()> {
    let mut session = Session::connect(conn)?;
    let exists = database_exists(&mut session, target)?;
    if data_only {
        if !exists || opts.create {
            bail!(
                "a data-only dump loads rows into the tables of an existing database; restore its schema into '{target}' first, and leave out --create"
            );
        }
        return Ok(());
    }
    let create = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(target));
    match (exists, opts.create, opts.clean) {
        (false, false, _) => {
            bail!("database '{target}' does not exist on the server; add --create to create it")
        }
        (false, true, _) => session.execute(&create),
        (true, true, false) => bail!(
            "database '{target}' already exists; add --clean to replace it, or restore --to another name"
        ),
        (true, true, true) => {
            session.execute(&format!("DROP DATABASE {}", quote_ident(target)))?;
            session.execute(&create)
        }
        (true, false, true) => Ok(()),
        (true, false, false) => refuse_if_not_empty(conn, target),
    }
}

/// An error unless database `db` holds nothing beyond what `CREATE DATABASE` puts there.
fn refuse_if_not_empty(conn: &ConnParams, db: &str) -> Result<()> {
    let mut in_target = Session::connect(&ConnParams {
        dbname: db.to_string(),
        ..conn.clone()
    })?;
    let objects = in_target.text(USER_OBJECTS)?;
    if objects != "0" {
        bail!(
            "database '{db}' already holds {objects} objects; add --clean to replace the dump's objects in it (the others stay), or restore --to a new database with --create"
        );
    }
    Ok(())
}

/// How many objects a database holds beyond what `CREATE DATABASE` puts there.
const USER_OBJECTS: &str = "SELECT ( \
    (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
        AND n.nspname NOT LIKE 'pg_temp%') \
  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')) \
  + (SELECT count(*) FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public') \
      AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%') \
  + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND t.typtype IN ('e', 'd', 'r', 'm')) \
  + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql') \
  + (SELECT count(*) FROM pg_largeobject_metadata))::text";

/// ANALYZE of what was restored: the tables named by `--table` (in the schemas of
/// `--schema`, if given), else the whole database.
fn analyze(conn: &ConnParams, target: &str, opts: &DumpRestoreOptions) -> Result<()> {
    let mut session = Session::connect(&ConnParams {
        dbname: target.to_string(),
        ..conn.clone()
    })?;
    if opts.tables.is_empty() && opts.schemas.is_empty() {
        return session.execute("ANALYZE");
    }
    let tables = session.text_with(
        "SELECT coalesce(string_agg(c.oid::regclass::text, ', '), '') FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'm') \
           AND (c.relname = ANY(string_to_array($1, chr(1))) OR $1 = '') \
           AND (n.nspname = ANY(string_to_array($2, chr(1))) OR $2 = '')",
        &[&opts.tables.join("\u{1}"), &opts.schemas.join("\u{1}")],
    )?;
    if tables.is_empty() {
        return Ok(());
    }
    session.execute(&format!("ANALYZE {tables}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_quoted_for_libpq() {
        assert_eq!(conninfo_dbname("shop"), "dbname='shop'");
        assert_eq!(conninfo_dbname("a=b 'c'\\"), "dbname='a=b \\'c\\'\\\\'");
    }
}
