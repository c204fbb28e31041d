//! `pgkeep dump`: runs pg_dump (directory format, uncompressed, so that an unchanged
//! table writes the same bytes every time) into a scratch directory, stores each file of
//! the archive through the chunk store in content-defined chunks, and publishes a dump
//! manifest.
//!
//! Invariants: the manifest is published only after pg_dump succeeded and every chunk
//! it names is durable; the chunk index is loaded and the chunks referred to under the
//! shared data lock, so collection cannot remove them before the manifest exists; the
//! scratch directory is removed on every path out.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};

use super::{Scratch, major_of, tool_messages};
use crate::engine::{Context, parallel_map};
use crate::pg::session::Session;
use crate::pg::tools;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::{
    ArchiveFormat, DUMP_MANIFEST_VERSION, DumpFile, DumpManifest, Selection,
};

pub struct DumpOptions {
    pub database: String,
    pub selection: Selection,
    /// pg_dump's `--jobs`, and the threads that store the files.
    pub jobs: usize,
}

pub struct DumpReport {
    pub label: String,
    pub database: String,
    pub files: usize,
    pub size: u64,
    pub stored_size: u64,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
}

/// Dumps one database into the repository.
pub fn dump(ctx: &Context, opts: &DumpOptions) -> Result<DumpReport> {
    if opts.selection.data_only && opts.selection.schema_only {
        bail!("--data-only and --schema-only exclude each other; give one");
    }
    let info = ctx.repo.require_info()?;
    let conn = ctx.conn_params()?;
    let mut session = Session::connect(&conn)?;
    if session.system_identifier()? != info.system_identifier {
        bail!(
            "the server at `connection` is not the cluster registered as '{}' (another system identifier); fix `connection`",
            ctx.cluster_name
        );
    }
    let exists = session.text_with(
        "SELECT count(*)::text FROM pg_database WHERE datname = $1",
        &[&opts.database],
    )?;
    if exists == "0" {
        bail!(
            "database '{}' does not exist on the server; `psql -l` lists the databases",
            opts.database
        );
    }
    let pg_version = session.version_num;
    drop(session);
    let pg_dump = tools::find(
        "pg_dump",
        major_of(pg_version),
        ctx.cluster.pg_bin.as_deref(),
        &format!("dumping a PostgreSQL {} server", major_of(pg_version)),
    )?;
    let scratch = Scratch::new("dump")?;
    let archive = scratch.path().join("archive");
    let start_time = Utc::now();
    run_pg_dump(ctx, &pg_dump, &conn, opts, &archive)?;
    let label = ctx.new_label("-dump")?;
    let _data = ctx.repo.lock_data_shared()?;
    let store = ChunkStore::open(&ctx.repo)?;
    let (files, stored_size) = store_archive(ctx, &store, &archive, opts.jobs)?;
    let manifest = DumpManifest {
        version: DUMP_MANIFEST_VERSION,
        label,
        database: opts.database.clone(),
        pg_version,
        pg_dump_major: pg_dump.major,
        start_time,
        stop_time: Utc::now(),
        selection: opts.selection.clone(),
        format: ArchiveFormat::Directory,
        imported_from: None,
        size: files.iter().map(|f| f.size).sum(),
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

fn run_pg_dump(
    ctx: &Context,
    pg_dump: &tools::Tool,
    conn: &crate::pg::conninfo::ConnParams,
    opts: &DumpOptions,
    archive: &Path,
) -> Result<()> {
    let mut cmd = pg_dump.command(conn, &opts.database);
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
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {}", pg_dump.path.display()))?;
    if !output.status.success() {
        bail!(
            "pg_dump of database '{}' (cluster '{}') failed; nothing was stored:\n{}",
            opts.database,
            ctx.cluster_name,
            tool_messages(&output)
        );
    }
    Ok(())
}

/// Stores every file of the archive directory; see [`store_files`].
pub(super) fn store_archive(
    ctx: &Context,
    store: &ChunkStore,
    archive: &Path,
    jobs: usize,
) -> Result<(Vec<DumpFile>, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(archive)
        .with_context(|| format!("cannot read the archive directory {}", archive.display()))?
    {
        let entry = entry?;
        let meta = entry.metadata()?;
        let name = entry.file_name().into_string().map_err(|n| {
            anyhow::anyhow!("the archive holds a file named {n:?}, which is not UTF-8")
        })?;
        if !meta.is_file() {
            bail!(
                "{} holds {name}, which is not a regular file; a pg_dump directory archive holds only files",
                archive.display()
            );
        }
        files.push((entry.path(), name, meta.len()));
    }
    store_files(ctx, store, files, jobs)
}

/// Stores each (source, name in the archive, size), largest first on `jobs` threads;
/// returns them sorted by name, and the bytes of packs stored.
pub(super) fn store_files(
    ctx: &Context,
    store: &ChunkStore,
    mut sources: Vec<(PathBuf, String, u64)>,
    jobs: usize,
) -> Result<(Vec<DumpFile>, u64)> {
    sources.sort_by_key(|(_, _, size)| std::cmp::Reverse(*size));
    let writer = store.writer(ctx.repo_config.compress_level, false);
    let files = parallel_map(sources, jobs, |(path, name, size), _| {
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let chunks = writer.store_stream(BufReader::with_capacity(1 << 20, file))?;
        let stored: u64 = chunks.iter().map(|(_, len)| u64::from(*len)).sum();
        if stored != size {
            bail!("{} changed while it was stored; dump again", path.display());
        }
        Ok(DumpFile { name, size, chunks })
    });
    let written = writer.finish();
    let mut files = files?;
    let written = written?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((files, written.stored_bytes))
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
