//! Reading WAL records out of segments: enough to find restore points and commit times.
//!
//! A segment is a run of 8 KiB pages, each with a header (40 bytes on a segment's first
//! page, 24 on the others). Records are 8-byte aligned, may span pages and segments, and
//! start with a 24-byte `XLogRecord` header whose CRC covers the record. Pages whose
//! header does not carry the expected address are left-over content of a recycled
//! segment: reading stops there.

use super::lsn::Lsn;

const PAGE: usize = 8192;
const LONG_HEADER: usize = 40;
const SHORT_HEADER: usize = 24;
const RECORD_HEADER: usize = 24;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;

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

/// A record begun on an earlier page.
struct Partial {
    lsn: Lsn,
    total: usize,
    bytes: Vec<u8>,
}

/// Reads records from consecutive segments of one timeline, the way PostgreSQL's
/// xlogreader does: a record continues only onto a page that says it continues it with
/// the right remaining length, and every record's CRC is checked. Anything else ends the
/// valid WAL of the segment.
#[derive(Default)]
pub struct RecordReader {
    partial: Option<Partial>,
    /// The segment number expected next (anything else drops a record in progress).
    next_segno: Option<u64>,
}

/// CRC-32C of the record body, then of the header up to `xl_crc` (`xlogrecord.h`).
fn crc_ok(rec: &[u8]) -> bool {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[RECORD_HEADER..]), &rec[..20]);
    crc == u32_at(rec, 20)
}

impl RecordReader {
    /// Parses one segment (`segno`, all its bytes) and calls `emit` for each valid record
    /// that ends in it.
    pub fn feed(&mut self, segno: u64, bytes: &[u8], mut emit: impl FnMut(Record)) {
        let seg_start = segno * bytes.len() as u64;
        if self.next_segno != Some(segno) {
            self.partial = None;
        }
        self.next_segno = Some(segno + 1);
        for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
            if !self.feed_page(page, seg_start + (i * PAGE) as u64, &mut emit) {
                self.partial = None;
                self.next_segno = None;
                return;
            }
        }
    }

    /// One page; `false` where valid WAL ends.
    fn feed_page(&mut self, page: &[u8], page_addr: u64, emit: &mut impl FnMut(Record)) -> bool {
        if u16_at(page, 0) & 0xF000 != 0xD000 || u64_at(page, 8) != page_addr {
            return false;
        }
        let info = u16_at(page, 2);
        let mut pos = if info & XLP_LONG_HEADER != 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
        let in_progress = self.partial.take();
        if info & XLP_FIRST_IS_CONTRECORD != 0 {
            let rem = u32_at(page, 16) as usize;
            let take = rem.min(PAGE - pos);
            match in_progress {
                Some(mut p) if p.total - p.bytes.len() == rem => {
                    p.bytes.extend_from_slice(&page[pos..pos + take]);
                    if p.bytes.len() < p.total {
                        self.partial = Some(p);
                        return true;
                    }
                    if !crc_ok(&p.bytes) {
                        return false;
                    }
                    emit(record(p.lsn, p.bytes));
                }
                // The tail of a record we never saw begin: skip it.
                _ if take < rem => return true,
                _ => {}
            }
            pos = align8(pos + take);
        }
        // (A record in progress on a page without the flag was never finished: PostgreSQL
        // overwrote it after a crash. It is dropped.)
        while pos < PAGE {
            let total = u32_at(page, pos) as usize;
            if total == 0 {
                return true; // the rest of the page is unused
            }
            if total < RECORD_HEADER {
                return false;
            }
            let lsn = Lsn(page_addr + pos as u64);
            if pos + total > PAGE {
                self.partial = Some(Partial {
                    lsn,
                    total,
                    bytes: page[pos..].to_vec(),
                });
                return true;
            }
            let rec = &page[pos..pos + total];
            if !crc_ok(rec) {
                return false;
            }
            emit(record(lsn, rec.to_vec()));
            pos = align8(pos + total);
        }
        true
    }
}

fn record(lsn: Lsn, bytes: Vec<u8>) -> Record {
    Record {
        lsn,
        rmid: bytes[17],
        info: bytes[16],
        xid: u32_at(&bytes, 4),
        bytes,
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

    /// A record of `len` bytes (header included) with a valid CRC.
    fn rec(len: usize, fill: u8) -> Vec<u8> {
        let mut r = vec![fill; len];
        r[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        r[4..8].copy_from_slice(&7u32.to_le_bytes());
        r[16] = 0;
        r[17] = RM_XLOG_ID;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&r[RECORD_HEADER..]), &r[..20]);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    fn header(page: &mut [u8], info: u16, addr: u64, rem: u32) {
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&info.to_le_bytes());
        page[8..16].copy_from_slice(&addr.to_le_bytes());
        page[16..20].copy_from_slice(&rem.to_le_bytes());
    }

    /// Segment 1 of 3 pages: A (48 bytes) at 40, B (10000 bytes) at 88 running into
    /// page 1, then C. `continued` says whether page 1 carries B's continuation.
    fn segment(continued: bool) -> Vec<u8> {
        let len = 3 * PAGE;
        let base = len as u64;
        let mut seg = vec![0u8; len];
        header(&mut seg[..PAGE], XLP_LONG_HEADER, base, 0);
        let a = rec(48, 1);
        seg[40..88].copy_from_slice(&a);
        let b = rec(10_000, 2);
        let first = PAGE - 88;
        seg[88..PAGE].copy_from_slice(&b[..first]);
        let rest = b.len() - first;
        let c = rec(64, 3);
        if continued {
            header(
                &mut seg[PAGE..2 * PAGE],
                XLP_FIRST_IS_CONTRECORD,
                base + PAGE as u64,
                rest as u32,
            );
            seg[PAGE + 24..PAGE + 24 + rest].copy_from_slice(&b[first..]);
            let at = PAGE + align8(24 + rest);
            seg[at..at + 64].copy_from_slice(&c);
        } else {
            // Overwritten after a crash: a new record where B's tail should be.
            header(&mut seg[PAGE..2 * PAGE], 0, base + PAGE as u64, 0);
            seg[PAGE + 24..PAGE + 24 + 64].copy_from_slice(&c);
        }
        header(&mut seg[2 * PAGE..], 0, base + 2 * PAGE as u64, 0);
        seg
    }

    fn read(seg: &[u8]) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        RecordReader::default().feed(1, seg, |r| {
            out.push((r.lsn.0 - seg.len() as u64, r.bytes.len()))
        });
        out
    }

    #[test]
    fn records_span_pages_only_as_continuations() {
        let rest = 10_000 - (PAGE - 88);
        assert_eq!(
            read(&segment(true)),
            vec![
                (40, 48),
                (88, 10_000),
                ((PAGE + align8(24 + rest)) as u64, 64)
            ]
        );
        // The unfinished record is dropped; the record written over its tail is read.
        assert_eq!(
            read(&segment(false)),
            vec![(40, 48), ((PAGE + 24) as u64, 64)]
        );
    }

    #[test]
    fn a_damaged_record_ends_the_valid_wal() {
        let mut seg = segment(true);
        seg[88 + 100] ^= 1; // inside B
        assert_eq!(read(&seg), vec![(40, 48)]);
    }

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
