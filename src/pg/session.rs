//! One SQL session to the cluster. Backups need a single session that stays open from
//! `pg_backup_start` to `pg_backup_stop`: this type is that session.

use anyhow::{Context, Result, anyhow, bail};

use super::conninfo::ConnParams;
use super::tls::{self, Tls};
use crate::format::lsn::Lsn;

pub struct Session {
    client: postgres::Client,
    pub version_num: u32,
}

/// What `pg_backup_stop` hands back: the stop position and the two files the backup
/// must contain instead of anything found in PGDATA.
pub struct BackupStop {
    pub stop_lsn: Lsn,
    pub label_file: String,
    pub tablespace_map: Option<String>,
}

/// A tablespace outside the data directory (where it is comes from `pg_backup_stop`).
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
}

fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

impl Session {
    /// Connects to the first server of `params` that accepts the connection.
    pub fn connect(params: &ConnParams) -> Result<Session> {
        params.first_reachable(Session::connect_one)
    }

    /// Connects to the one server `params` names.
    fn connect_one(params: &ConnParams) -> Result<Session> {
        let config = params.to_client_config()?;
        let host = params.hosts.first().map_or("", String::as_str);
        let tls = Tls::for_host(params, host)?;
        let mut client = config.connect(tls.for_session()).map_err(|e| {
            let why = match tls::rustls_error(&e) {
                Some(failure) => tls.explain(host, failure),
                // (The postgres crate's words for a server that refused the TLS request.)
                None if describe(&e).contains("server does not support TLS") => tls::NO_TLS.into(),
                None => describe(&e),
            };
            anyhow!(
                "cannot connect to PostgreSQL at {} as user '{}': {why}; check `connection` in the pgkeep config and that the server is running",
                params.describe(),
                params.user,
            )
        })?;
        let version: String = client
            .query_one("SELECT current_setting('server_version_num')", &[])
            .map_err(|e| anyhow!("cannot read the server version: {}", describe(&e)))?
            .get(0);
        let version_num = version
            .parse()
            .context("server_version_num is not a number")?;
        // A backup session idles for hours between pg_backup_start and pg_backup_stop:
        // no server-side timeout may end it.
        client
            .batch_execute(
                "SET statement_timeout = 0; SET idle_session_timeout = 0; \
                 SET idle_in_transaction_session_timeout = 0; SET lock_timeout = 0",
            )
            .map_err(|e| anyhow!("cannot configure the session: {}", describe(&e)))?;
        if version_num < 150000 {
            bail!(
                "PostgreSQL {} is not supported; pgkeep needs PostgreSQL 15 or newer",
                version_num / 10000
            );
        }
        Ok(Session {
            client,
            version_num,
        })
    }

    /// Runs a query that returns one text value.
    pub fn text(&mut self, sql: &str) -> Result<String> {
        let row = self
            .client
            .query_one(sql, &[])
            .map_err(|e| anyhow!("query `{sql}` failed: {}", describe(&e)))?;
        Ok(row.get(0))
    }

    /// Runs a query whose columns are all text (cast them) and returns every row.
    pub fn rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>> {
        self.rows_with(sql, &[])
    }

    /// Runs a query with text parameters (`$1`, ...) that returns one text value.
    pub fn text_with(&mut self, sql: &str, params: &[&str]) -> Result<String> {
        let mut rows = self.rows_with(sql, params)?;
        match (rows.pop(), rows.is_empty()) {
            (Some(mut row), true) if row.len() == 1 => Ok(row.remove(0)),
            _ => bail!("query `{sql}` returned other than one value"),
        }
    }

    /// Runs a query with text parameters (`$1`, ...) whose columns are all text (NULL
    /// reads as empty).
    pub fn rows_with(&mut self, sql: &str, params: &[&str]) -> Result<Vec<Vec<String>>> {
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let rows = self
            .client
            .query(sql, &params)
            .map_err(|e| anyhow!("query `{sql}` failed: {}", describe(&e)))?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i).unwrap_or_default())
                    .collect()
            })
            .collect())
    }

    /// Streams `COPY ... TO STDOUT` here into `COPY ... FROM STDIN` on `target`; returns
    /// the rows copied.
    pub fn copy_into(
        &mut self,
        copy_out: &str,
        target: &mut Session,
        copy_in: &str,
    ) -> Result<u64> {
        let mut reader = self
            .client
            .copy_out(copy_out)
            .map_err(|e| anyhow!("`{copy_out}` failed: {}", describe(&e)))?;
        let mut writer = target
            .client
            .copy_in(copy_in)
            .map_err(|e| anyhow!("`{copy_in}` failed: {}", describe(&e)))?;
        std::io::copy(&mut reader, &mut writer)
            .with_context(|| format!("`{copy_out}` into `{copy_in}` failed"))?;
        writer
            .finish()
            .map_err(|e| anyhow!("`{copy_in}` failed: {}", describe(&e)))
    }

    /// Runs statements that return nothing.
    pub fn execute(&mut self, sql: &str) -> Result<()> {
        self.client
            .batch_execute(sql)
            .map_err(|e| anyhow!("`{sql}` failed: {}", describe(&e)))
    }

    pub fn setting(&mut self, name: &str) -> Result<String> {
        let row = self
            .client
            .query_one("SELECT current_setting($1)", &[&name])
            .map_err(|e| anyhow!("cannot read setting {name}: {}", describe(&e)))?;
        Ok(row.get(0))
    }

    pub fn system_identifier(&mut self) -> Result<u64> {
        self.text("SELECT system_identifier::text FROM pg_control_system()")?
            .parse()
            .context("system_identifier is not a number")
    }

    pub fn wal_segment_size(&mut self) -> Result<u64> {
        Ok(self
            .text("SELECT pg_size_bytes(current_setting('wal_segment_size'))::text")?
            .parse()?)
    }

    /// Whether the server has pg_tde's WAL key file: its WAL is encrypted on disk, and
    /// a walsender sends it decrypted. Looked for with `pg_stat_file`, which needs
    /// superuser or pg_read_server_files; without that right this warns and says no.
    pub fn has_tde_wal_keys(&mut self) -> bool {
        match self
            .text("SELECT ((pg_stat_file('pg_tde/wal_keys', true)).size IS NOT NULL)::text")
            .as_deref()
        {
            Ok(keys) => keys == "true",
            Err(e) => {
                tracing::warn!(
                    "cannot tell whether pg_tde encrypts the WAL ({e:#}); grant pg_read_server_files to check"
                );
                false
            }
        }
    }

    pub fn in_recovery(&mut self) -> Result<bool> {
        Ok(self.text("SELECT pg_is_in_recovery()::text")? == "true")
    }

    /// Seconds since the epoch on the server's clock.
    pub fn now(&mut self) -> Result<f64> {
        Ok(self
            .text("SELECT extract(epoch FROM clock_timestamp())::text")?
            .parse()?)
    }

    pub fn tablespaces(&mut self) -> Result<Vec<Tablespace>> {
        let rows = self
            .client
            .query(
                "SELECT oid::text, spcname::text FROM pg_tablespace \
                 WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
                &[],
            )
            .map_err(|e| anyhow!("cannot list tablespaces: {}", describe(&e)))?;
        rows.iter()
            .map(|r| {
                Ok(Tablespace {
                    oid: r.get::<_, String>(0).parse()?,
                    name: r.get(1),
                })
            })
            .collect()
    }

    /// Starts a non-exclusive backup with an immediate checkpoint.
    /// Every database's OID and name.
    pub fn databases(&mut self) -> Result<Vec<(u32, String)>> {
        self.rows("SELECT oid::text, datname::text FROM pg_database ORDER BY oid")?
            .into_iter()
            .map(|row| {
                let oid = row[0].parse().context("pg_database.oid is not a number")?;
                Ok((oid, row[1].clone()))
            })
            .collect()
    }

    pub fn backup_start(&mut self, label: &str) -> Result<Lsn> {
        let row = self
            .client
            .query_one("SELECT pg_backup_start($1, true)::text", &[&label])
            .map_err(|e| anyhow!("pg_backup_start failed: {}", describe(&e)))?;
        row.get::<_, String>(0)
            .parse()
            .map_err(|e: String| anyhow!(e))
    }

    /// Stops the backup without waiting for archiving: pgkeep waits for the WAL itself,
    /// with a timeout and a clear error, rather than hang inside the server.
    pub fn backup_stop(&mut self) -> Result<BackupStop> {
        let row = self
            .client
            .query_one(
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
                &[],
            )
            .map_err(|e| anyhow!("pg_backup_stop failed: {}", describe(&e)))?;
        let spcmap: Option<String> = row.get(2);
        Ok(BackupStop {
            stop_lsn: row
                .get::<_, String>(0)
                .parse()
                .map_err(|e: String| anyhow!(e))?,
            label_file: row.get(1),
            tablespace_map: spcmap.filter(|s| !s.is_empty()),
        })
    }

    /// The transaction snapshot as `xmin:xmax:xip,...` (64-bit xids).
    pub fn snapshot(&mut self) -> Result<String> {
        self.text("SELECT pg_current_snapshot()::text")
    }

    /// Forces a WAL switch and returns the name of the segment that it completed. A
    /// restore point is written first: a switch with no WAL since the last one does
    /// nothing, and the segment it names would never be archived.
    pub fn switch_wal(&mut self) -> Result<String> {
        self.text("SELECT pg_create_restore_point('pgkeep check')::text")?;
        self.text("SELECT pg_walfile_name(pg_switch_wal())")
    }
}

/// `name` as an SQL identifier, quoted as `quote_ident` would (always, which is never wrong).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
