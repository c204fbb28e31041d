//! pgkeep: PostgreSQL backup and point-in-time recovery.
//!
//! Layers, from the bottom: `config`, `os` and `format` (PostgreSQL formats, pure), `pg`
//! (talking to the server), `repo` (the repository format and storage), `engine` (the commands), `cli`.

pub mod cli;
pub mod config;
pub mod engine;
pub mod format;
pub mod os;
pub mod pg;
pub mod repo;
