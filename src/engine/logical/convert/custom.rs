//! The custom format (pg_backup_custom.c): the directory archive's header and table of
//! contents, the format byte set to custom and each entry's data-file name replaced by
//! the position of its data block, then the blocks. A data block is `BLK_DATA`, the
//! entry's id, the data in length-prefixed pieces and a zero length; a large-object
//! block is `BLK_BLOBS`, the id, then per object its OID, its pieces and a zero, and a
//! zero OID at the end.
//!
//! The data goes in uncompressed, as the directory archive holds it, so every block's
//! size, and so every position, is known before the first byte is written: pg_restore
//! seeks straight to each block (and can restore in parallel).

use std::io::Write;

use anyhow::Result;

use super::toc::{FORMAT_BYTE, int};
use super::{Data, Stored};
use crate::repo::logical::DumpFile;

const FORMAT_CUSTOM: u8 = 1;
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
const OFFSET_SET: u8 = 2;
const OFFSET_NO_DATA: u8 = 3;

pub(super) fn write(stored: &Stored, out: &mut impl Write) -> Result<()> {
    let toc = &stored.toc;
    let int_len = 1 + toc.int_size as u64;
    let pieces = |file: &DumpFile| -> u64 {
        file.chunks
            .iter()
            .map(|(_, len)| int_len + u64::from(*len))
            .sum::<u64>()
            + int_len
    };
    let data = stored.data()?;
    let block_len = |d: &Data| -> u64 {
        1 + int_len
            + match d {
                Data::File(file) => pieces(file),
                Data::Blobs(blobs, _) => {
                    blobs.iter().map(|(_, f)| int_len + pieces(f)).sum::<u64>() + int_len
                }
            }
    };
    // Where each entry's block starts: after the header and the whole table of contents.
    let entries_len: u64 = toc
        .entries
        .iter()
        .map(|e| (e.body.len() + 1 + toc.off_size) as u64)
        .sum();
    let mut position = toc.header_len as u64 + int_len + entries_len;
    let mut offsets = vec![None; toc.entries.len()];
    for (i, d) in &data {
        offsets[*i] = Some(position);
        position += block_len(d);
    }

    let mut header = stored.toc_bytes[..toc.header_len].to_vec();
    header[FORMAT_BYTE] = FORMAT_CUSTOM;
    out.write_all(&header)?;
    out.write_all(&int(toc.entries.len() as i64, toc.int_size))?;
    for (entry, offset) in toc.entries.iter().zip(&offsets) {
        out.write_all(&stored.toc_bytes[entry.body.clone()])?;
        let (flag, at) = match offset {
            Some(at) => (OFFSET_SET, *at),
            None => (OFFSET_NO_DATA, 0),
        };
        out.write_all(&[flag])?;
        out.write_all(&at.to_le_bytes()[..toc.off_size])?;
    }
    for (i, d) in &data {
        let id = int(toc.entries[*i].dump_id, toc.int_size);
        match d {
            Data::File(file) => {
                out.write_all(&[BLK_DATA])?;
                out.write_all(&id)?;
                write_pieces(stored, file, out)?;
            }
            Data::Blobs(blobs, _) => {
                out.write_all(&[BLK_BLOBS])?;
                out.write_all(&id)?;
                for (oid, file) in blobs {
                    out.write_all(&int(i64::from(*oid), toc.int_size))?;
                    write_pieces(stored, file, out)?;
                }
                out.write_all(&int(0, toc.int_size))?;
            }
        }
    }
    Ok(())
}

/// A file's data as length-prefixed pieces (one per stored chunk) and a zero length.
fn write_pieces(stored: &Stored, file: &DumpFile, out: &mut impl Write) -> Result<()> {
    let int_size = stored.toc.int_size;
    for (id, len) in &file.chunks {
        out.write_all(&int(i64::from(*len), int_size))?;
        out.write_all(&stored.store.read_exact(id, *len)?)?;
    }
    out.write_all(&int(0, int_size))?;
    Ok(())
}
