//! A directory-format dump written as a tar-format archive, for `dump-export -F tar`.
//!
//! pg_dump's tar format is its directory format in a tar file (pg_backup_tar.c says
//! so: the files of an untarred archive are a directory archive, and pg_dump writes the
//! same `toc.dat` for both). What pg_restore checks is the order of the members, which
//! it reads front to back: `toc.dat` first,
//! then each entry's data file in the order of the table of contents, the large objects
//! of a `BLOBS` entry just before their own list (`blobs.toc`, or `blobs_ID.toc` from
//! PostgreSQL 17). The order comes from `pg_restore --list`. Data in a tar archive is
//! never compressed, so a dump whose files are compressed is refused.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use super::feed;
use crate::engine::scratch::{self, Scratch};
use crate::pg::tools::Tool;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::logical::{DumpFile, DumpManifest};

const BLOCK: usize = 512;

/// Writes directory dump `dump` as a tar archive at `to`; `pg_restore` lists its table
/// of contents.
pub fn write_tar(
    store: &ChunkStore,
    dump: &DumpManifest,
    pg_restore: &Tool,
    to: &Path,
) -> Result<()> {
    let files: BTreeMap<&str, &DumpFile> =
        dump.files.iter().map(|f| (f.name.as_str(), f)).collect();
    let read = |name: &str| -> Result<Vec<u8>> {
        let file = files
            .get(name)
            .with_context(|| format!("dump {} has no {name}", dump.label))?;
        let mut bytes = Vec::with_capacity(file.size as usize);
        for (id, len) in &file.chunks {
            bytes.extend(store.read_exact(id, *len)?);
        }
        Ok(bytes)
    };
    let toc = read("toc.dat")?;
    if !toc.starts_with(b"PGDMP") {
        bail!(
            "the toc.dat of dump {} is not a pg_dump archive's; export it in its own format",
            dump.label
        );
    }
    if let Some(compressed) = files
        .keys()
        .find(|n| n.ends_with(".gz") || n.ends_with(".lz4") || n.ends_with(".zst"))
    {
        bail!(
            "dump {} holds compressed data ({compressed}), which the tar format cannot; export it as directory or plain",
            dump.label
        );
    }
    let listing = list(store, dump, pg_restore)?;
    let order = members(
        &listing,
        |name| files.contains_key(name),
        |toc| Ok(String::from_utf8_lossy(&read(toc)?).into_owned()),
    )?;
    if let Some(left) = files
        .keys()
        .find(|n| **n != "toc.dat" && !order.iter().any(|m| m == *n))
    {
        bail!(
            "dump {} holds {left}, which its table of contents does not name; export it as directory",
            dump.label
        );
    }
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?,
    );
    let written = (|| -> Result<()> {
        out.write_all(&header(
            "toc.dat",
            toc.len() as u64,
            dump.start_time.timestamp(),
        ))?;
        out.write_all(&toc)?;
        pad(&mut out, toc.len() as u64)?;
        for name in &order {
            let file = files[name.as_str()];
            out.write_all(&header(name, file.size, dump.start_time.timestamp()))?;
            for (id, len) in &file.chunks {
                out.write_all(&store.read_exact(id, *len)?)?;
            }
            pad(&mut out, file.size)?;
        }
        out.write_all(&[0; 2 * BLOCK])?;
        Ok(())
    })();
    written.with_context(|| format!("cannot write {}", to.display()))?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", to.display()))
}

/// `pg_restore --list` of the dump (which reads only `toc.dat`).
fn list(store: &ChunkStore, dump: &DumpManifest, pg_restore: &Tool) -> Result<String> {
    let scratch = Scratch::new("export")?;
    let toc = dump
        .files
        .iter()
        .find(|f| f.name == "toc.dat")
        .context("the dump has no toc.dat")?;
    feed::write_file(store, toc, &scratch.path().join("toc.dat"))?;
    let mut cmd = Command::new(&pg_restore.path);
    cmd.args(["--format=directory", "--list"])
        .arg(scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = scratch::spawn(&mut cmd)?.output()?;
    if !output.status.success() {
        bail!(
            "pg_restore could not list dump {}: {}",
            dump.label,
            scratch::messages(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The members after `toc.dat`, in the order pg_restore reads them: for each entry of
/// `listing` (lines `ID; ...`) its data file `ID.dat` if the dump `has` one, or for a
/// `BLOBS` entry the files its list (`read_list`) names, then the list itself.
fn members(
    listing: &str,
    has: impl Fn(&str) -> bool,
    read_list: impl Fn(&str) -> Result<String>,
) -> Result<Vec<String>> {
    let mut order = Vec::new();
    for line in listing.lines().filter(|l| !l.starts_with(';')) {
        let Some((id, rest)) = line.split_once(';') else {
            continue;
        };
        let data = format!("{}.dat", id.trim());
        let blobs = [format!("blobs_{}.toc", id.trim()), "blobs.toc".to_string()];
        if has(&data) {
            order.push(data);
        } else if let Some(list) = blobs
            .iter()
            .find(|b| has(b))
            .filter(|_| rest.contains(" BLOBS "))
        {
            for entry in read_list(list)?.lines().filter(|l| !l.trim().is_empty()) {
                let Some((_oid, file)) = entry.split_once(' ') else {
                    bail!("{list} has a line that is not 'OID FILE': {entry}");
                };
                if !has(file) {
                    bail!("{list} names {file}, which the dump does not hold");
                }
                order.push(file.to_string());
            }
            order.push(list.clone());
        }
    }
    Ok(order)
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
    fn members_follow_the_table_of_contents() {
        let listing = ";\n; Archive created at ...\n;\n\
            215; 1259 16390 TABLE app orders postgres\n\
            3400; 0 16390 TABLE DATA app orders postgres\n\
            3399; 0 16385 TABLE DATA app customers postgres\n\
            3401; 0 0 BLOBS - BLOBS \n\
            3402; 0 0 SEQUENCE SET app invoice_no postgres\n";
        let has = |n: &str| ["3400.dat", "3399.dat", "blobs.toc", "blob_16400.dat"].contains(&n);
        let order = members(listing, has, |_| Ok("16400 blob_16400.dat\n".into())).unwrap();
        assert_eq!(
            order,
            ["3400.dat", "3399.dat", "blob_16400.dat", "blobs.toc"]
        );
        assert!(members(listing, has, |_| Ok("16401 blob_16401.dat\n".into())).is_err());
    }

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
