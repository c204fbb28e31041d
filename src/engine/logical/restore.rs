//! `pgkeep dump-restore`: restores a logical backup through pg_restore into a database
//! of the configured server, in parallel where pg_restore can, then runs ANALYZE.
//!
//! Invariants: the target database is checked before anything is written to it (it
//! must exist, or `--create` makes it; it must hold no objects, or `--clean` replaces
//! them); a chunk that does not read back stops pg_restore at once and fails the
//! restore, so a partly fed table is never taken for a restored one.

use anyhow::{Result, bail};

use super::{Scratch, feed};
use crate::engine::Context;
use crate::pg::conninfo::ConnParams;
use crate::pg::session::{Session, quote_ident};
use crate::pg::tools;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::ArchiveFormat;

pub struct DumpRestoreOptions {
    pub label: String,
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
    pub database: String,
    pub size: u64,
    pub analyzed: bool,
}

pub fn dump_restore(ctx: &Context, opts: &DumpRestoreOptions) -> Result<DumpRestoreReport> {
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
    let target = opts.to.clone().unwrap_or_else(|| dump.database.clone());
    let conn = ctx.conn_params()?;
    let pg_restore = tools::find(
        "pg_restore",
        dump.pg_dump_major,
        ctx.cluster.pg_bin.as_deref(),
        &format!("an archive of pg_dump {}", dump.pg_dump_major),
    )?;
    if dump.format == ArchiveFormat::Plain
        && (opts.clean || opts.no_owner || !opts.tables.is_empty() || !opts.schemas.is_empty())
    {
        bail!(
            "logical backup '{}' is a plain SQL script, which psql runs whole; --clean, --no-owner, --table and --schema need an archive format",
            dump.label
        );
    }
    prepare_target(&conn, &target, opts)?;
    let _reading = ctx.repo.lock_data_shared()?;
    let store = ChunkStore::open(&ctx.repo)?;
    let scratch = Scratch::new("restore")?;
    let laid = feed::lay_out(&store, &dump, scratch.path())?;
    let cmd = match dump.format {
        ArchiveFormat::Plain => {
            let psql = tools::find("psql", 0, ctx.cluster.pg_bin.as_deref(), "a plain dump")?;
            let mut cmd = psql.command(&conn, &target);
            cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
            if opts.single_transaction {
                cmd.arg("--single-transaction");
            }
            cmd.arg(format!("--dbname={}", conninfo_dbname(&target)))
                .arg("--file")
                .arg(&laid.path);
            cmd
        }
        format => {
            let mut cmd = pg_restore.command(&conn, &target);
            cmd.args(restore_args(opts, format, &target))
                .arg(&laid.path);
            cmd
        }
    };
    let what = format!("restoring '{}' into database '{target}'", dump.label);
    feed::run(cmd, &store, &laid, scratch.path(), &what).map_err(|e| {
        e.context(format!(
            "database '{target}' may hold part of the dump: restore again with --clean, or into another database"
        ))
    })?;
    let analyzed = opts.analyze && !dump.selection.schema_only;
    if analyzed {
        analyze(&conn, &target, opts)?;
    }
    Ok(DumpRestoreReport {
        label: dump.label,
        database: target,
        size: dump.size,
        analyzed,
    })
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
    let exists = session.text_with(
        "SELECT count(*)::text FROM pg_database WHERE datname = $1",
        &[target],
    )? != "0";
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
        (true, false, false) => {
            let mut in_target = Session::connect(&ConnParams {
                dbname: target.to_string(),
                ..conn.clone()
            })?;
            let objects = in_target.text(USER_OBJECTS)?;
            if objects != "0" {
                bail!(
                    "database '{target}' already holds {objects} objects; add --clean to replace the dump's objects in it (the others stay), or restore --to a new database with --create"
                );
            }
            Ok(())
        }
    }
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
