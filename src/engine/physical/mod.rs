//! Physical backups of a data directory and their restore.

pub mod backup;
pub mod restore;
pub mod target;
mod walk;
