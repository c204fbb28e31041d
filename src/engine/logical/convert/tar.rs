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

const BLOCK: usize = 512;

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

/// A POSIX ustar header of a regular file.
fn header(name: &str, size: u64, mtime: i64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let field = |h: &mut [u8; BLOCK], at: usize, len: usize, value: &[u8]| {
        h[at..at + value.len().min(len)].copy_from_slice(&value[..value.len().min(len)]);
    };
    let octal = |h: &mut [u8; BLOCK], at: usize, len: usize, value: u64| {
        field(
            h,
            at,
            len,
            format!("{value:0width$o}", width = len - 1).as_bytes(),
        );
    };
    field(&mut h, 0, 100, name.as_bytes());
    octal(&mut h, 100, 8, 0o600);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    if size < 1 << 33 {
        octal(&mut h, 124, 12, size);
    } else {
        // GNU base-256 for members of 8 GiB and more (pg_restore reads it).
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h, 136, 12, mtime.max(0) as u64);
    h[156] = b'0';
    field(&mut h, 257, 6, b"ustar\0");
    field(&mut h, 263, 2, b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    field(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Zeros up to the next block after `len` bytes.
fn pad(out: &mut impl Write, len: u64) -> std::io::Result<()> {
    let rest = (len % BLOCK as u64) as usize;
    if rest == 0 {
        return Ok(());
    }
    out.write_all(&vec![0; BLOCK - rest])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_their_checksum() {
        let h = header("3400.dat", 1234, 1_700_000_000);
        assert_eq!(&h[..8], b"3400.dat");
        assert_eq!(&h[124..136], b"00000002322\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        let mut blank = h;
        blank[148..156].fill(b' ');
        let sum: u32 = blank.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(&h[148..155], format!("{sum:06o}\0").as_bytes());
    }
}
