//! The table of contents of a pg_dump archive (`toc.dat` of a directory archive), read
//! as pg_backup_archiver.c's `ReadHead` and `ReadToc` read it, for archive versions
//! 1.14 (pg_dump 12) to 1.16 (pg_dump 17 and 18).
//!
//! Integers are a sign byte and `int_size` little-endian bytes; strings an integer
//! length (-1 for none) and the bytes. Each entry ends with what its format adds: in a
//! directory archive, the name of its data file ("" for none).

use anyhow::{Result, bail};

type Version = (u8, u8, u8);
const OLDEST: Version = (1, 14, 0);
const NEWEST: Version = (1, 16, 0);

/// One entry: where its bytes are, up to (not including) the format's addition.
pub struct Entry {
    pub dump_id: i64,
    pub desc: String,
    /// Its data file in the directory archive, if it has one.
    pub file: Option<String>,
    /// The entry's bytes in `toc.dat`, from its id to its dependencies' end.
    pub body: std::ops::Range<usize>,
}

pub struct Toc {
    /// Length of the header (magic to the pg_dump version string).
    pub header_len: usize,
    pub int_size: usize,
    pub off_size: usize,
    pub entries: Vec<Entry>,
}

/// Byte 10 of the header: the archive's format.
pub const FORMAT_BYTE: usize = 10;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8> {
        let Some(&b) = self.bytes.get(self.pos) else {
            bail!("toc.dat ends in the middle of an entry");
        };
        self.pos += 1;
        Ok(b)
    }

    fn int(&mut self) -> Result<i64> {
        let negative = self.byte()? != 0;
        let mut value: i64 = 0;
        for i in 0..self.int_size {
            value |= i64::from(self.byte()?) << (8 * i);
        }
        Ok(if negative { -value } else { value })
    }

    fn str(&mut self) -> Result<Option<String>> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let end = self.pos.saturating_add(len as usize);
        let Some(text) = self.bytes.get(self.pos..end) else {
            bail!("toc.dat ends in the middle of a string");
        };
        self.pos = end;
        Ok(Some(String::from_utf8_lossy(text).into_owned()))
    }
}

/// Reads `toc.dat` of a directory archive.
pub fn read(bytes: &[u8]) -> Result<Toc> {
    if !bytes.starts_with(b"PGDMP") || bytes.len() < 11 {
        bail!("toc.dat is not a pg_dump table of contents");
    }
    let version = (bytes[5], bytes[6], bytes[7]);
    if version < OLDEST || version > NEWEST {
        bail!(
            "the archive is version {}.{}.{}; pgkeep converts versions 1.14 to 1.16 (pg_dump 12 to 18)",
            version.0,
            version.1,
            version.2
        );
    }
    let (int_size, off_size) = (bytes[8] as usize, bytes[9] as usize);
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        bail!("toc.dat has impossible integer sizes");
    }
    let mut r = Reader {
        bytes,
        pos: FORMAT_BYTE + 1,
        int_size,
    };
    if version >= (1, 15, 0) {
        r.byte()?; // compression algorithm
    } else {
        r.int()?; // compression level
    }
    for _ in 0..7 {
        r.int()?; // creation time: sec, min, hour, day, month, year, isdst
    }
    for _ in 0..3 {
        r.str()?; // database name, server version, pg_dump version
    }
    let header_len = r.pos;
    let count = r.int()?;
    let mut entries = Vec::new();
    for _ in 0..count.max(0) {
        let start = r.pos;
        let dump_id = r.int()?;
        r.int()?; // had a data dumper
        for _ in 0..2 {
            r.str()?; // table oid, oid
        }
        r.str()?; // tag
        let desc = r.str()?.unwrap_or_default();
        r.int()?; // section
        for _ in 0..6 {
            r.str()?; // defn, drop, copy statement, namespace, tablespace, table AM
        }
        if version >= (1, 16, 0) {
            r.int()?; // relkind
        }
        for _ in 0..2 {
            r.str()?; // owner, "false" (with oids)
        }
        while r.str()?.is_some() {} // dependencies, up to a null
        let body = start..r.pos;
        let file = r.str()?.filter(|f| !f.is_empty());
        entries.push(Entry {
            dump_id,
            desc,
            file,
            body,
        });
    }
    if r.pos != bytes.len() {
        bail!(
            "toc.dat has {} bytes after its last entry",
            bytes.len() - r.pos
        );
    }
    Ok(Toc {
        header_len,
        int_size,
        off_size,
        entries,
    })
}

/// An integer as the archive writes it.
pub fn int(value: i64, int_size: usize) -> Vec<u8> {
    let mut out = vec![u8::from(value < 0)];
    let magnitude = value.unsigned_abs();
    out.extend((0..int_size).map(|i| (magnitude >> (8 * i)) as u8));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pg_dump -Fd -Z0` (PostgreSQL 15) of a database with one table `t`:
    /// `pg_restore -l` lists 214 TABLE and 3338 TABLE DATA.
    const TOC15: &[u8] = include_bytes!("toc15.dat");

    #[test]
    fn reads_what_pg_restore_lists() {
        let toc = read(TOC15).unwrap();
        assert_eq!((toc.int_size, toc.off_size), (4, 8));
        let listed: Vec<(i64, &str, Option<&str>)> = toc
            .entries
            .iter()
            .filter(|e| e.dump_id == 214 || e.dump_id == 3338)
            .map(|e| (e.dump_id, e.desc.as_str(), e.file.as_deref()))
            .collect();
        assert_eq!(
            listed,
            [(214, "TABLE", None), (3338, "TABLE DATA", Some("3338.dat"))]
        );
        assert!(read(&TOC15[..TOC15.len() - 3]).is_err());
    }

    #[test]
    fn integers_round_trip() {
        let bytes = [int(3338, 4), int(-1, 4)].concat();
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
            int_size: 4,
        };
        assert_eq!((r.int().unwrap(), r.int().unwrap()), (3338, -1));
    }
}
