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
pub const RM_SMGR_ID: u8 = 2;
pub const RM_DBASE_ID: u8 = 4;
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
    /// that ends in it. Returns whether the WAL was valid to the segment's end (`false`
    /// where it ends early: the current segment, or damage).
    pub fn feed(&mut self, segno: u64, bytes: &[u8], mut emit: impl FnMut(Record)) -> bool {
        let seg_start = segno * bytes.len() as u64;
        if self.next_segno != Some(segno) {
            self.partial = None;
        }
        self.next_segno = Some(segno + 1);
        for (i, page) in bytes.chunks_exact(PAGE).enumerate() {
            if !self.feed_page(page, seg_start + (i * PAGE) as u64, &mut emit) {
                self.partial = None;
                self.next_segno = None;
                return false;
            }
        }
        true
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

impl Record {
    /// Where the record before this one starts (`xl_prev`).
    pub fn prev(&self) -> Lsn {
        Lsn(u64_at(&self.bytes, 8))
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

/// A relation's storage: `RelFileLocator` (tablespace, database, relfilenode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelLocator {
    pub tablespace: u32,
    pub database: u32,
    pub relfilenode: u32,
}

impl RelLocator {
    fn at(bytes: &[u8], o: usize) -> Option<RelLocator> {
        let b = bytes.get(o..o + 12)?;
        Some(RelLocator {
            tablespace: u32_at(b, 0),
            database: u32_at(b, 4),
            relfilenode: u32_at(b, 8),
        })
    }
}

/// A block a record changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub rel: RelLocator,
    /// 0 main, 1 free space map, 2 visibility map, 3 init.
    pub fork: u8,
    pub block: u32,
}

/// The block references and main data of a record (`xlogrecord.h`): block headers,
/// then their images and data, then the main data at the very end.
pub struct Parsed<'a> {
    pub blocks: Vec<BlockRef>,
    pub main_data: &'a [u8],
}

/// `BKPBLOCK_*` flags in a block header's `fork_flags`.
const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
/// `BKPIMAGE_HAS_HOLE` and the compression methods (PostgreSQL 15+).
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
const BKPIMAGE_COMPRESSED: u8 = 0x1C;

/// Splits a record into its block references and main data; `None` if it is malformed.
pub fn parse(rec: &[u8]) -> Option<Parsed<'_>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(rec.get(o..o + 2)?.try_into().ok()?));
    let mut blocks: Vec<BlockRef> = Vec::new();
    let mut p = RECORD_HEADER;
    // Headers go on while more bytes remain than the data they announce.
    let mut data_total = 0usize;
    let mut main_len = 0usize;
    while rec.len().checked_sub(p)? > data_total {
        match *rec.get(p)? {
            255 => {
                main_len = *rec.get(p + 1)? as usize;
                data_total += main_len;
                p += 2;
            }
            254 => {
                main_len = u32::from_le_bytes(rec.get(p + 1..p + 5)?.try_into().ok()?) as usize;
                data_total += main_len;
                p += 5;
            }
            253 => p += 3, // replication origin
            252 => p += 5, // top-level xid
            0..=32 => {
                let fork_flags = *rec.get(p + 1)?;
                data_total += u16_at(p + 2)? as usize;
                p += 4;
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    // Image length, hole offset, info, then a hole length if the image
                    // has a hole and is compressed.
                    data_total += u16_at(p)? as usize;
                    let bimg_info = *rec.get(p + 4)?;
                    p += 5;
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & BKPIMAGE_COMPRESSED != 0 {
                        p += 2;
                    }
                }
                let rel = if fork_flags & BKPBLOCK_SAME_REL != 0 {
                    blocks.last()?.rel
                } else {
                    p += 12;
                    RelLocator::at(rec, p - 12)?
                };
                blocks.push(BlockRef {
                    rel,
                    fork: fork_flags & BKPBLOCK_FORK_MASK,
                    block: u32::from_le_bytes(rec.get(p..p + 4)?.try_into().ok()?),
                });
                p += 4;
            }
            _ => return None,
        }
    }
    if rec.len() - p != data_total {
        return None;
    }
    Some(Parsed {
        blocks,
        main_data: rec.get(rec.len().checked_sub(main_len)?..)?,
    })
}

/// The main data of a record: what follows its block references.
pub fn main_data(rec: &[u8]) -> Option<&[u8]> {
    parse(rec).map(|p| p.main_data)
}

/// What a record does to relation storage besides changing the blocks it references:
/// the events PostgreSQL's WAL summarizer turns into limit blocks.
#[derive(Debug, PartialEq, Eq)]
pub enum StorageChange {
    /// A fork created empty (`XLOG_SMGR_CREATE`).
    ForkCreated { rel: RelLocator, fork: u8 },
    /// The main fork cut to `blocks` blocks (`XLOG_SMGR_TRUNCATE` with `SMGR_TRUNCATE_HEAP`).
    Truncated { rel: RelLocator, blocks: u32 },
    /// A database directory created by copying or WAL-logging a template.
    DatabaseCreated { tablespace: u32, database: u32 },
    /// A database dropped from these tablespaces.
    DatabaseDropped {
        database: u32,
        tablespaces: Vec<u32>,
    },
    /// Relations whose files a commit or abort removes.
    RelationsDropped(Vec<RelLocator>),
    /// `wal_level` went down to `minimal`: from here the WAL misses changes.
    WalLevelMinimal,
}

const XLOG_PARAMETER_CHANGE: u8 = 0x60;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
const XLOG_DBASE_DROP: u8 = 0x20;
/// `XLOG_XACT_HAS_INFO` and the `XACT_XINFO_*` flags that precede the dropped relations.
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;

/// A record of a kind [`storage_change`] reads, too short for that kind.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// The storage change a record makes, if any (`smgr.h`, `dbcommands_xlog.h`, `xact.h`,
/// `pg_control.h`).
pub fn storage_change(rec: &Record) -> Result<Option<StorageChange>, Malformed> {
    let kind = rec.info & 0xF0;
    let read = match rec.rmid {
        RM_XLOG_ID => kind == XLOG_PARAMETER_CHANGE,
        RM_SMGR_ID => matches!(kind, XLOG_SMGR_CREATE | XLOG_SMGR_TRUNCATE),
        RM_DBASE_ID => matches!(
            kind,
            XLOG_DBASE_CREATE_FILE_COPY | XLOG_DBASE_CREATE_WAL_LOG | XLOG_DBASE_DROP
        ),
        RM_XACT_ID => XACT_END_OPS.contains(&(rec.info & 0x70)),
        _ => false,
    };
    if !read {
        return Ok(None);
    }
    read_storage_change(rec).ok_or(Malformed)
}

/// [`storage_change`] for a record of a kind it reads; `None` if the record is too short.
fn read_storage_change(rec: &Record) -> Option<Option<StorageChange>> {
    let data = main_data(&rec.bytes)?;
    let u32_in = |o: usize| data.get(o..o + 4).map(|b| u32_at(b, 0));
    Some(match (rec.rmid, rec.info & 0xF0) {
        // wal_level is the sixth int; WAL_LEVEL_MINIMAL is 0.
        (RM_XLOG_ID, _) => (u32_in(20)? == 0).then_some(StorageChange::WalLevelMinimal),
        (RM_SMGR_ID, XLOG_SMGR_CREATE) => Some(StorageChange::ForkCreated {
            rel: RelLocator::at(data, 0)?,
            fork: u32_in(12)? as u8,
        }),
        (RM_SMGR_ID, _) => {
            (u32_in(16)? & SMGR_TRUNCATE_HEAP != 0).then_some(StorageChange::Truncated {
                rel: RelLocator::at(data, 4)?,
                blocks: u32_in(0)?,
            })
        }
        (RM_DBASE_ID, XLOG_DBASE_DROP) => {
            let n = u32_in(4)? as usize;
            Some(StorageChange::DatabaseDropped {
                database: u32_in(0)?,
                tablespaces: (0..n).map(|i| u32_in(8 + 4 * i)).collect::<Option<_>>()?,
            })
        }
        (RM_DBASE_ID, _) => Some(StorageChange::DatabaseCreated {
            database: u32_in(0)?,
            tablespace: u32_in(4)?,
        }),
        _ => {
            // A transaction's end: xact_time, then optional xinfo, dbinfo,
            // subtransactions and dropped relations.
            let mut p = 8;
            let xinfo = if rec.info & XLOG_XACT_HAS_INFO != 0 {
                p += 4;
                u32_in(8)?
            } else {
                0
            };
            if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
                p += 8;
            }
            if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
                p += 4 + 4 * u32_in(p)? as usize;
            }
            if xinfo & XACT_XINFO_HAS_RELFILELOCATORS == 0 {
                return Some(None);
            }
            let n = u32_in(p)? as usize;
            let rels = (0..n)
                .map(|i| RelLocator::at(data, p + 4 + 12 * i))
                .collect::<Option<_>>()?;
            Some(StorageChange::RelationsDropped(rels))
        }
    })
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
        assert_eq!(main_data(&[0u8; 24]), Some(&b""[..]));
        assert_eq!(main_data(&[0u8; 23]), None);
    }

    #[test]
    fn block_references() {
        // Block 0: relation 1663/5/16384, main fork, block 7, 2 bytes of data; block 1:
        // same relation, visibility map fork, block 0, an 8-byte image with a hole, no
        // data. No main data: the block payloads end the record.
        let mut rec = vec![0u8; 24];
        rec.extend_from_slice(&[0, 0x00, 2, 0]);
        for v in [1663u32, 5, 16384, 7] {
            rec.extend_from_slice(&v.to_le_bytes());
        }
        rec.extend_from_slice(&[1, 0x80 | 0x10 | 2, 0, 0, 8, 0, 0, 0, BKPIMAGE_HAS_HOLE]);
        rec.extend_from_slice(&0u32.to_le_bytes());
        rec.extend_from_slice(&[0xAA; 2 + 8]);
        let parsed = parse(&rec).unwrap();
        let rel = |fork, block| BlockRef {
            rel: RelLocator {
                tablespace: 1663,
                database: 5,
                relfilenode: 16384,
            },
            fork,
            block,
        };
        assert_eq!(parsed.blocks, vec![rel(0, 7), rel(2, 0)]);
        assert!(parsed.main_data.is_empty());
        assert!(parse(&rec[..rec.len() - 1]).is_none(), "truncated payload");
    }

    /// A record of resource manager `rmid` whose only content is `data` as main data.
    fn with_main_data(rmid: u8, info: u8, data: &[u8]) -> Record {
        let mut bytes = vec![0u8; 24];
        bytes.extend_from_slice(&[255, data.len() as u8]);
        bytes.extend_from_slice(data);
        record(Lsn(0), {
            bytes[16] = info;
            bytes[17] = rmid;
            bytes
        })
    }

    fn words(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn storage_changes() {
        let rel = |relfilenode| RelLocator {
            tablespace: 1663,
            database: 5,
            relfilenode,
        };
        let truncate = words(&[40, 1663, 5, 16384, SMGR_TRUNCATE_HEAP | 2]);
        assert_eq!(
            storage_change(&with_main_data(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, &truncate)),
            Ok(Some(StorageChange::Truncated {
                rel: rel(16384),
                blocks: 40
            }))
        );
        let vm_only = words(&[40, 1663, 5, 16384, 2]);
        assert_eq!(
            storage_change(&with_main_data(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, &vm_only)),
            Ok(None)
        );
        let create = words(&[1663, 5, 16390, 0]);
        assert_eq!(
            storage_change(&with_main_data(RM_SMGR_ID, XLOG_SMGR_CREATE, &create)),
            Ok(Some(StorageChange::ForkCreated {
                rel: rel(16390),
                fork: 0
            }))
        );
        // Commit: time, xinfo (dbinfo, 2 subtransactions, 2 relations), then the rest.
        let mut commit = vec![0u8; 8];
        commit.extend(words(&[
            XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_SUBXACTS | XACT_XINFO_HAS_RELFILELOCATORS,
            5,
            1663,
            2,
            901,
            902,
            2,
            1663,
            5,
            16400,
            1663,
            5,
            16401,
            0,
        ]));
        assert_eq!(
            storage_change(&with_main_data(RM_XACT_ID, XLOG_XACT_HAS_INFO, &commit)),
            Ok(Some(StorageChange::RelationsDropped(vec![
                rel(16400),
                rel(16401)
            ])))
        );
        assert_eq!(
            storage_change(&with_main_data(
                RM_XACT_ID,
                XLOG_XACT_HAS_INFO,
                &commit[..commit.len() - 8]
            )),
            Err(Malformed),
            "a relation list cut short"
        );
        assert_eq!(
            storage_change(&with_main_data(RM_XACT_ID, 0x00, &[0u8; 8])),
            Ok(None),
            "a commit without xinfo drops nothing"
        );
        let drop = words(&[50000, 2, 1663, 16500]);
        assert_eq!(
            storage_change(&with_main_data(RM_DBASE_ID, XLOG_DBASE_DROP, &drop)),
            Ok(Some(StorageChange::DatabaseDropped {
                database: 50000,
                tablespaces: vec![1663, 16500]
            }))
        );
        let copy = words(&[50000, 1663, 1, 1663]);
        assert_eq!(
            storage_change(&with_main_data(
                RM_DBASE_ID,
                XLOG_DBASE_CREATE_FILE_COPY,
                &copy
            )),
            Ok(Some(StorageChange::DatabaseCreated {
                tablespace: 1663,
                database: 50000
            }))
        );
        let minimal = words(&[100, 8, 10, 0, 64, 0, 0]);
        assert_eq!(
            storage_change(&with_main_data(RM_XLOG_ID, XLOG_PARAMETER_CHANGE, &minimal)),
            Ok(Some(StorageChange::WalLevelMinimal))
        );
        let replica = words(&[100, 8, 10, 0, 64, 1, 0]);
        assert_eq!(
            storage_change(&with_main_data(RM_XLOG_ID, XLOG_PARAMETER_CHANGE, &replica)),
            Ok(None)
        );
    }
}
