//! `pgkeep dump-export`: writes a stored dump where the stock tools read it, so nothing
//! is locked in: as the archive it is (a directory, or the one file of a custom, tar or
//! plain archive), a directory archive as a tar or custom archive ([`convert`]), or as a plain SQL
//! script that pg_restore writes from it.
//!
//! Invariant: nothing appears at the destination until it is whole: the export is
//! written under a temporary name beside it, made durable, then renamed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::{convert, feed};
use crate::engine::Context;
use crate::engine::scratch::Scratch;
use crate::pg::tools;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::{ArchiveFormat, DumpManifest};

pub struct ExportOptions {
    pub label: String,
    /// The format to write; by default the dump's own.
    pub format: Option<ArchiveFormat>,
    pub path: PathBuf,
}

pub struct ExportReport {
    pub label: String,
    pub format: ArchiveFormat,
    pub path: PathBuf,
}

pub fn export(ctx: &Context, opts: &ExportOptions) -> Result<ExportReport> {
    let _reading = ctx.repo.lock_data_shared()?;
    let dump = ctx.repo.load_dump(&opts.label)?;
    let format = opts.format.unwrap_or(dump.format);
    if opts.path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; dump-export writes a new file or directory",
            opts.path.display()
        );
    }
    let name = opts
        .path
        .file_name()
        .context("the export path has no file name")?;
    let parent = match opts.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let partial = parent.join(format!("{}.pgkeep-partial", name.to_string_lossy()));
    remove_leftover(&partial)?;
    let store = ChunkStore::open(&ctx.repo)?;
    let written = match (dump.format, format) {
        (from, to) if from == to => write_as_stored(&store, &dump, &partial),
        (_, ArchiveFormat::Plain) => write_script(ctx, &store, &dump, &partial),
        (ArchiveFormat::Directory, ArchiveFormat::Tar | ArchiveFormat::Custom) => {
            convert::write(&store, &dump, format, &partial)
        }
        (from, to) => bail!(
            "a {} dump cannot be exported as {} yet; export it as {}{}, which pg_restore and psql read",
            from.name(),
            to.name(),
            from.name(),
            if from == ArchiveFormat::Plain {
                ""
            } else {
                " or plain"
            }
        ),
    };
    if let Err(e) = written {
        let _ = remove_leftover(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &opts.path).with_context(|| {
        format!(
            "cannot rename {} to {}",
            partial.display(),
            opts.path.display()
        )
    })?;
    crate::os::sync_dir(&parent)?;
    Ok(ExportReport {
        label: dump.label,
        format,
        path: opts.path.clone(),
    })
}

/// Removes what an interrupted export left under the temporary name.
fn remove_leftover(partial: &Path) -> Result<()> {
    let Ok(meta) = partial.symlink_metadata() else {
        return Ok(());
    };
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(partial)
    } else {
        std::fs::remove_file(partial)
    };
    removed.with_context(|| format!("cannot remove the interrupted export {}", partial.display()))
}

/// The archive as stored: its directory, or its one file.
fn write_as_stored(store: &ChunkStore, dump: &DumpManifest, to: &Path) -> Result<()> {
    if dump.format != ArchiveFormat::Directory {
        return feed::write_file(store, &dump.files[0], to);
    }
    std::fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
    for file in &dump.files {
        feed::write_file(store, file, &to.join(&file.name))?;
    }
    crate::os::sync_dir(to)
}

/// A pg_restore that reads `dump`.
fn pg_restore_for(ctx: &Context, dump: &DumpManifest) -> Result<tools::Tool> {
    tools::find(
        "pg_restore",
        dump.pg_dump_major,
        ctx.cluster.pg_bin.as_deref(),
        &format!("an archive of pg_dump {}", dump.pg_dump_major),
    )
}

/// A plain SQL script, written by pg_restore from the archive.
fn write_script(ctx: &Context, store: &ChunkStore, dump: &DumpManifest, to: &Path) -> Result<()> {
    let pg_restore = pg_restore_for(ctx, dump)?;
    let scratch = Scratch::new("export")?;
    let laid = feed::lay_out(store, dump, scratch.path())?;
    let mut cmd = Command::new(&pg_restore.path);
    cmd.arg(format!("--format={}", dump.format.name()))
        .arg("--file")
        .arg(to)
        .arg(&laid.path);
    let what = format!("writing '{}' as a script", dump.label);
    feed::run(cmd, store, &laid, scratch.path(), &what)?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot make {} durable", to.display()))
}
