//! A directory-format dump written as pg_dump's other archive formats, for
//! `dump-export -F tar|custom`: the data files are the same in every format, only the
//! container differs. The table of contents is read (`toc`) to know each entry's data
//! file, in the order pg_restore wants them.
//!
//! Data in a tar archive is never compressed, and a converted custom archive is not
//! either, so a dump whose files pg_dump compressed (an imported one) is refused.

mod custom;
mod tar;
mod toc;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::{ArchiveFormat, DumpFile, DumpManifest};

/// What an entry of the table of contents brings.
enum Data<'d> {
    /// A table's rows (or another entry's data): one file.
    File(&'d DumpFile),
    /// Large objects: (OID, file) of each, and the file that lists them.
    Blobs(Vec<(u32, &'d DumpFile)>, &'d DumpFile),
}

/// A stored directory dump, its files by name, and its table of contents.
struct Stored<'d> {
    store: &'d ChunkStore,
    dump: &'d DumpManifest,
    files: BTreeMap<&'d str, &'d DumpFile>,
    toc_bytes: Vec<u8>,
    toc: toc::Toc,
}

impl<'d> Stored<'d> {
    fn open(store: &'d ChunkStore, dump: &'d DumpManifest) -> Result<Stored<'d>> {
        let files: BTreeMap<&str, &DumpFile> =
            dump.files.iter().map(|f| (f.name.as_str(), f)).collect();
        if let Some(compressed) = files
            .keys()
            .find(|n| n.ends_with(".gz") || n.ends_with(".lz4") || n.ends_with(".zst"))
        {
            bail!(
                "dump {} holds data pg_dump compressed ({compressed}), which pgkeep does not convert; export it as directory or plain",
                dump.label
            );
        }
        let toc_file = files
            .get("toc.dat")
            .with_context(|| format!("dump {} has no toc.dat", dump.label))?;
        let toc_bytes = read(store, toc_file)?;
        let toc = toc::read(&toc_bytes).with_context(|| format!("dump {}", dump.label))?;
        Ok(Stored {
            store,
            dump,
            files,
            toc_bytes,
            toc,
        })
    }

    fn file(&self, name: &str) -> Result<&'d DumpFile> {
        self.files.get(name).copied().with_context(|| {
            format!(
                "dump {}'s table of contents names {name}, which the dump does not hold",
                self.dump.label
            )
        })
    }

    /// The data of each entry (by index into the table of contents), in its order;
    /// every file of the dump is in it.
    fn data(&self) -> Result<Vec<(usize, Data<'d>)>> {
        let mut out = Vec::new();
        let mut named = 1; // toc.dat
        for (i, entry) in self.toc.entries.iter().enumerate() {
            let Some(name) = &entry.file else {
                continue;
            };
            let file = self.file(name)?;
            named += 1;
            if entry.desc != "BLOBS" {
                out.push((i, Data::File(file)));
                continue;
            }
            let list = String::from_utf8_lossy(&read(self.store, file)?).into_owned();
            let mut blobs = Vec::new();
            for line in list.lines().filter(|l| !l.trim().is_empty()) {
                let parsed = line
                    .split_once(' ')
                    .and_then(|(oid, f)| Some((oid.parse::<u32>().ok()?, f)));
                let Some((oid, blob)) = parsed else {
                    bail!("{name} has a line that is not 'OID FILE': {line}");
                };
                blobs.push((oid, self.file(blob)?));
                named += 1;
            }
            out.push((i, Data::Blobs(blobs, file)));
        }
        if named != self.files.len() {
            bail!(
                "dump {} holds files its table of contents does not name; export it as directory",
                self.dump.label
            );
        }
        Ok(out)
    }

    /// Streams a stored file into `out`, each chunk checked.
    fn copy(&self, file: &DumpFile, out: &mut impl Write) -> Result<()> {
        for (id, len) in &file.chunks {
            out.write_all(&self.store.read_exact(id, *len)?)?;
        }
        Ok(())
    }
}

/// A stored file's bytes (a small one: a table of contents or a list).
fn read(store: &ChunkStore, file: &DumpFile) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(file.size as usize);
    for (id, len) in &file.chunks {
        bytes.extend(store.read_exact(id, *len)?);
    }
    Ok(bytes)
}

/// Writes directory dump `dump` at `to` as a `format` archive (tar or custom), durably.
pub fn write(
    store: &ChunkStore,
    dump: &DumpManifest,
    format: ArchiveFormat,
    to: &Path,
) -> Result<()> {
    let stored = Stored::open(store, dump)?;
    let file =
        std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let written = match format {
        ArchiveFormat::Tar => tar::write(&stored, &mut out),
        ArchiveFormat::Custom => custom::write(&stored, &mut out),
        other => bail!("a directory dump is not converted to {}", other.name()),
    };
    written.with_context(|| format!("cannot write {}", to.display()))?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", to.display()))
}
