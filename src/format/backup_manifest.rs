//! The `backup_manifest` a server sends with `BASE_BACKUP (MANIFEST 'yes')`, read as
//! `pg_verifybackup` reads it: the whole manifest is covered by a SHA-256 of everything
//! up to its last line, and each file by a checksum (CRC32C unless asked otherwise).

use serde::Deserialize;

use crate::format::lsn::Lsn;

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "System-Identifier")]
    system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: String,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

pub struct ServerManifest {
    /// Given from PostgreSQL 17 on (manifest version 2).
    pub system_identifier: Option<u64>,
    pub files: Vec<ManifestFile>,
}

pub struct ManifestFile {
    /// The path's bytes (`Encoded-Path` decoded where the name is not UTF-8).
    pub path: Vec<u8>,
    pub size: u64,
    /// The CRC32C of the contents, when the manifest has that checksum.
    pub crc32c: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("it is not a backup manifest pgkeep can read: {0}")]
    Syntax(String),
    #[error("its Manifest-Checksum does not match its contents")]
    Checksum,
    #[error("version {0} is not one pgkeep knows (1 or 2)")]
    Version(u32),
}

/// Parses a manifest and checks its own checksum.
pub fn parse(bytes: &[u8]) -> Result<ServerManifest, ManifestError> {
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax(e.to_string()))?;
    if !(1..=2).contains(&raw.version) {
        return Err(ManifestError::Version(raw.version));
    }
    let covered = checksummed_part(bytes).ok_or(ManifestError::Checksum)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, covered);
    if !hex::encode(digest.as_ref()).eq_ignore_ascii_case(&raw.checksum) {
        return Err(ManifestError::Checksum);
    }
    let files = raw
        .files
        .into_iter()
        .map(|f| {
            let path = match (f.path, f.encoded_path) {
                (Some(p), _) => p.into_bytes(),
                (None, Some(hexed)) => hex::decode(hexed)
                    .map_err(|_| ManifestError::Syntax("a bad Encoded-Path".into()))?,
                (None, None) => return Err(ManifestError::Syntax("a file without a path".into())),
            };
            let crc32c = match (f.algorithm.as_deref(), f.checksum) {
                (Some("CRC32C"), Some(sum)) => Some(crc32c_of(&sum)?),
                _ => None,
            };
            Ok(ManifestFile {
                path,
                size: f.size,
                crc32c,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ServerManifest {
        system_identifier: raw.system_identifier,
        files,
    })
}

/// A file as a written manifest lists it.
pub struct ListedFile {
    pub path: Vec<u8>,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
}

/// A manifest in PostgreSQL's format (version 2): a backup's files, without checksums
/// (sizes only, as `pg_combinebackup --manifest-checksums=NONE` writes), and the WAL
/// range it needs (`timeline`, `start` to `end`), closed by the manifest's own checksum.
pub fn write(
    system_identifier: u64,
    files: &[ListedFile],
    (timeline, start, end): (u32, Lsn, Lsn),
) -> Vec<u8> {
    let mut out = format!(
        "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {system_identifier},\n\"Files\": [\n"
    );
    for (i, f) in files.iter().enumerate() {
        let path = match std::str::from_utf8(&f.path) {
            Ok(text) => format!("\"Path\": {}", serde_json::Value::from(text)),
            Err(_) => format!("\"Encoded-Path\": \"{}\"", hex::encode(&f.path)),
        };
        let modified = chrono::DateTime::from_timestamp(f.mtime, 0)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S GMT");
        let comma = if i + 1 < files.len() { "," } else { "" };
        out += &format!(
            "{{ {path}, \"Size\": {}, \"Last-Modified\": \"{modified}\" }}{comma}\n",
            f.size
        );
    }
    out += &format!(
        "],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {timeline}, \"Start-LSN\": \"{start}\", \"End-LSN\": \"{end}\" }}\n],\n"
    );
    let sum = hex::encode(ring::digest::digest(&ring::digest::SHA256, out.as_bytes()));
    out += &format!("\"Manifest-Checksum\": \"{sum}\"}}\n");
    out.into_bytes()
}

/// PostgreSQL prints a CRC32C as the hex of its bytes in memory order (little-endian).
fn crc32c_of(hexed: &str) -> Result<u32, ManifestError> {
    let bytes: [u8; 4] = hex::decode(hexed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ManifestError::Syntax(format!("a bad CRC32C '{hexed}'")))?;
    Ok(u32::from_le_bytes(bytes))
}

/// Everything up to and including the next-to-last newline: what the checksum covers.
fn checksummed_part(bytes: &[u8]) -> Option<&[u8]> {
    let mut newlines = bytes.iter().enumerate().rev().filter(|(_, b)| **b == b'\n');
    newlines.next()?;
    let (at, _) = newlines.next()?;
    Some(&bytes[..=at])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: &str) -> Vec<u8> {
        let body = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7,\n\"Files\": [\n{files}\n],\n"
        );
        let sum = hex::encode(ring::digest::digest(&ring::digest::SHA256, body.as_bytes()));
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n").into_bytes()
    }

    #[test]
    fn writes_what_it_reads() {
        let files = [
            ListedFile {
                path: b"base/5/16384".to_vec(),
                size: 8192,
                mtime: 1_700_000_000,
            },
            ListedFile {
                path: b"odd\"name".to_vec(),
                size: 0,
                mtime: 0,
            },
            ListedFile {
                path: vec![0xff, b'x'],
                size: 1,
                mtime: 0,
            },
        ];
        let text = write(7, &files, (2, Lsn(0x1000028), Lsn(0x2000100)));
        let m = parse(&text).unwrap();
        assert_eq!(m.system_identifier, Some(7));
        let paths: Vec<&[u8]> = m.files.iter().map(|f| &f.path[..]).collect();
        assert_eq!(paths, [&b"base/5/16384"[..], b"odd\"name", &[0xff, b'x']]);
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("\"Last-Modified\": \"2023-11-14 22:13:20 GMT\""),
            "{text}"
        );
        assert!(text.contains(
            "{ \"Timeline\": 2, \"Start-LSN\": \"0/1000028\", \"End-LSN\": \"0/2000100\" }"
        ));
    }

    #[test]
    fn reads_files_and_checks_itself() {
        let crc = crc32c::crc32c(b"hello");
        let text = manifest(&format!(
            "{{ \"Path\": \"backup_label\", \"Size\": 5, \"Last-Modified\": \"2026-12-03 01:00:00 GMT\", \
             \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }},\n\
             {{ \"Encoded-Path\": \"ff00\", \"Size\": 0, \"Last-Modified\": \"2026-12-03 01:00:00 GMT\" }}",
            hex::encode(crc.to_le_bytes())
        ));
        let m = parse(&text).unwrap();
        assert_eq!(m.system_identifier, Some(7));
        assert_eq!(m.files[0].path, b"backup_label");
        assert_eq!((m.files[0].size, m.files[0].crc32c), (5, Some(crc)));
        assert_eq!(
            (m.files[1].path.clone(), m.files[1].crc32c),
            (vec![0xff, 0], None)
        );

        let mut damaged = text.clone();
        let at = damaged.iter().position(|&b| b == b'5').unwrap();
        damaged[at] = b'6';
        assert_eq!(parse(&damaged).err(), Some(ManifestError::Checksum));
        assert!(matches!(parse(b"{"), Err(ManifestError::Syntax(_))));
    }
}
