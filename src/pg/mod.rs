//! PostgreSQL connectivity: libpq-compatible settings resolution, SQL sessions, and
//! PostgreSQL's own client programs.

pub mod conninfo;
pub mod replication;
pub mod session;
pub mod tls;
pub mod tools;
