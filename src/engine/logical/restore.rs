//! `pgkeep dump-restore`: restores a logical backup through pg_restore into a database
//! of the configured server, in parallel where pg_restore can, then runs ANALYZE.
//!
//! Invariants: the target database is checked before anything is written to it (it
//! must exist, or `--create` makes it; it must hold no objects, or `--clean` replaces
//! them); a chunk that does not read back stops pg_restore at once and fails the
//! restore, so a partly fed table is never taken for a restored one.

use anyhow::{Context as _, Result, bail};

use super::{Scratch, feed};
use crate::engine::Context;
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
    if dump.format == ArchiveFormat::Plain
        && (opts.clean || opts.no_owner || !opts.tables.is_empty() || !opts.schemas.is_empty())
    {
        bail!(
            "logical backup '{}' is a plain SQL script, which psql runs whole; --clean, --no-owner, --table and --schema need an archive format",
            dump.label
        );
    }
    let conn = ctx.conn_params()?;
    if opts.all {
        return restore_set(ctx, &conn, &dump, opts);
    }
    if dump.globals {
        let _reading = ctx.repo.lock_data_shared()?;
        let store = ChunkStore::open(&ctx.repo)?;
        restore_globals(ctx, &store, &conn, &dump)?;
        return Ok(vec![report(&dump, None, false)]);
    }
    let target = opts.to.clone().unwrap_or_else(|| dump.database.clone());
    prepare_target(&conn, &target, opts)?;
    let _reading = ctx.repo.lock_data_shared()?;
    let store = ChunkStore::open(&ctx.repo)?;
    restore_into(ctx, &store, &conn, &dump, &Into::Existing(&target), opts)?;
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
enum Into<'a> {
    /// Into this database, which exists.
    Existing(&'a str),
    /// Into a database pg_restore creates as the dumped one was (name, encoding,
    /// locale, owner, settings), connected first to the maintenance database.
    Created,
}

/// Restores one dump: a plain script through psql, an archive through pg_restore.
fn restore_into(
    ctx: &Context,
    store: &ChunkStore,
    conn: &ConnParams,
    dump: &DumpManifest,
    into: &Into,
    opts: &DumpRestoreOptions,
) -> Result<()> {
    let scratch = Scratch::new("restore")?;
    let laid = feed::lay_out(store, dump, scratch.path())?;
    let (connect_to, shown) = match into {
        Into::Existing(db) => (*db, *db),
        Into::Created => (conn.dbname.as_str(), dump.database.as_str()),
    };
    let cmd = match dump.format {
        ArchiveFormat::Plain => {
            let mut cmd = psql(ctx, conn, connect_to)?;
            cmd.args(["-v", "ON_ERROR_STOP=1"]);
            if opts.single_transaction {
                cmd.arg("--single-transaction");
            }
            cmd.arg("--file").arg(&laid.path);
            cmd
        }
        format => {
            let pg_restore = tools::find(
                "pg_restore",
                dump.pg_dump_major,
                ctx.cluster.pg_bin.as_deref(),
                &format!("an archive of pg_dump {}", dump.pg_dump_major),
            )?;
            let mut cmd = pg_restore.command(conn, connect_to);
            cmd.args(restore_args(opts, format, connect_to));
            if matches!(into, Into::Created) {
                cmd.arg("--create");
            }
            cmd.arg(&laid.path);
            cmd
        }
    };
    let what = format!("restoring '{}' into database '{shown}'", dump.label);
    feed::run(cmd, store, &laid, scratch.path(), &what)
        .map_err(|e| {
            e.context(format!(
                "database '{shown}' may hold part of the dump: restore again with --clean, or into another database"
            ))
        })
        .map(drop)
}

/// psql connected to `database`, quiet, reading no `.psqlrc`.
fn psql(ctx: &Context, conn: &ConnParams, database: &str) -> Result<std::process::Command> {
    let psql = tools::find("psql", 0, ctx.cluster.pg_bin.as_deref(), "a plain dump")?;
    let mut cmd = psql.command(conn, database);
    cmd.args(["-X", "-q"])
        .arg(format!("--dbname={}", conninfo_dbname(database)));
    Ok(cmd)
}

/// Runs the globals script. A role that exists already (the one connected, at least)
/// is not an error: the script's `ALTER ROLE` after each `CREATE ROLE` gives it the
/// dumped attributes. Any other error is.
fn restore_globals(
    ctx: &Context,
    store: &ChunkStore,
    conn: &ConnParams,
    dump: &DumpManifest,
) -> Result<()> {
    let scratch = Scratch::new("restore")?;
    let laid = feed::lay_out(store, dump, scratch.path())?;
    let mut cmd = psql(ctx, conn, &conn.dbname)?;
    cmd.arg("--file").arg(&laid.path);
    let what = format!("restoring the globals of '{}'", dump.label);
    let messages = feed::run(cmd, store, &laid, scratch.path(), &what)?;
    let errors: Vec<&str> = messages
        .lines()
        .filter(|l| {
            l.contains("ERROR:") && !(l.contains("role \"") && l.ends_with("already exists"))
        })
        .collect();
    if !errors.is_empty() {
        bail!("psql reported errors {what}:\n{}", errors.join("\n"));
    }
    Ok(())
}

/// Restores a whole `dump --all` set: the globals, then every database, each into an
/// existing database of that name that holds nothing (or with `--clean`), or created
/// as it was. Every target is checked before anything is written.
fn restore_set(
    ctx: &Context,
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
    if opts.to.is_some() || opts.create || !opts.tables.is_empty() || !opts.schemas.is_empty() {
        bail!(
            "--all restores every database under its own name; leave out --to, --create, --table and --schema"
        );
    }
    let members = ctx.repo.dumps()?;
    let mut plan = Vec::new();
    let mut session = Session::connect(conn)?;
    for db in &globals.set_databases {
        let member = members
            .iter()
            .find(|d| d.set.as_deref() == Some(globals.label.as_str()) && &d.database == db)
            .with_context(|| {
                format!(
                    "the `dump --all` run '{}' has no dump of database '{db}' (it was interrupted, or that dump was removed); restore the databases it has one by one",
                    globals.label
                )
            })?;
        let exists = database_exists(&mut session, db)?;
        if exists && !opts.clean {
            refuse_if_not_empty(conn, db)?;
        }
        plan.push((member, exists));
    }
    drop(session);
    let _reading = ctx.repo.lock_data_shared()?;
    let store = ChunkStore::open(&ctx.repo)?;
    restore_globals(ctx, &store, conn, globals)?;
    let mut reports = vec![report(globals, None, false)];
    for (member, exists) in plan {
        let into = match exists {
            true => Into::Existing(&member.database),
            false => Into::Created,
        };
        restore_into(ctx, &store, conn, member, &into, opts)?;
        if opts.analyze {
            analyze(conn, &member.database, opts)?;
        }
        reports.push(report(member, Some(&member.database), opts.analyze));
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
fn prepare_target(conn: &ConnParams, target: &str, opts: &DumpRestoreOptions) -> Result<()> {
    let mut session = Session::connect(conn)?;
    let exists = database_exists(&mut session, target)?;
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
