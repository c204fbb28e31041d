//! Retention: the policy (which backups survive, and where the WAL window starts) and
//! `expire`, which applies it.

pub mod expire;
pub mod policy;
