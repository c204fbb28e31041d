//! `pgkeep dump-import`: brings an existing pg_dump archive (directory, custom or tar
//! format, or a plain SQL script) into the repository as a logical backup of a
//! database, stored in content-defined chunks like pgkeep's own dumps (a directory
//! archive file by file). The versions that wrote it come from `pg_restore --list`, or
//! from a plain script's header.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use chrono::Utc;

use super::dump::{DumpReport, publish};
use super::store::{store_archive, store_files};
use crate::engine::Context;
use crate::engine::scratch;
use crate::pg::tools;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::{ArchiveFormat, DUMP_MANIFEST_VERSION, DumpManifest, Selection};

pub struct ImportOptions {
    pub path: PathBuf,
    /// The database the archive is a dump of (for retention and as restore's default).
    pub database: String,
    pub jobs: usize,
}

pub fn import(ctx: &Context, opts: &ImportOptions) -> Result<DumpReport> {
    if opts.database.is_empty() {
        bail!("--database must name the database the archive is a dump of");
    }
    let path = &opts.path;
    let format = detect(path)?;
    let (pg_version, pg_dump_major) = match format {
        ArchiveFormat::Plain => versions(&script_header(path)?, "-- "),
        _ => versions(&list(ctx, path)?, ";     "),
    }
    .with_context(|| {
        format!(
            "{} does not say which PostgreSQL and pg_dump versions wrote it",
            path.display()
        )
    })?;
    let start_time = Utc::now();
    let label = ctx.new_label("-dump")?;
    let _data = ctx.repo.lock_data_shared()?;
    let store = ChunkStore::open(&ctx.repo)?;
    let (files, stored_size) = match format {
        ArchiveFormat::Directory => store_archive(ctx, &store, path, opts.jobs)?,
        _ => {
            let size = std::fs::metadata(path)?.len();
            let source = (path.clone(), format.file_name().to_string(), size);
            store_files(ctx, &store, vec![source], 1)?
        }
    };
    let manifest = DumpManifest {
        version: DUMP_MANIFEST_VERSION,
        label,
        database: opts.database.clone(),
        pg_version,
        pg_dump_major,
        start_time,
        stop_time: Utc::now(),
        selection: Selection::default(),
        format,
        globals: false,
        set: None,
        set_databases: Vec::new(),
        imported_from: Some(path.display().to_string()),
        size: files.iter().map(|f| f.size).sum(),
        stored_size,
        files,
    };
    publish(ctx, manifest)
}

/// The format of the archive at `path`, from what pg_dump puts at its start.
fn detect(path: &Path) -> Result<ArchiveFormat> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        if !path.join("toc.dat").is_file() {
            bail!(
                "{} is a directory without toc.dat, so not a pg_dump directory archive",
                path.display()
            );
        }
        return Ok(ArchiveFormat::Directory);
    }
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)?
        .take(512)
        .read_to_end(&mut head)?;
    Ok(if head.starts_with(b"PGDMP") {
        ArchiveFormat::Custom
    } else if head.get(257..262) == Some(b"ustar") {
        ArchiveFormat::Tar
    } else if String::from_utf8_lossy(&head).contains("PostgreSQL database dump") {
        ArchiveFormat::Plain
    } else {
        bail!(
            "{} is not a pg_dump archive (custom, directory or tar format) nor a plain SQL dump",
            path.display()
        );
    })
}

/// `pg_restore --list` of the archive: its header names the versions.
fn list(ctx: &Context, path: &Path) -> Result<String> {
    let pg_restore = tools::newest("pg_restore", ctx.cluster.pg_bin.as_deref())?;
    let out = std::process::Command::new(&pg_restore.path)
        .arg("--list")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {}", pg_restore.path.display()))?;
    if !out.status.success() {
        bail!(
            "{} cannot read {}:\n{}",
            pg_restore.path.display(),
            path.display(),
            scratch::messages(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The comment lines at the top of a plain script.
fn script_header(path: &Path) -> Result<String> {
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(8192)
        .read_to_end(&mut head)?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// (`server_version_num`, pg_dump's major version) from the header lines "Dumped from
/// database version 15.10" and "Dumped by pg_dump version 15.10", each after `prefix`
/// (pg_restore --list puts a colon after "version").
fn versions(header: &str, prefix: &str) -> Option<(u32, u32)> {
    let find = |what: &str| {
        header.lines().find_map(|l| {
            let rest = l.strip_prefix(prefix)?.strip_prefix(what)?;
            version_num(rest.trim_start_matches(':').split_whitespace().next()?)
        })
    };
    let server = find("Dumped from database version")?;
    let pg_dump = find("Dumped by pg_dump version")?;
    Some((server, pg_dump / 10000))
}

/// "15.10" as `server_version_num` (150010); "18beta1" is 180000.
fn version_num(text: &str) -> Option<u32> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    (major >= 10).then_some(major * 10000 + minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_what_the_tools_print() {
        let listed = ";\n; Archive created at 2026-12-02 15:00:00 UTC\n;     dbname: shop\n\
                      ;     Dumped from database version: 15.10 (Debian 15.10-0+deb12u1)\n\
                      ;     Dumped by pg_dump version: 18.1\n";
        assert_eq!(versions(listed, ";     "), Some((150010, 18)));
        let script = "--\n-- PostgreSQL database dump\n--\n\n\
                      -- Dumped from database version 16.4\n-- Dumped by pg_dump version 16.4\n";
        assert_eq!(versions(script, "-- "), Some((160004, 16)));
        assert_eq!(versions("-- nothing here", "-- "), None);
        assert_eq!(version_num("18beta1"), Some(180000));
    }
}
