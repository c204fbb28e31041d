//! Tar headers as `BASE_BACKUP` writes them (`src/port/tar.c`): ustar, 512-byte blocks,
//! numbers in octal or, when too large for the field, base-256 (first byte 0x80).
//! Directory and symlink names end with `/`. Only what a base backup holds is
//! understood: regular files, directories and symlinks.

pub const BLOCK: usize = 512;

#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Symlink { target: Vec<u8> },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// The member's path bytes, without a trailing `/`.
    pub name: Vec<u8>,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    pub kind: Kind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarError {
    #[error("a tar header's checksum does not match")]
    Checksum,
    #[error("a tar header has a bad {0} field")]
    Field(&'static str),
    #[error("tar member type '{0}' is not one a base backup holds")]
    Type(char),
}

/// A ustar header of a regular file (mode 0600), as pg_dump's tar format writes one.
pub fn file_header(name: &str, size: u64, mtime: i64) -> [u8; BLOCK] {
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

/// Bytes of padding after a member of `size` bytes.
pub fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// Whether `block` is all zeros: the archive's end marker.
pub fn is_end(block: &[u8; BLOCK]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Parses one header block (not an end marker).
pub fn parse(block: &[u8; BLOCK]) -> Result<Header, TarError> {
    let stored = number(&block[148..156]).ok_or(TarError::Field("checksum"))?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u64
            }
        })
        .sum();
    if stored != sum {
        return Err(TarError::Checksum);
    }
    let mut name = text(&block[0..100]).to_vec();
    let prefix = text(&block[345..500]);
    if &block[257..262] == b"ustar" && !prefix.is_empty() {
        name = [prefix, b"/", &name].concat();
    }
    while name.last() == Some(&b'/') {
        name.pop();
    }
    // `basebackup.c` names a few members `./pg_wal/...`.
    while let Some(rest) = name.strip_prefix(b"./") {
        name = rest.to_vec();
    }
    let kind = match block[156] {
        b'0' | 0 => Kind::File,
        b'5' => Kind::Directory,
        b'2' => Kind::Symlink {
            target: text(&block[157..257]).to_vec(),
        },
        other => return Err(TarError::Type(other as char)),
    };
    let field =
        |range: std::ops::Range<usize>, what| number(&block[range]).ok_or(TarError::Field(what));
    Ok(Header {
        name,
        mode: field(100..108, "mode")? as u32 & 0o7777,
        size: field(124..136, "size")?,
        mtime: field(136..148, "mtime")? as i64,
        kind,
    })
}

/// A NUL-terminated field's bytes.
fn text(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// An octal field (spaces and NULs around it), or base-256 when the first byte has its
/// high bit set.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field.len() > 9 && field[1..field.len() - 8].iter().any(|&b| b != 0) {
            return None; // more than 64 bits
        }
        let tail = &field[field.len().saturating_sub(8).max(1)..];
        return Some(tail.iter().fold(0u64, |n, &b| (n << 8) | b as u64));
    }
    let digits = text(field);
    let digits = std::str::from_utf8(digits).ok()?.trim_matches(|c| c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as `tarCreateHeader` writes it: a directory or symlink name ends in `/`.
    fn header(name: &str, kind: u8, size: u64, link: &str) -> [u8; BLOCK] {
        let name = match kind {
            b'5' | b'2' => format!("{name}/"),
            _ => name.to_string(),
        };
        let mut h = file_header(&name, size, 0o14723456701);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    #[test]
    fn headers_carry_their_checksum() {
        let h = file_header("3400.dat", 1234, 1_700_000_000);
        assert_eq!(&h[..8], b"3400.dat");
        assert_eq!(&h[124..136], b"00000002322\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        let mut blank = h;
        blank[148..156].fill(b' ');
        let sum: u32 = blank.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(&h[148..155], format!("{sum:06o}\0").as_bytes());
    }

    #[test]
    fn parses_members() {
        let file = parse(&header("base/5/16384", b'0', 8192, "")).unwrap();
        assert_eq!(file.name, b"base/5/16384");
        assert_eq!((file.size, file.mode, file.kind), (8192, 0o600, Kind::File));
        assert_eq!(file.mtime, 0o14723456701);
        let dir = parse(&header("pg_wal", b'5', 0, "")).unwrap();
        let status = parse(&header("./pg_wal/archive_status", b'5', 0, "")).unwrap();
        assert_eq!(status.name, b"pg_wal/archive_status");
        assert_eq!((dir.name, dir.kind), (b"pg_wal".to_vec(), Kind::Directory));
        let link = parse(&header("pg_tblspc/16400", b'2', 0, "/srv/ts")).unwrap();
        assert_eq!(
            link.kind,
            Kind::Symlink {
                target: b"/srv/ts".to_vec()
            }
        );
        let big = parse(&header("big", b'0', 10 << 30, "")).unwrap();
        assert_eq!(big.size, 10 << 30);
    }

    #[test]
    fn rejects_damage() {
        let mut h = header("base/1/1", b'0', 1, "");
        h[0] = b'x';
        assert_eq!(parse(&h), Err(TarError::Checksum));
        assert_eq!(parse(&header("dev", b'3', 0, "")), Err(TarError::Type('3')));
        assert!(is_end(&[0; BLOCK]));
        assert_eq!((padding(0), padding(1), padding(512)), (0, 511, 0));
    }
}
