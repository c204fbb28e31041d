//! Finding PostgreSQL's client programs (pg_dump, pg_restore, psql, ...): the one in the
//! configured `pg_bin`, or else the oldest installed one that is at least as new as
//! needed. pg_dump must be at least the server's major version, and pg_restore at
//! least the major version of the pg_dump that wrote the archive.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::conninfo::ConnParams;

/// A PostgreSQL program and its major version.
#[derive(Clone, Debug)]
pub struct Tool {
    pub path: PathBuf,
    pub major: u32,
}

/// The major version a program's `--version` prints: "pg_dump (PostgreSQL) 15.10
/// (Debian 15.10-0+deb12u1)" is 15; "psql (PostgreSQL) 9.6.24" is 9.
pub fn parse_version(output: &str) -> Option<u32> {
    let version = output.split(')').nth(1)?.split_whitespace().next()?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn version_of(path: &Path) -> Option<u32> {
    let out = Command::new(path).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| parse_version(&String::from_utf8_lossy(&out.stdout)))?
}

/// Where PostgreSQL's programs are usually installed: Debian's and the PGDG RPMs'
/// per-version directories, then `PATH`.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for pattern_dir in ["/usr/lib/postgresql", "/usr"] {
        let Ok(entries) = std::fs::read_dir(pattern_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if pattern_dir == "/usr/lib/postgresql" || name.starts_with("pgsql-") {
                dirs.push(entry.path().join("bin"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

impl Tool {
    /// The program, set to connect to database `dbname` with `conn`'s settings. They go
    /// in libpq's environment variables, so the password stays off the command line; a
    /// service named in the environment is dropped, as `conn` has resolved it already
    /// (and libpq would let it override the variables).
    pub fn command(&self, conn: &ConnParams, dbname: &str) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.env_remove("PGSERVICE").env_remove("PGSERVICEFILE");
        cmd.env("PGHOST", conn.hosts.join(","))
            .env("PGUSER", &conn.user)
            .env("PGDATABASE", dbname)
            .env("PGAPPNAME", &conn.application_name)
            .env("PGSSLMODE", &conn.sslmode);
        let ports: Vec<String> = conn.ports.iter().map(u16::to_string).collect();
        cmd.env("PGPORT", ports.join(","));
        if let Some(p) = &conn.password {
            cmd.env("PGPASSWORD", p);
        }
        if let Some(o) = &conn.options {
            cmd.env("PGOPTIONS", o);
        }
        for (var, file) in [
            ("PGSSLROOTCERT", &conn.sslrootcert),
            ("PGSSLCERT", &conn.sslcert),
            ("PGSSLKEY", &conn.sslkey),
        ] {
            if let Some(file) = file {
                cmd.env(var, file);
            }
        }
        if let Some(t) = conn.connect_timeout {
            cmd.env("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string());
        }
        cmd
    }
}

/// Program `name` of major version `at_least` or newer: from `pg_bin` when configured
/// (which must hold a new enough one), else the oldest new enough one installed (the
/// closest to the server's own).
pub fn find(name: &str, at_least: u32, pg_bin: Option<&Path>, why: &str) -> Result<Tool> {
    if let Some(dir) = pg_bin {
        let path = dir.join(name);
        let major = version_of(&path).with_context(|| {
            format!(
                "pg_bin = {} holds no working {name}; point pg_bin at a PostgreSQL bin directory",
                dir.display()
            )
        })?;
        if major < at_least {
            bail!(
                "{} is version {major}, but {why} needs {name} {at_least} or newer; \
                 point pg_bin at PostgreSQL {at_least}'s bin directory",
                path.display()
            );
        }
        return Ok(Tool { path, major });
    }
    let found = installed(name);
    if let Some(tool) = found.iter().find(|t| t.major >= at_least) {
        return Ok(tool.clone());
    }
    let seen = match found.last() {
        Some(t) => format!(
            "the newest found is {} (version {})",
            t.path.display(),
            t.major
        ),
        None => "none was found in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin or PATH".to_string(),
    };
    bail!(
        "{why} needs {name} {at_least} or newer, and {seen}; install PostgreSQL {at_least}'s \
         client programs (Debian: postgresql-client-{at_least}) or set pg_bin in the cluster's config"
    )
}

/// Every installed copy of program `name` that runs, oldest version first.
fn installed(name: &str) -> Vec<Tool> {
    let mut found: Vec<Tool> = candidate_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
        .filter_map(|path| version_of(&path).map(|major| Tool { path, major }))
        .collect();
    found.sort_by_key(|t| t.major);
    found
}

/// Program `name` from `pg_bin`, or else the newest installed: for reading an archive
/// whose version is not known yet.
pub fn newest(name: &str, pg_bin: Option<&Path>) -> Result<Tool> {
    if pg_bin.is_some() {
        return find(name, 0, pg_bin, "reading the archive");
    }
    installed(name).pop().with_context(|| {
        format!(
            "{name} was found neither in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin nor in PATH; \
             install PostgreSQL's client programs or set pg_bin in the cluster's config"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_the_programs_print_them() {
        let debian = "pg_dump (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)\n";
        assert_eq!(parse_version(debian), Some(15));
        assert_eq!(parse_version("psql (PostgreSQL) 9.6.24\n"), Some(9));
        assert_eq!(parse_version("pg_restore (PostgreSQL) 18beta1\n"), Some(18));
        assert_eq!(parse_version("something else"), None);
    }
}
