//! pgkeep: PostgreSQL backup and point-in-time recovery.
//!
//! Layers, from the bottom: `config`, `os` and `format` (PostgreSQL formats, pure), `pg`
//! (talking to the server), `repo` (the repository format and storage), `engine` (the
//! commands), `serve` (the long-running scheduler, notifier and HTTP endpoints, which
//! runs the commands as child processes), `cli`.

pub mod cli;
pub mod config;
pub mod engine;
pub mod format;
pub mod os;
pub mod pg;
pub mod repo;
pub mod serve;
