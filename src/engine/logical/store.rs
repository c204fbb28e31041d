//! Storing an archive's files in the chunk store: a directory or a list of files
//! (imports, the globals script), or the files of a running pg_dump, each as soon as
//! pg_dump closes it, so that storing overlaps dumping.
//!
//! Invariant: what is returned is exactly what the files held once the program that
//! wrote them had exited: a file stored early is checked again then (size and mtime),
//! and stored again if it changed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};

use super::feed::read_all;
use super::watch::ClosedFiles;
use crate::engine::scratch;
use crate::engine::{Context, parallel_map};
use crate::repo::chunk_store::{ChunkStore, ChunkWriter};
use crate::repo::logical::DumpFile;

/// Stores every file of the archive directory; see [`store_files`].
pub fn store_archive(
    ctx: &Context,
    store: &ChunkStore,
    archive: &Path,
    jobs: usize,
) -> Result<(Vec<DumpFile>, u64)> {
    let files = list_files(archive)?
        .into_iter()
        .map(|(name, size, _)| (archive.join(&name), name, size))
        .collect();
    store_files(ctx, store, files, jobs)
}

/// Stores each (source, name in the archive, size), largest first on `jobs` threads;
/// returns them sorted by name, and the bytes of packs stored.
pub fn store_files(
    ctx: &Context,
    store: &ChunkStore,
    mut sources: Vec<(PathBuf, String, u64)>,
    jobs: usize,
) -> Result<(Vec<DumpFile>, u64)> {
    sources.sort_by_key(|(_, _, size)| std::cmp::Reverse(*size));
    let writer = store.writer(ctx.repo_config.compress_level, false);
    let files = parallel_map(sources, jobs, |(path, name, _), _| {
        Ok(store_file(&writer, &path, &name)?.file)
    });
    let written = writer.finish();
    let mut files = files?;
    let written = written?;
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((files, written.stored_bytes))
}

/// A file as stored, with the mtime it had then.
struct Stored {
    file: DumpFile,
    mtime: SystemTime,
}

/// Stores the file at `path` as `name`; an error if it changes while being read.
fn store_file(writer: &ChunkWriter, path: &Path, name: &str) -> Result<Stored> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let chunks = writer.store_stream(BufReader::with_capacity(1 << 20, file))?;
    let stored: u64 = chunks.iter().map(|(_, len)| u64::from(*len)).sum();
    if stored != meta.len() {
        bail!("{} changed while it was stored; dump again", path.display());
    }
    Ok(Stored {
        file: DumpFile {
            name: name.to_string(),
            size: meta.len(),
            chunks,
        },
        mtime: meta.modified()?,
    })
}

/// Runs `cmd`, a program that writes an archive directory at `archive` (created here,
/// empty, for it), storing each file on `jobs` threads as soon as the program closes
/// it. Once the program has exited every file is checked: one not stored yet, or
/// changed since, is stored then. Returns the files sorted by name and the bytes of
/// packs stored; an error naming `what` if the program fails.
pub fn store_while_dumping(
    ctx: &Context,
    store: &ChunkStore,
    mut cmd: Command,
    archive: &Path,
    jobs: usize,
    what: &str,
) -> Result<(Vec<DumpFile>, u64)> {
    std::fs::create_dir(archive).with_context(|| format!("cannot create {}", archive.display()))?;
    let mut closed = ClosedFiles::watch(archive)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut running = scratch::spawn(&mut cmd)?;
    let stderr = running.child().stderr.take().expect("stderr is piped");
    let writer = store.writer(ctx.repo_config.compress_level, false);
    let stored: Mutex<BTreeMap<String, Stored>> = Mutex::default();
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    let (watched, messages) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_all(stderr));
        for _ in 0..jobs.max(1) {
            let (rx, writer, stored) = (rx.clone(), &writer, &stored);
            scope.spawn(move || {
                for name in rx {
                    // A file that fails now (still being written after all) is
                    // stored by the check once pg_dump has exited.
                    if let Ok(s) = store_file(writer, &archive.join(&name), &name) {
                        stored.lock().unwrap().insert(name, s);
                    }
                }
            });
        }
        let watched = watch_until_exit(running.child(), &mut closed, &tx);
        drop(tx);
        if watched.is_err() {
            drop(running); // kills it
        }
        (watched, reader.join().expect("the stderr reader panicked"))
    });
    let outcome = (|| {
        let status = watched?;
        if !status.success() {
            bail!(
                "{what} failed; nothing was published:\n{}",
                scratch::messages(&messages)
            );
        }
        let mut early = stored.into_inner().unwrap();
        let mut files = Vec::new();
        for (name, size, mtime) in list_files(archive)? {
            let file = match early.remove(&name) {
                Some(s) if s.file.size == size && s.mtime == mtime => s.file,
                _ => store_file(&writer, &archive.join(&name), &name)?.file,
            };
            files.push(file);
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    })();
    let written = writer.finish();
    let files = outcome?;
    Ok((files, written?.stored_bytes))
}

/// Sends each file the program closes to the storing threads until it exits.
fn watch_until_exit(
    child: &mut std::process::Child,
    closed: &mut ClosedFiles,
    tx: &crossbeam_channel::Sender<String>,
) -> Result<std::process::ExitStatus> {
    loop {
        let exited = child.try_wait()?;
        let wait = if exited.is_some() {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        for name in closed.next(wait)? {
            tx.send(name)
                .expect("the storing threads outlive the watch");
        }
        if let Some(status) = exited {
            return Ok(status);
        }
    }
}

/// The regular files of an archive directory: (name, size, mtime).
fn list_files(archive: &Path) -> Result<Vec<(String, u64, SystemTime)>> {
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
        files.push((name, meta.len(), meta.modified()?));
    }
    Ok(files)
}
