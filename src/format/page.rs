//! Data page checksums (`src/include/storage/checksum_impl.h`).
//!
//! 32 FNV-1a-style lanes over the 8 KiB page with `pd_checksum` zeroed, XOR of the lanes,
//! XOR the block number, then folded into 1..=65535. `pg_checksums` is the oracle in tests.

use super::lsn::Lsn;

pub const PAGE_SIZE: usize = 8192;
/// Blocks per relation segment file (1 GiB of 8 KiB pages).
pub const BLOCKS_PER_SEGMENT: u32 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline(always)]
fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// The checksum PostgreSQL stores in `pd_checksum` for this page at absolute block `blkno`.
pub fn checksum(page: &[u8], blkno: u32) -> u16 {
    assert_eq!(page.len(), PAGE_SIZE);
    let mut sums = BASE_OFFSETS;
    for (row, chunk) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, word) in chunk.chunks_exact(4).enumerate() {
            let mut value = u32::from_le_bytes(word.try_into().unwrap());
            // pd_checksum (bytes 8..10) counts as zero.
            if row == 0 && j == 2 {
                value &= 0xFFFF_0000;
            }
            sums[j] = mix(sums[j], value);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            *s = mix(*s, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// The LSN of the last change to this page.
pub fn page_lsn(page: &[u8]) -> Lsn {
    let hi = u32::from_le_bytes(page[0..4].try_into().unwrap()) as u64;
    let lo = u32::from_le_bytes(page[4..8].try_into().unwrap()) as u64;
    Lsn((hi << 32) | lo)
}

/// Whether a page passes PostgreSQL's checks: a new page (`pd_upper == 0`) must be all
/// zeros; any other page must carry the right checksum.
pub fn verify(page: &[u8], blkno: u32) -> bool {
    let pd_upper = u16::from_le_bytes([page[14], page[15]]);
    if pd_upper == 0 {
        return page.iter().all(|&b| b == 0);
    }
    let stored = u16::from_le_bytes([page[8], page[9]]);
    stored == checksum(page, blkno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_is_valid_and_garbage_is_not() {
        let page = vec![0u8; PAGE_SIZE];
        assert!(verify(&page, 7));
        let mut page = vec![0u8; PAGE_SIZE];
        page[100] = 1;
        assert!(
            !verify(&page, 7),
            "a new page with non-zero bytes is corrupt"
        );
    }

    #[test]
    fn checksum_ignores_its_own_field_and_depends_on_block() {
        let mut page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 31 % 251) as u8).collect();
        page[14] = 0x20; // pd_upper != 0
        let sum = checksum(&page, 3);
        page[8..10].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(checksum(&page, 3), sum);
        assert!(verify(&page, 3));
        assert!(!verify(&page, 4));
        page[5000] ^= 1;
        assert!(!verify(&page, 3));
    }
}
