//! The incremental files of PostgreSQL 17+'s `BASE_BACKUP (INCREMENTAL)`: a relation
//! segment sent as `dir/INCREMENTAL.name` holds only the blocks changed since the prior
//! backup, after a header (`basebackup_incremental.c`, read back by pg_combinebackup's
//! `reconstruct.c`):
//!
//! ```text
//! magic u32 (0xd3ae1f0d) | block count n u32 | truncation block length u32
//! | n block numbers u32, ascending, relative to the segment
//! | zero padding to a multiple of BLCKSZ (only when n > 0) | n blocks of BLCKSZ
//! ```
//!
//! All integers are in the server's byte order; pgkeep runs where PostgreSQL does
//! (little-endian). The file reconstructed from the prior backup is
//! `max(truncation block length, highest block + 1)` blocks long: a block the
//! incremental file holds comes from it, any other block below the truncation length
//! from the prior backup (zeros where the prior file was shorter), and the rest is zeros.

use std::fmt;

use crate::format::page::{BLOCKS_PER_SEGMENT, PAGE_SIZE};

const MAGIC: u32 = 0xd3ae_1f0d;

/// The name prefix of an incremental file.
pub const PREFIX: &str = "INCREMENTAL.";

/// What an incremental file's header says.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// Changed blocks, ascending, relative to the segment.
    pub blocks: Vec<u32>,
    pub truncation_block_length: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub struct HeaderError(String);

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad incremental file header: {}", self.0)
    }
}

/// The first 12 bytes of a header: the number of blocks and the truncation length.
/// A truncation length past the segment's end is taken as the segment's end: servers
/// before the fix that clamps it (17.x) send one for a truncated relation of several
/// segments, and no block lies past the end.
pub fn parse_fixed(bytes: &[u8; 12]) -> Result<(u32, u32), HeaderError> {
    let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    if word(0) != MAGIC {
        return Err(HeaderError(format!("magic 0x{:x}", word(0))));
    }
    let (count, truncation) = (word(4), word(8));
    if count > BLOCKS_PER_SEGMENT {
        return Err(HeaderError(format!(
            "{count} blocks, more than a segment holds"
        )));
    }
    Ok((count, truncation.min(BLOCKS_PER_SEGMENT)))
}

/// Bytes of header before the first block of a file with `count` blocks: padded to a
/// block when there are blocks.
pub fn header_len(count: u32) -> u64 {
    let bare = 12 + 4 * count as u64;
    match count {
        0 => bare,
        _ => bare.next_multiple_of(PAGE_SIZE as u64),
    }
}

/// Bytes of an incremental file with `count` blocks.
pub fn file_len(count: u32) -> u64 {
    header_len(count) + count as u64 * PAGE_SIZE as u64
}

/// The header from its fixed part and the block numbers that follow it.
pub fn parse_blocks(
    (count, truncation_block_length): (u32, u32),
    numbers: &[u8],
) -> Result<Header, HeaderError> {
    if numbers.len() != count as usize * 4 {
        return Err(HeaderError(format!(
            "{} bytes of block numbers for {count} blocks",
            numbers.len()
        )));
    }
    let blocks: Vec<u32> = numbers
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    if blocks.windows(2).any(|w| w[0] >= w[1]) || blocks.iter().any(|&b| b >= BLOCKS_PER_SEGMENT) {
        return Err(HeaderError(
            "block numbers not ascending within a segment".into(),
        ));
    }
    Ok(Header {
        blocks,
        truncation_block_length,
    })
}

impl Header {
    /// Bytes of the reconstructed file.
    pub fn reconstructed_len(&self) -> u64 {
        let past_last = self.blocks.last().map_or(0, |b| b + 1);
        self.truncation_block_length.max(past_last) as u64 * PAGE_SIZE as u64
    }
}

/// The bytes `first_block * BLCKSZ .. + len` of a reconstructed file: `prior` is the
/// prior backup's bytes at the same place (shorter where its file was), `changed` the
/// incremental file's blocks in that range, by number relative to the segment.
pub fn reconstruct(
    first_block: u32,
    len: usize,
    truncation_block_length: u32,
    prior: &[u8],
    changed: &[(u32, &[u8])],
) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let from_prior = (truncation_block_length.saturating_sub(first_block) as usize * PAGE_SIZE)
        .min(len)
        .min(prior.len());
    out[..from_prior].copy_from_slice(&prior[..from_prior]);
    for &(block, data) in changed {
        let at = (block - first_block) as usize * PAGE_SIZE;
        out[at..at + PAGE_SIZE].copy_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(count: u32, truncation: u32, blocks: &[u32]) -> Vec<u8> {
        let mut bytes = [MAGIC, count, truncation]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect::<Vec<u8>>();
        bytes.extend(blocks.iter().flat_map(|b| b.to_le_bytes()));
        bytes
    }

    fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        let fixed = parse_fixed(bytes[..12].try_into().unwrap())?;
        parse_blocks(fixed, &bytes[12..])
    }

    #[test]
    fn reads_the_header_postgresql_writes() {
        let h = parse(&header(2, 10, &[3, 12])).unwrap();
        assert_eq!(h.blocks, [3, 12]);
        assert_eq!(header_len(2), PAGE_SIZE as u64);
        assert_eq!(file_len(2), 3 * PAGE_SIZE as u64);
        assert_eq!(h.reconstructed_len(), 13 * PAGE_SIZE as u64);
        // No blocks: no padding, and the length is the truncation length.
        let h = parse(&header(0, 7, &[])).unwrap();
        assert_eq!((header_len(0), file_len(0)), (12, 12));
        assert_eq!(h.reconstructed_len(), 7 * PAGE_SIZE as u64);
        // A truncation length past the segment (older servers) ends at the segment.
        let h = parse(&header(0, BLOCKS_PER_SEGMENT + 5, &[])).unwrap();
        assert_eq!(h.truncation_block_length, BLOCKS_PER_SEGMENT);
    }

    #[test]
    fn refuses_a_damaged_header() {
        let mut bad_magic = header(0, 1, &[]);
        bad_magic[0] ^= 1;
        assert!(parse(&bad_magic).is_err());
        assert!(parse(&header(BLOCKS_PER_SEGMENT + 1, 1, &[])).is_err());
        assert!(parse(&header(2, 10, &[5, 5])).is_err());
        assert!(parse(&header(2, 10, &[5])).is_err());
        assert!(parse(&header(1, 10, &[BLOCKS_PER_SEGMENT])).is_err());
    }

    #[test]
    fn reconstructs_from_prior_and_changed_blocks() {
        let page = |b: u8| vec![b; PAGE_SIZE];
        // Prior: blocks 4..7 of a file that had 6 blocks (4 and 5 exist).
        let prior = [page(1), page(2)].concat();
        let changed = page(9);
        // Truncation length 7: block 6 is below it but the prior file lacked it (zeros).
        let out = reconstruct(4, 3 * PAGE_SIZE, 7, &prior, &[(5, &changed)]);
        assert_eq!(out, [page(1), page(9), page(0)].concat());
        // Truncated to 5: block 5 and on are not taken from the prior backup.
        let out = reconstruct(4, 2 * PAGE_SIZE, 5, &prior, &[]);
        assert_eq!(out, [page(1), page(0)].concat());
    }
}
