//! A stored dump laid out for PostgreSQL's tools in a scratch directory and fed to one
//! of them (pg_restore, or psql for a plain dump) from the repository.
//!
//! A directory-format dump needs no local copy: `toc.dat` is written (it is small, and
//! pg_restore reads it first), every other file is a named pipe fed as it is opened
//! (`pipes`). A plain dump is one pipe. A custom or tar archive, which pg_restore reads
//! by seeking, is written out whole.
//!
//! Invariant: a chunk that does not read back stops the tool's whole process group at
//! once, and the run fails: a tool takes the end of a pipe for the end of the data.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::pipes;
use crate::engine::scratch;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::{ArchiveFormat, DumpFile, DumpManifest};

/// A dump laid out in a scratch directory: the path to give the tool, and the files
/// that are pipes still to be fed.
pub struct Laid<'d> {
    pub path: PathBuf,
    pipes: Vec<&'d DumpFile>,
}

/// Lays `dump` out in `dir` (which exists and is empty).
pub fn lay_out<'d>(store: &ChunkStore, dump: &'d DumpManifest, dir: &Path) -> Result<Laid<'d>> {
    match dump.format {
        ArchiveFormat::Directory => {
            let (toc, rest): (Vec<&DumpFile>, Vec<&DumpFile>) =
                dump.files.iter().partition(|f| f.name == "toc.dat");
            for file in toc {
                write_file(store, file, &dir.join(&file.name))?;
            }
            pipes::make_pipes(dir, &rest)?;
            Ok(Laid {
                path: dir.to_path_buf(),
                pipes: rest,
            })
        }
        ArchiveFormat::Plain => {
            let files: Vec<&DumpFile> = dump.files.iter().collect();
            pipes::make_pipes(dir, &files)?;
            Ok(Laid {
                path: dir.join(&files[0].name),
                pipes: files,
            })
        }
        ArchiveFormat::Custom | ArchiveFormat::Tar => {
            let file = &dump.files[0];
            let path = dir.join(&file.name);
            write_file(store, file, &path)?;
            Ok(Laid {
                path,
                pipes: Vec::new(),
            })
        }
    }
}

/// Writes a stored file out whole, each chunk checked.
pub fn write_file(store: &ChunkStore, file: &DumpFile, path: &Path) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for (id, len) in &file.chunks {
        out.write_all(&store.read_exact(id, *len)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `cmd` (which reads `laid`) while its pipes are fed; `what` names the run in
/// errors ("restoring X into database Y"). Returns what the tool wrote on stderr.
pub fn run(
    mut cmd: Command,
    store: &ChunkStore,
    laid: &Laid,
    dir: &Path,
    what: &str,
) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut running = scratch::spawn(&mut cmd)?;
    let kill = running.killer();
    let finished = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    let stderr = running.child().stderr.take().expect("stderr is piped");
    let (served, status, messages) = std::thread::scope(|scope| {
        let feeder = scope.spawn(|| {
            // A chunk that cannot be read kills the tool before its pipe closes.
            pipes::serve(store, dir, &laid.pipes, &finished, &failed, &kill)
        });
        let reader = scope.spawn(move || read_all(stderr));
        let status = loop {
            match running.child().try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(e),
            }
        };
        finished.store(true, Ordering::Relaxed);
        let served = feeder.join().expect("the feeder panicked");
        (served, status, reader.join().expect("the reader panicked"))
    });
    if let Err(e) = served {
        bail!("{e:#}; {program} was stopped while {what}, which is left partial");
    }
    let status = status.with_context(|| format!("cannot wait for {program}"))?;
    if !status.success() {
        bail!(
            "{program} reported errors {what}:\n{}",
            scratch::messages(&messages)
        );
    }
    Ok(String::from_utf8_lossy(&messages).into_owned())
}

/// Everything a child writes to `from` (its stderr), read to the end.
pub fn read_all(mut from: impl std::io::Read) -> Vec<u8> {
    let mut text = Vec::new();
    from.read_to_end(&mut text).ok();
    text
}
