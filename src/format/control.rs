//! `global/pg_control`: the fields pgkeep checks. The layout of this prefix of
//! `ControlFileData` is the same in every supported version (15 and later).

use super::lsn::Lsn;

/// `DBState::DB_IN_ARCHIVE_RECOVERY`: a standby (or a server in recovery).
pub const DB_IN_ARCHIVE_RECOVERY: u32 = 5;
/// `DBState::DB_IN_PRODUCTION`.
pub const DB_IN_PRODUCTION: u32 = 6;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFile {
    pub system_identifier: u64,
    pub catalog_version: u32,
    pub state: u32,
    /// Location of the latest checkpoint record.
    pub checkpoint: Lsn,
    /// Timeline of the latest checkpoint.
    pub timeline: u32,
}

/// Parses the start of `pg_control`; `None` if it is too short.
pub fn parse(bytes: &[u8]) -> Option<ControlFile> {
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    Some(ControlFile {
        system_identifier: u64_at(0)?,
        catalog_version: u32_at(12)?,
        state: u32_at(16)?,
        checkpoint: Lsn(u64_at(32)?),
        // checkPointCopy starts at 40 with the redo pointer, then ThisTimeLineID.
        timeline: u32_at(48)?,
    })
}

impl ControlFile {
    /// `PG_<major>_<catalog version>`: the directory a tablespace holds for this cluster.
    pub fn tablespace_directory(&self, major: u32) -> String {
        format!("PG_{major}_{}", self.catalog_version)
    }
}
