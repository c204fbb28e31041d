//! WAL: archiving (`archive-push`, `archive-get`), the timelines the archive holds,
//! reading archived segments, and which WAL each backup needs.

pub mod archive;
pub mod need;
pub mod receive;
pub mod scan;
pub mod spool;
pub mod timelines;
