//! The scratch server: PostgreSQL started on a restored directory, reachable only
//! through a socket in the scratch directory, that recovers to the target. Used by
//! `restore-table` (which pauses it there and copies a table out) and `prove` (which
//! lets it end recovery there and checks the result).
//!
//! Invariants: it never archives (`archive_mode = off` on its command line, which the
//! restored configuration cannot override), so whatever it does (a `prove` promotes it)
//! adds no timeline and nothing to the repository; it runs none of the restored
//! configuration's commands or files outside its directory; it listens on no TCP port;
//! it is a child of pgkeep (see [`crate::engine::scratch`]), shut down immediately when
//! pgkeep stops or dies.
//!
//! For `restore-table`, other databases' relation files are empty (see
//! `restore::databases`): a record that changes a page of one without a full-page image
//! (setting a page all-visible, when neither checksums nor `wal_log_hints` are on) finds
//! an empty page, which recovery counts as an invalid page and, at consistency, a reason
//! to stop. Those pages are never read, so `ignore_invalid_pages` lets it go on, as
//! pgBackRest's users of `--db-include` do. A proof restores everything and lets nothing
//! go.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use indicatif::ProgressBar;

use crate::engine::Context;
use crate::engine::physical::restore;
use crate::engine::scratch::{self, Running, Stop};
use crate::pg::conninfo::ConnParams;
use crate::pg::session::Session;
use crate::pg::tools::{self, Tool};

/// Its port only names the socket file, in a directory of its own.
const PORT: u16 = 5432;
const POLL: Duration = Duration::from_millis(50);
/// The longest Unix socket path (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What the scratch server is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `restore-table`: one database restored, the others empty, so invalid pages in
    /// those are let go.
    Table,
    /// `prove`: everything restored, and recovery as strict as PostgreSQL's default.
    Proof,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Table => "pgkeep-restore-table",
            Purpose::Proof => "pgkeep-prove",
        }
    }
}

/// Refuses a scratch directory whose socket path would be too long, before anything is
/// restored into it.
pub fn check_socket_path(dir: &Path) -> Result<()> {
    let socket = dir.join(format!(".s.PGSQL.{PORT}"));
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "the scratch server's socket {} would be longer than {MAX_SOCKET_PATH} bytes; choose a shorter --scratch-dir",
            socket.display()
        );
    }
    Ok(())
}

/// Refuses to go on as root, before anything is restored: PostgreSQL never runs so.
pub fn refuse_root(command: &str) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        bail!(
            "{command} starts a PostgreSQL server, which never runs as root; run pgkeep as the cluster's OS user (`sudo -u postgres pgkeep ...`)"
        );
    }
    Ok(())
}

/// The server program of the cluster's major version.
pub fn server_program(ctx: &Context, major: u32, command: &str) -> Result<Tool> {
    let why = format!("to recover a scratch copy of this PostgreSQL {major} cluster");
    let postgres = tools::find("postgres", major, ctx.cluster.pg_bin.as_deref(), &why)?;
    if postgres.major != major {
        bail!(
            "{command} needs PostgreSQL {major}'s server program (postgres) {why}, but found version {} at {}; install PostgreSQL {major} or set pg_bin",
            postgres.major,
            postgres.path.display()
        );
    }
    Ok(postgres)
}

/// The live server's values of the settings a hot standby needs as high.
pub fn live_standby_settings(ctx: &Context) -> Result<Vec<u64>> {
    let mut session = ctx.connect()?;
    STANDBY_SETTINGS
        .iter()
        .map(|(_, setting)| {
            let value = session.setting(setting)?;
            value
                .parse()
                .with_context(|| format!("{setting} is '{value}', not a number"))
        })
        .collect()
}

pub struct ScratchServer {
    running: Running,
    socket_dir: PathBuf,
    log: PathBuf,
    user: String,
    purpose: Purpose,
}

/// Where recovery ended: the last WAL record replayed.
pub struct Recovered {
    pub lsn: String,
}

impl ScratchServer {
    /// Starts `postgres` on `pgdata` (restored with `recovery_target_action = pause`),
    /// with its socket and log in `dir`, fetching WAL one segment at a time with the
    /// cluster's `restore_command`; `live` holds the live server's values of the
    /// settings [`STANDBY_SETTINGS`] names (empty if it cannot be asked).
    pub fn start(
        ctx: &Context,
        postgres: &Tool,
        pgdata: &Path,
        dir: &Path,
        purpose: Purpose,
        live: &[u64],
    ) -> Result<ScratchServer> {
        let user = ctx.conn_params()?.user;
        let restore_command = restore::restore_command(ctx, "--no-get-ahead ")?;
        let hba = dir.join("pg_hba.conf");
        // Only this OS user can reach the socket (its directory is private).
        fs::write(&hba, "local all all trust\n")?;
        fs::write(dir.join("pg_ident.conf"), "")?;
        let conf = pgdata.join("postgresql.conf");
        if !conf.exists() {
            // The cluster keeps its configuration elsewhere (Debian's /etc/postgresql).
            fs::write(&conf, "")?;
        }
        let log = dir.join("server.log");
        let mut cmd = Command::new(&postgres.path);
        cmd.arg("-D").arg(pgdata);
        let restored = standby_minimums(postgres, pgdata)?;
        for (i, (_, setting)) in STANDBY_SETTINGS.iter().enumerate() {
            let value = restored[i].max(live.get(i).copied().unwrap_or(0));
            if value > 0 {
                cmd.arg("-c").arg(format!("{setting}={value}"));
            }
        }
        if postgres.major <= 15 {
            // A standby's trigger file must not promote it (the setting is gone in 16).
            cmd.arg("-c").arg("promote_trigger_file=");
        }
        let ignore_invalid_pages = if purpose == Purpose::Table {
            "on"
        } else {
            "off"
        };
        let settings = [
            ("data_directory", pgdata.to_string_lossy().into_owned()),
            ("listen_addresses", String::new()),
            (
                "unix_socket_directories",
                dir.to_string_lossy().into_owned(),
            ),
            ("port", PORT.to_string()),
            ("archive_mode", "off".into()),
            ("hot_standby", "on".into()),
            ("recovery_target_action", "pause".into()),
            ("restore_command", restore_command),
            ("ignore_invalid_pages", ignore_invalid_pages.into()),
            ("archive_cleanup_command", String::new()),
            ("recovery_end_command", String::new()),
            ("external_pid_file", String::new()),
            ("recovery_min_apply_delay", "0".into()),
            // Its log is read for why it paused.
            ("lc_messages", "C".into()),
            ("ssl", "off".into()),
            ("hba_file", hba.to_string_lossy().into_owned()),
            (
                "ident_file",
                dir.join("pg_ident.conf").to_string_lossy().into_owned(),
            ),
            // A scratch copy beside the live server must not take its memory.
            ("shared_buffers", "128MB".into()),
            ("huge_pages", "off".into()),
            ("logging_collector", "off".into()),
            ("log_destination", "stderr".into()),
            ("cluster_name", purpose.name().into()),
        ];
        for (key, value) in settings {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        let output = fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        Ok(ScratchServer {
            running: scratch::spawn_as(&mut cmd, Stop::Quit)?,
            socket_dir: dir.to_path_buf(),
            log,
            user,
            purpose,
        })
    }

    /// Settings to connect to database `dbname` of the scratch server.
    pub fn params(&self, dbname: &str) -> ConnParams {
        ConnParams {
            hosts: vec![self.socket_dir.to_string_lossy().into_owned()],
            ports: vec![PORT],
            user: self.user.clone(),
            dbname: dbname.to_string(),
            password: None,
            connect_timeout: Some(Duration::from_secs(10)),
            application_name: self.purpose.name().into(),
            options: None,
            sslmode: "disable".into(),
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }

    /// A session to template1 (always restored) once the server accepts connections.
    fn connect_when_ready(&mut self) -> Result<Session> {
        loop {
            self.check_alive()?;
            match Session::connect(&self.params("template1")) {
                Ok(session) => return Ok(session),
                Err(e) if still_starting(&format!("{e:#}")) => std::thread::sleep(POLL),
                Err(e) => return Err(e.context("cannot connect to the scratch server")),
            }
        }
    }

    /// Waits until the server is paused at the target and returns a session to
    /// `dbname`. Fails, with the server's last words, if it stops first (a target it
    /// cannot reach, a setting it refuses).
    pub fn wait_paused(&mut self, dbname: &str, progress: &ProgressBar) -> Result<Session> {
        progress.set_message("recovering to the target");
        let mut session = self.connect_when_ready()?;
        loop {
            self.check_alive()?;
            let state = session.rows(
                "SELECT pg_get_wal_replay_pause_state(), coalesce(pg_last_wal_replay_lsn()::text, '')",
            )?;
            if state[0][0] == "paused" {
                self.check_at_target()?;
                break;
            }
            progress.set_message(format!(
                "recovering to the target: replayed up to {}",
                state[0][1]
            ));
            std::thread::sleep(POLL);
        }
        let exists = session.text_with(
            "SELECT count(*)::text FROM pg_database WHERE datname = $1",
            &[dbname],
        )?;
        if exists == "0" {
            bail!(
                "database {dbname} did not exist at the target; choose another target or database"
            );
        }
        Session::connect(&self.params(dbname))
    }

    /// Waits until recovery has ended, at the target (where the server pauses, checks
    /// it is the target, and is told to go on) or at the end of the WAL, and the server
    /// is open for writes on its own new timeline (which it never archives).
    pub fn wait_recovered(&mut self, progress: &ProgressBar) -> Result<Recovered> {
        progress.set_message("recovering to the target");
        let mut session = self.connect_when_ready()?;
        loop {
            self.check_alive()?;
            // Recovery may end between the two calls, which the second takes for an error.
            let state = match session.rows(
                "SELECT pg_is_in_recovery()::text, \
                        CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END, \
                        coalesce(pg_last_wal_replay_lsn()::text, '')",
            ) {
                Err(e) if format!("{e:#}").contains("recovery is not in progress") => continue,
                state => state?,
            };
            let (in_recovery, pause, lsn) = (&state[0][0], &state[0][1], &state[0][2]);
            if in_recovery == "false" {
                return Ok(Recovered { lsn: lsn.clone() });
            }
            if pause == "paused" {
                self.check_at_target()?;
                session.execute("SELECT pg_wal_replay_resume()")?;
            }
            progress.set_message(format!("recovering to the target: replayed up to {lsn}"));
            std::thread::sleep(POLL);
        }
    }

    /// Connects as the cluster's bootstrap superuser from now on (`pg_amcheck` installs
    /// `amcheck`, and probes read every table); the configured user may be less.
    pub fn use_bootstrap_superuser(&mut self) -> Result<()> {
        let mut session = Session::connect(&self.params("template1"))?;
        self.user = session.text("SELECT rolname::text FROM pg_roles WHERE oid = 10")?;
        Ok(())
    }

    /// A pause is the target only if recovery says it stopped there: it also pauses when
    /// the WAL raises a setting above the server's (PostgreSQL 14+).
    fn check_at_target(&self) -> Result<()> {
        let log = self.log_text();
        if log.contains("recovery stopping") {
            return Ok(());
        }
        bail!(
            "the scratch server paused before it reached the target:\n{}",
            scratch::messages(log.as_bytes())
        )
    }

    /// What the server has logged so far.
    fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.running.child().try_wait()? {
            bail!(
                "the scratch server stopped ({status}) before it reached the target:\n{}",
                scratch::messages(self.log_text().as_bytes())
            );
        }
        Ok(())
    }
}

/// Whether a connection error only says the server is not ready yet: no socket yet, or
/// not consistent yet.
fn still_starting(error: &str) -> bool {
    [
        "No such file or directory",
        "Connection refused",
        "starting up",
        "not yet accepting connections",
    ]
    .iter()
    .any(|m| error.contains(m))
}

/// The settings a hot standby needs at least as high as the primary had them when it
/// wrote the WAL being replayed (pg_controldata's names, the settings'). Recovery stops
/// (or, from PostgreSQL 14, pauses) where they are lower, so the scratch server takes
/// the higher of the restored `pg_control`'s values and the live server's now: a
/// restored configuration from elsewhere (or none), or one raised since the backup,
/// cannot stop it.
const STANDBY_SETTINGS: [(&str, &str); 5] = [
    ("max_connections setting:", "max_connections"),
    ("max_worker_processes setting:", "max_worker_processes"),
    ("max_wal_senders setting:", "max_wal_senders"),
    ("max_prepared_xacts setting:", "max_prepared_transactions"),
    ("max_locks_per_xact setting:", "max_locks_per_transaction"),
];

/// The restored `pg_control`'s values of [`STANDBY_SETTINGS`] (0 where it has none).
fn standby_minimums(postgres: &Tool, pgdata: &Path) -> Result<Vec<u64>> {
    let program = postgres.path.with_file_name("pg_controldata");
    let output = Command::new(&program)
        .arg(pgdata)
        .env("LC_ALL", "C")
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "pg_controldata cannot read the restored directory: {}",
            scratch::messages(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(STANDBY_SETTINGS
        .iter()
        .map(|(label, _)| {
            text.lines()
                .find_map(|l| l.strip_prefix(label))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect())
}
