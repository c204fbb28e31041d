//! WAL file names and segment headers.
//!
//! A segment name is `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the segment number split
//! into a "log id" and the segment within it, both depending on the segment size.

use super::lsn::Lsn;

/// What a file in `pg_wal` (or handed to `archive_command`) is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalFile {
    /// A complete segment.
    Segment { timeline: u32, log: u32, seg: u32 },
    /// The last, incomplete segment of a timeline, archived at promotion (`.partial`).
    Partial { timeline: u32, log: u32, seg: u32 },
    /// A backup history file (`SEGMENT.XXXXXXXX.backup`).
    BackupHistory { timeline: u32 },
    /// A timeline history file (`TTTTTTTT.history`).
    History { timeline: u32 },
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

fn segment_parts(s: &str) -> Option<(u32, u32, u32)> {
    if s.len() != 24
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return None;
    }
    Some((hex8(&s[0..8])?, hex8(&s[8..16])?, hex8(&s[16..24])?))
}

impl WalFile {
    /// Classifies a WAL file name; `None` for anything PostgreSQL would never archive.
    pub fn parse(name: &str) -> Option<WalFile> {
        if let Some(tli) = name.strip_suffix(".history") {
            return Some(WalFile::History {
                timeline: hex8(tli)?,
            });
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            let (timeline, log, seg) = segment_parts(seg)?;
            return Some(WalFile::Partial { timeline, log, seg });
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.')?;
            hex8(offset)?;
            let (timeline, _, _) = segment_parts(seg)?;
            return Some(WalFile::BackupHistory { timeline });
        }
        let (timeline, log, seg) = segment_parts(name)?;
        Some(WalFile::Segment { timeline, log, seg })
    }

    /// The name of timeline `timeline`'s history file.
    pub fn history_name(timeline: u32) -> String {
        format!("{timeline:08X}.history")
    }

    pub fn timeline(&self) -> u32 {
        match *self {
            WalFile::Segment { timeline, .. }
            | WalFile::Partial { timeline, .. }
            | WalFile::BackupHistory { timeline }
            | WalFile::History { timeline } => timeline,
        }
    }
}

/// Segment arithmetic for one WAL segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSize(pub u64);

/// Whether `size` is a WAL segment size PostgreSQL allows: a power of two from 1 MiB to
/// 1 GiB. Every other value would make segment arithmetic meaningless (or divide by 0).
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)
}

impl SegmentSize {
    fn per_log(self) -> u64 {
        0x1_0000_0000 / self.0
    }

    /// The segment number holding the byte at `lsn`.
    pub fn segno(self, lsn: Lsn) -> u64 {
        lsn.0 / self.0
    }

    /// The segment holding the last byte before `lsn`: the one that must be archived for a
    /// backup that stops at `lsn` (PostgreSQL's `XLByteToPrevSeg`).
    pub fn segno_before(self, lsn: Lsn) -> u64 {
        (lsn.0.saturating_sub(1)) / self.0
    }

    pub fn name(self, timeline: u32, segno: u64) -> String {
        format!(
            "{:08X}{:08X}{:08X}",
            timeline,
            segno / self.per_log(),
            segno % self.per_log()
        )
    }

    /// Segment number of a parsed segment name's log/seg pair.
    pub fn segno_of(self, log: u32, seg: u32) -> u64 {
        log as u64 * self.per_log() + seg as u64
    }

    /// First LSN of a segment.
    pub fn start_lsn(self, segno: u64) -> Lsn {
        Lsn(segno * self.0)
    }
}

/// The fields of a segment's first (long) page header that identify where it belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    pub timeline: u32,
    pub page_address: Lsn,
    pub system_identifier: u64,
    pub segment_size: u32,
}

/// `XLP_LONG_HEADER` in `xlp_info`.
const XLP_LONG_HEADER: u16 = 0x0002;

/// Reads the long page header at the start of a WAL segment, or `None` if the bytes are
/// not one (a zero-filled recycled segment, a file that is not WAL).
pub fn parse_long_header(bytes: &[u8]) -> Option<LongPageHeader> {
    if bytes.len() < 40 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let magic = u16_at(0);
    // WAL page magics are 0xD0xx (9.x) and 0xD1xx (10 and later: 0xD110 is 15, 0xD118 is 18).
    if magic & 0xF000 != 0xD000 || u16_at(2) & XLP_LONG_HEADER == 0 {
        return None;
    }
    Some(LongPageHeader {
        timeline: u32_at(4),
        page_address: Lsn(u64_at(8)),
        system_identifier: u64_at(24),
        segment_size: u32_at(32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: SegmentSize = SegmentSize(16 * 1024 * 1024);

    #[test]
    fn names_segments_like_postgres() {
        // pg_walfile_name('0/3000028') on timeline 1 with 16 MB segments.
        let lsn: Lsn = "0/3000028".parse().unwrap();
        assert_eq!(MB16.name(1, MB16.segno(lsn)), "000000010000000000000003");
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(MB16.name(2, MB16.segno(lsn)), "0000000200000016000000B3");
        // A stop LSN on a segment boundary belongs to the previous segment.
        let boundary: Lsn = "0/4000000".parse().unwrap();
        assert_eq!(
            MB16.name(1, MB16.segno_before(boundary)),
            "000000010000000000000003"
        );
        let big = SegmentSize(1024 * 1024 * 1024);
        assert_eq!(
            big.name(1, big.segno("5/C0000000".parse().unwrap())),
            "000000010000000500000003"
        );
    }

    #[test]
    fn classifies_archived_names() {
        assert_eq!(
            WalFile::parse("0000000100000000000000A3"),
            Some(WalFile::Segment {
                timeline: 1,
                log: 0,
                seg: 0xA3
            })
        );
        assert_eq!(
            WalFile::parse("00000002.history"),
            Some(WalFile::History { timeline: 2 })
        );
        assert_eq!(
            WalFile::parse("000000010000000000000003.00000028.backup"),
            Some(WalFile::BackupHistory { timeline: 1 })
        );
        assert_eq!(
            WalFile::parse("000000010000000000000005.partial"),
            Some(WalFile::Partial {
                timeline: 1,
                log: 0,
                seg: 5
            })
        );
        for bad in [
            "",
            "../00000001.history",
            "0000000100000000000000a3",
            "00000001000000000000003",
            "x.history",
        ] {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_long_page_header() {
        // The first 40 bytes of a PostgreSQL 15 segment, system 7710555394523847067.
        let mut page = vec![0u8; 40];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&2u16.to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[8..16].copy_from_slice(&0x100_0000u64.to_le_bytes());
        page[24..32].copy_from_slice(&7710555394523847067u64.to_le_bytes());
        page[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        let h = parse_long_header(&page).unwrap();
        assert_eq!(h.system_identifier, 7710555394523847067);
        assert_eq!(h.timeline, 1);
        assert_eq!(h.page_address, Lsn(0x100_0000));
        page[0] = 0x18; // 0xD118, PostgreSQL 18
        assert!(parse_long_header(&page).is_some());
        assert!(parse_long_header(&[0u8; 40]).is_none(), "zeroed segment");
    }

    #[test]
    fn segno_round_trips() {
        let segno = MB16.segno("16/B374D848".parse().unwrap());
        let Some(WalFile::Segment { log, seg, .. }) = WalFile::parse(&MB16.name(1, segno)) else {
            panic!()
        };
        assert_eq!(MB16.segno_of(log, seg), segno);
    }
}
