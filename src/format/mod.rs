//! PostgreSQL on-disk and on-wire formats as pure functions: no I/O here, so every
//! piece is unit-tested against values PostgreSQL's own tools print.

pub mod backup_manifest;
pub mod control;
pub mod guc;
pub mod history;
pub mod incremental;
pub mod label;
pub mod lsn;
pub mod page;
pub mod tablespace_map;
pub mod tar;
pub mod wal;
pub mod walrecord;
