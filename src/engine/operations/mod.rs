//! Operations: what tells a DBA that backups work, rather than making them.
//! `prove` test-restores a backup and records what it found.

pub mod prove;
