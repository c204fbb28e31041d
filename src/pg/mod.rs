//! PostgreSQL connectivity: libpq-compatible settings resolution and SQL sessions.

pub mod conninfo;
pub mod session;
