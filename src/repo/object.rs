//! The envelope around every stored object except chunks inside packs: a header saying
//! how the payload is encoded and a trailer with the length and BLAKE3 hash of the
//! plaintext, so every read is checked end to end.
//!
//! ```text
//! "PGKO" | version u8 = 1 | compression u8 | encryption u8 | reserved u8
//! payload (compressed plaintext)
//! plaintext length u64 LE | BLAKE3(plaintext) [32]
//! ```

use std::cell::RefCell;

use anyhow::{Result, bail};

const MAGIC: &[u8; 4] = b"PGKO";
const HEADER_LEN: usize = 8;
const TRAILER_LEN: usize = 40;

/// How a payload is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

/// Wraps `plaintext`, zstd-compressed at `level` (0 stores it uncompressed).
pub fn encode(plaintext: &[u8], level: i32) -> Result<Vec<u8>> {
    encode_parallel(plaintext, level, 0)
}

/// Like [`encode`], but compresses with `workers` extra threads and hashes alongside,
/// for one large object that must be stored fast (a WAL segment in `archive_command`).
pub fn encode_parallel(plaintext: &[u8], level: i32, workers: u32) -> Result<Vec<u8>> {
    let (compressed, hash) = std::thread::scope(|scope| {
        let hash = scope.spawn(|| blake3::hash(plaintext));
        (
            compress_with(plaintext, level, workers),
            hash.join().expect("hashing cannot panic"),
        )
    });
    let (compression, payload) = compressed?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, compression as u8, 0, 0]);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&(plaintext.len() as u64).to_le_bytes());
    out.extend_from_slice(hash.as_bytes());
    Ok(out)
}

/// Compresses with zstd unless that saves nothing (already-compressed data).
pub fn compress(plaintext: &[u8], level: i32) -> Result<(Compression, Vec<u8>)> {
    compress_with(plaintext, level, 0)
}

fn compress_with(plaintext: &[u8], level: i32, workers: u32) -> Result<(Compression, Vec<u8>)> {
    thread_local! {
        /// Reused for single-threaded compression: a new context per chunk costs more
        /// than compressing a small delta.
        static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    if level > 0 {
        let packed = if workers > 0 {
            let mut compressor = zstd::bulk::Compressor::new(level)?;
            compressor.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(workers))?;
            compressor.compress(plaintext)?
        } else {
            COMPRESSOR.with(|cell| -> Result<Vec<u8>> {
                let mut slot = cell.borrow_mut();
                if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                    *slot = Some((level, zstd::bulk::Compressor::new(level)?));
                }
                let (_, compressor) = slot.as_mut().expect("set above");
                Ok(compressor.compress(plaintext)?)
            })?
        };
        if packed.len() < plaintext.len() {
            return Ok((Compression::Zstd, packed));
        }
    }
    Ok((Compression::None, plaintext.to_vec()))
}

/// The most plaintext one object or chunk may claim: a WAL segment is at most 1 GiB, and
/// the manifest of a very large cluster a few hundred MB.
pub const MAX_PLAIN_LEN: usize = 4 << 30;

/// Checks that `payload` is exactly one zstd frame that says it holds `plain_len` bytes,
/// before anything is allocated for it: damaged bytes must never size an allocation.
pub fn check_zstd_frame(payload: &[u8], plain_len: usize) -> Result<()> {
    if plain_len > MAX_PLAIN_LEN {
        bail!("it claims {plain_len} bytes of content, more than any object holds");
    }
    let declared = zstd::zstd_safe::get_frame_content_size(payload);
    if !matches!(declared, Ok(Some(n)) if n == plain_len as u64) {
        bail!("its compressed data does not say it holds the {plain_len} bytes recorded for it");
    }
    match zstd::zstd_safe::find_frame_compressed_size(payload) {
        Ok(n) if n == payload.len() => Ok(()),
        _ => bail!("its compressed data does not end where it should"),
    }
}

/// Decompresses `payload` into exactly `plain_len` bytes; damage is an error, never a
/// large allocation or a panic.
pub fn decompress(compression: Compression, payload: &[u8], plain_len: usize) -> Result<Vec<u8>> {
    thread_local! {
        /// Reused: a new context per chunk costs more than decompressing a small delta.
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    Ok(match compression {
        Compression::None if payload.len() == plain_len => payload.to_vec(),
        Compression::None => bail!(
            "it holds {} bytes instead of the {plain_len} recorded for it",
            payload.len()
        ),
        Compression::Zstd => DECOMPRESSOR.with(|cell| -> Result<Vec<u8>> {
            check_zstd_frame(payload, plain_len)?;
            let mut slot = cell.borrow_mut();
            let decompressor = match &mut *slot {
                Some(d) => d,
                empty => empty.insert(zstd::bulk::Decompressor::new()?),
            };
            Ok(decompressor.decompress(payload, plain_len)?)
        })?,
    })
}

fn check_frame(object: &[u8]) -> Result<()> {
    if object.len() < HEADER_LEN + TRAILER_LEN || &object[..4] != MAGIC {
        bail!("not a pgkeep object (bad header or truncated)");
    }
    if object[4] != 1 {
        bail!(
            "object format version {} is newer than this pgkeep understands; upgrade pgkeep",
            object[4]
        );
    }
    if object[6] != 0 {
        bail!("object is encrypted, which this pgkeep cannot read; upgrade pgkeep");
    }
    if object[7] != 0 {
        bail!("object header has unknown flags (corrupt, or written by a newer pgkeep)");
    }
    Ok(())
}

/// Unwraps an object and checks its plaintext against the trailer.
pub fn decode(object: &[u8]) -> Result<Vec<u8>> {
    check_frame(object)?;
    let compression = match object[5] {
        0 => Compression::None,
        1 => Compression::Zstd,
        other => bail!("object uses unknown compression {other}"),
    };
    let trailer = &object[object.len() - TRAILER_LEN..];
    let plain_len =
        usize::try_from(u64::from_le_bytes(trailer[..8].try_into().unwrap())).unwrap_or(usize::MAX);
    let payload = &object[HEADER_LEN..object.len() - TRAILER_LEN];
    let plaintext = match decompress(compression, payload, plain_len) {
        Ok(p) => p,
        Err(e) => bail!("it cannot be decompressed ({e})"),
    };
    if plaintext.len() != plain_len || blake3::hash(&plaintext).as_bytes() != &trailer[8..] {
        bail!("its content does not match its checksum");
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_detects_any_flipped_byte() {
        let plain: Vec<u8> = (0..5000u32).flat_map(|i| (i % 97).to_le_bytes()).collect();
        let obj = encode(&plain, 3).unwrap();
        assert_eq!(decode(&obj).unwrap(), plain);
        for i in (0..obj.len()).step_by(7) {
            let mut bad = obj.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn damage_is_an_error_not_an_allocation() {
        let plain: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for level in [0, 1] {
            let obj = encode(&plain, level).unwrap();
            let mut appended = obj.clone();
            appended.extend_from_slice(&[0x5A; 16]);
            assert!(decode(&appended).is_err());
            for cut in [1, 7, 40, 41, obj.len() / 2, obj.len() - 48] {
                assert!(decode(&obj[..obj.len() - cut]).is_err(), "cut {cut}");
            }
        }
        let big = encode_parallel(&plain, 1, 2).unwrap();
        assert_eq!(
            decode(&big).unwrap(),
            plain,
            "the multi-threaded frame records its size"
        );
    }

    #[test]
    fn incompressible_is_stored_plain() {
        let plain: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let obj = encode(&plain, 3).unwrap();
        assert_eq!(decode(&obj).unwrap(), plain);
    }
}
