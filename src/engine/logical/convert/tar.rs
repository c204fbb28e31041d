//! The tar format: pg_dump's directory format in a tar file (pg_backup_tar.c says so:
//! the files of an untarred archive are a directory archive, and pg_dump writes the same
//! `toc.dat` for both). pg_restore reads the members front to back: `toc.dat` first,
//! then each entry's data file in the order of the table of contents, the large objects
//! of a `BLOBS` entry just before the list of them (`blobs.toc`, or `blobs_ID.toc` from
//! PostgreSQL 17).

use std::io::Write;

use anyhow::Result;

use super::{Data, Stored};
use crate::repo::logical::DumpFile;

use crate::format::tar::{BLOCK, file_header as header};

pub(super) fn write(stored: &Stored, out: &mut impl Write) -> Result<()> {
    let mtime = stored.dump.start_time.timestamp();
    out.write_all(&header("toc.dat", stored.toc_bytes.len() as u64, mtime))?;
    out.write_all(&stored.toc_bytes)?;
    pad(out, stored.toc_bytes.len() as u64)?;
    let member = |file: &DumpFile, out: &mut dyn Write| -> Result<()> {
        let mut out = out;
        out.write_all(&header(&file.name, file.size, mtime))?;
        stored.copy(file, &mut out)?;
        Ok(pad(&mut out, file.size)?)
    };
    for (_, data) in stored.data()? {
        match data {
            Data::File(file) => member(file, out)?,
            Data::Blobs(blobs, list) => {
                for (_, blob) in blobs {
                    member(blob, out)?;
                }
                member(list, out)?;
            }
        }
    }
    out.write_all(&[0; 2 * BLOCK])?;
    Ok(())
}

/// Zeros up to the next block after `len` bytes.
fn pad(out: &mut impl Write, len: u64) -> std::io::Result<()> {
    out.write_all(&vec![0; crate::format::tar::padding(len)])
}
