//! The chunk codec: how a chunk's plaintext becomes the bytes stored in a pack, and back.
//! Writers and readers share this one place, so they always agree; encryption belongs
//! here too (after compression on the way in, before decompression on the way out).

use anyhow::{Result, bail};

use super::object::{self, Compression};
use super::pack::{Delta, DeltaMethod};

/// A chunk ready to be stored.
pub struct Encoded {
    pub compression: Compression,
    pub payload: Vec<u8>,
    /// Whether `payload` is the delta of the base given to [`encode`].
    pub as_delta: bool,
}

/// `data` compressed at `level`, whole or as an XOR delta of `base` (the plaintext of the
/// chunk it replaces). A delta of at most a sixteenth of the chunk is taken at once
/// (little changed); otherwise whichever is smaller, since moved data XORs badly. A delta
/// that cannot be made leaves the chunk whole.
pub fn encode(data: &[u8], base: Option<&[u8]>, level: i32) -> Result<Encoded> {
    let encoded = |(compression, payload), as_delta| Encoded {
        compression,
        payload,
        as_delta,
    };
    let whole = || object::compress(data, level);
    let Some(delta) = base.and_then(|base| encode_delta(data, base, level).ok()) else {
        return Ok(encoded(whole()?, false));
    };
    if delta.1.len() <= data.len() / 16 {
        return Ok(encoded(delta, true));
    }
    let whole = whole()?;
    Ok(match delta.1.len() < whole.1.len() {
        true => encoded(delta, true),
        false => encoded(whole, false),
    })
}

/// How a chunk's stored bytes decode: its compression, plaintext length and delta.
#[derive(Clone, Copy, Debug)]
pub struct Encoding {
    pub compression: Compression,
    pub raw_len: u32,
    pub delta: Option<Delta>,
}

/// A chunk's plaintext from its payload (and its base's plaintext, for a delta), of
/// exactly the length the index gives; not checked against its id.
pub fn decode(e: Encoding, payload: &[u8], base: Option<&[u8]>) -> Result<Vec<u8>> {
    let raw_len = e.raw_len as usize;
    let plain = match (e.delta, base) {
        (None, _) => object::decompress(e.compression, payload, raw_len)?,
        (Some(d), Some(base)) if d.method == DeltaMethod::Dictionary => {
            object::check_zstd_frame(payload, raw_len)?;
            zstd::bulk::Decompressor::with_dictionary(base)?.decompress(payload, raw_len)?
        }
        (Some(_), Some(base)) => {
            let mut plain = object::decompress(e.compression, payload, raw_len)?;
            xor_into(&mut plain, base);
            plain
        }
        (Some(_), None) => bail!("a delta needs its base"),
    };
    if plain.len() != raw_len {
        bail!("decodes to {} bytes instead of {raw_len}", plain.len());
    }
    Ok(plain)
}

/// `target ^= base` over their common length.
fn xor_into(target: &mut [u8], base: &[u8]) {
    for (t, b) in target.iter_mut().zip(base) {
        *t ^= b;
    }
}

/// `data` as an XOR delta of `base`: the compression and payload of the difference.
pub fn encode_delta(data: &[u8], base: &[u8], level: i32) -> Result<(Compression, Vec<u8>)> {
    let mut diff = data.to_vec();
    xor_into(&mut diff, base);
    object::compress(&diff, level.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::pack::ChunkId;

    fn decoded(e: &Encoded, len: usize, base: Option<&[u8]>) -> Vec<u8> {
        let delta = e.as_delta.then(|| Delta {
            base: ChunkId::of(base.unwrap()),
            depth: 1,
            method: DeltaMethod::Xor,
        });
        let encoding = Encoding {
            compression: e.compression,
            raw_len: len as u32,
            delta,
        };
        decode(encoding, &e.payload, base.filter(|_| e.as_delta)).unwrap()
    }

    #[test]
    fn small_changes_become_deltas_and_moved_data_stays_whole() {
        let base: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut changed = base.clone();
        changed[1000] ^= 0xff;
        let e = encode(&changed, Some(&base), 1).unwrap();
        assert!(e.as_delta && e.payload.len() < 1024);
        assert_eq!(decoded(&e, changed.len(), Some(&base)), changed);

        let moved: Vec<u8> = base[1..].iter().chain(&base[..1]).copied().collect();
        let noise: Vec<u8> = (0..moved.len() as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let e = encode(&moved, Some(&noise), 1).unwrap();
        assert!(
            !e.as_delta,
            "a delta of unrelated data is larger than the chunk whole"
        );
        assert_eq!(decoded(&e, moved.len(), Some(&noise)), moved);

        let e = encode(&base, None, 1).unwrap();
        assert!(!e.as_delta);
        assert_eq!(decoded(&e, base.len(), None), base);
    }
}
