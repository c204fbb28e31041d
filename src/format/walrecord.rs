//! Reading WAL records out of segments: enough to find restore points and commit times.
//!
//! A segment is a run of 8 KiB pages, each with a header (40 bytes on a segment's first
//! page, 24 on the others). Records are 8-byte aligned, may span pages and segments, and
//! start with a 24-byte `XLogRecord` header. Pages whose header does not carry the
//! expected address are left-over content of a recycled segment: reading stops there.

use super::lsn::Lsn;

const PAGE: usize = 8192;
const LONG_HEADER: usize = 40;
const SHORT_HEADER: usize = 24;
const RECORD_HEADER: usize = 24;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;

pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
/// `XLOG_RESTORE_POINT` in the XLOG resource manager.
const XLOG_RESTORE_POINT: u8 = 0x70;
/// Commit, commit prepared, abort and abort prepared (`info & XLOG_XACT_OPMASK`).
const XACT_END_OPS: [u8; 4] = [0x00, 0x30, 0x20, 0x40];

/// One WAL record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub rmid: u8,
    pub info: u8,
    pub xid: u32,
    /// The whole record, header included.
    pub bytes: Vec<u8>,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Reads records from consecutive segments of one timeline.
#[derive(Default)]
pub struct RecordReader {
    /// Bytes of a record that continues into the next segment, and its LSN.
    carry: Vec<u8>,
    carry_lsn: Lsn,
    /// The segment number expected next (a gap drops any carried record).
    next_segno: Option<u64>,
}

impl RecordReader {
    /// Parses one segment (`segno`, `bytes` of the segment size) and calls `emit` for each
    /// record that ends in it.
    pub fn feed(&mut self, segno: u64, bytes: &[u8], mut emit: impl FnMut(Record)) {
        let seg_start = segno * bytes.len() as u64;
        if self.next_segno != Some(segno) {
            self.carry.clear();
        }
        self.next_segno = Some(segno + 1);
        // The record payload of every valid page, with page headers removed, and the
        // physical offset at which each page's payload starts.
        let mut stream = std::mem::take(&mut self.carry);
        let carried = stream.len();
        let mut pages: Vec<(usize, usize)> = Vec::new(); // (stream offset, segment offset)
        let mut skip_continuation = carried == 0;
        for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
            let header = if i == 0 { LONG_HEADER } else { SHORT_HEADER };
            let expected = seg_start + (i * PAGE) as u64;
            if u16_at(page, 0) & 0xF000 != 0xD000 || u64_at(page, 8) != expected {
                break;
            }
            let mut body = &page[header..];
            if skip_continuation {
                // Reading starts mid-stream: drop the tail of a record we never saw begin.
                if u16_at(page, 2) & XLP_FIRST_IS_CONTRECORD != 0 {
                    let rem = u32_at(page, 16) as usize;
                    if align8(rem) >= body.len() {
                        continue;
                    }
                    body = &body[align8(rem)..];
                }
                skip_continuation = false;
                pages.push((stream.len(), i * PAGE + (PAGE - body.len())));
            } else {
                pages.push((stream.len(), i * PAGE + header));
            }
            stream.extend_from_slice(body);
        }
        let lsn_of = |pos: usize| -> Lsn {
            let idx = pages.partition_point(|&(s, _)| s <= pos) - 1;
            let (s, off) = pages[idx];
            Lsn(seg_start + (off + pos - s) as u64)
        };
        let mut pos = 0;
        loop {
            if pos + RECORD_HEADER > stream.len() {
                break;
            }
            let total = u32_at(&stream, pos) as usize;
            if total < RECORD_HEADER {
                // Zeros: the rest of the segment after a WAL switch, or the end of WAL.
                self.next_segno = None;
                return;
            }
            if pos + total > stream.len() {
                break;
            }
            let lsn = if pos < carried {
                self.carry_lsn
            } else {
                lsn_of(pos)
            };
            let rec = &stream[pos..pos + total];
            emit(Record {
                lsn,
                rmid: rec[17],
                info: rec[16],
                xid: u32_at(rec, 4),
                bytes: rec.to_vec(),
            });
            pos = align8(pos + total);
        }
        if pos < stream.len() && !pages.is_empty() {
            self.carry_lsn = if pos < carried {
                self.carry_lsn
            } else {
                lsn_of(pos)
            };
            self.carry = stream[pos..].to_vec();
        }
    }
}

/// The main data of a record: what follows its block references (`xlogrecord.h`).
pub fn main_data(rec: &[u8]) -> Option<&[u8]> {
    let mut p = RECORD_HEADER;
    loop {
        let id = *rec.get(p)?;
        match id {
            255 => {
                let len = *rec.get(p + 1)? as usize;
                return rec.get(rec.len().checked_sub(len)?..);
            }
            254 => {
                let len = u32::from_le_bytes(rec.get(p + 1..p + 5)?.try_into().ok()?) as usize;
                return rec.get(rec.len().checked_sub(len)?..);
            }
            253 => p += 3, // replication origin
            252 => p += 5, // top-level xid
            0..=32 => {
                let fork_flags = *rec.get(p + 1)?;
                p += 4;
                if fork_flags & 0x10 != 0 {
                    // Block image: length, hole offset, info, then a hole length if the
                    // image has a hole and is compressed.
                    let bimg_info = *rec.get(p + 4)?;
                    let compressed = bimg_info & 0x1C != 0;
                    p += 5;
                    if bimg_info & 0x01 != 0 && compressed {
                        p += 2;
                    }
                }
                if fork_flags & 0x80 == 0 {
                    p += 12; // relation locator
                }
                p += 4; // block number
            }
            _ => return None,
        }
    }
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A `TimestampTz` as microseconds since the Unix epoch.
fn timestamp(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) + PG_EPOCH_OFFSET_US)
}

/// The name and time (µs since the Unix epoch) of a restore point record.
pub fn restore_point(rec: &Record) -> Option<(String, i64)> {
    if rec.rmid != RM_XLOG_ID || rec.info & 0xF0 != XLOG_RESTORE_POINT {
        return None;
    }
    let data = main_data(&rec.bytes)?;
    let name = data.get(8..8 + 64)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some((
        String::from_utf8_lossy(&name[..end]).into_owned(),
        timestamp(data)?,
    ))
}

/// The time (µs since the Unix epoch) of a commit or abort record: the only records a
/// `recovery_target_time` is compared with.
pub fn xact_time(rec: &Record) -> Option<i64> {
    if rec.rmid != RM_XACT_ID || !XACT_END_OPS.contains(&(rec.info & 0x70)) {
        return None;
    }
    timestamp(main_data(&rec.bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_data_after_headers() {
        // Header (24 bytes), a top-level xid entry, then short main data of 3 bytes.
        let mut rec = vec![0u8; 24];
        rec.extend_from_slice(&[252, 1, 2, 3, 4, 255, 3]);
        rec.extend_from_slice(b"abc");
        assert_eq!(main_data(&rec), Some(&b"abc"[..]));
        assert_eq!(main_data(&[0u8; 24]), None);
    }
}
