//! Operations: what tells a DBA that backups work, rather than making them.
//! `prove` test-restores a backup and records what it found; `status` judges RPO,
//! RTO, the recoverable window and the age of backups and proofs; `history` records
//! every run.

pub mod history;
pub mod prove;
pub mod status;
