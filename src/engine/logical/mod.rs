//! Logical backups: pg_dump archives stored through the chunk store (`dump`, `import`),
//! restored through pg_restore or psql (`restore`) and written out for the stock tools
//! (`export`), both fed from the repository (`feed`, `pipes`).

mod convert;
pub mod dump;
pub mod export;
mod feed;
pub mod import;
mod pipes;
pub mod restore;
mod store;
mod watch;

/// `server_version_num` to its major version (150004 is 15).
fn major_of(version_num: u32) -> u32 {
    version_num / 10000
}
