//! receive-wal: WAL streamed over a replication slot into the repository. The primary
//! archives nothing itself (`archive_command` only says yes), so every segment a restore
//! or verify finds came through the receiver.

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Env, Pg, Server, as_postgres};

/// A running `pgkeep receive-wal`, its output appended to a log file.
struct Receiver {
    child: Child,
    log: PathBuf,
}

impl Receiver {
    fn start(env: &Env) -> Receiver {
        let log = env.path("receive-wal.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = as_postgres(&env.pgkeep)
            .arg("--config")
            .arg(&env.config)
            .args(["receive-wal", "-v"])
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Receiver { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: nothing is flushed or stored on the way out.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status must be success.
    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "receive-wal exited with {status}:\n{}",
            self.log()
        );
    }

    fn wait_for(&mut self, what: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(text) {
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "receive-wal never {what} ({exited:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The primary of `env` with archiving left to receive-wal, and receive-wal as its
/// synchronous standby.
fn primary_streaming(env: &Env) -> Server {
    let main = env.primary();
    main.sql("ALTER SYSTEM SET archive_command = 'true'");
    main.sql("ALTER SYSTEM SET synchronous_standby_names = 'pgkeep'");
    main.sql("SELECT pg_reload_conf()");
    let receive = format!(
        "\n[receive]\nsynchronous = true\ndirectory = \"{}\"\n",
        env.path("receive").display()
    );
    env.write_config(&main, &receive);
    main
}

fn rpo_zero(pg: Pg) {
    let env = Env::new(&format!("receive{}", pg.major), pg);
    let main = primary_streaming(&env);
    env.pgkeep_ok(&["init"]);
    let mut receiver = Receiver::start(&env);
    receiver.wait_for("started streaming", "streaming timeline 1");
    assert_eq!(
        main.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgkeep'"),
        "sync",
        "receive-wal is not the synchronous standby"
    );
    main.pgbench_init(5);
    env.backup();

    // Under load, the receiver is killed and started again; commits wait meanwhile.
    let load = main.pgbench_load(4);
    for pause in [700, 1900, 400] {
        std::thread::sleep(Duration::from_millis(pause));
        receiver.kill();
        receiver = Receiver::start(&env);
    }
    std::thread::sleep(Duration::from_secs(2));
    load.stop(&main);
    main.sql("SELECT pg_switch_wal()");
    main.sql("CREATE TABLE marker (note text); INSERT INTO marker VALUES ('acknowledged')");
    let expected = main.sql(common::ACCOUNTS_FINGERPRINT);

    // The primary dies right after the acknowledged commit: the receiver stores the
    // segment it was streaming when the connection drops.
    run_kill_9(&main);
    receiver.wait_for("stored the streamed segment", "stored the streamed copy");
    receiver.stop();

    env.pgkeep_ok(&["verify"]);
    let restored = env.restore_and_start("restored", &["--target-action", "promote"]);
    assert_eq!(restored.sql("SELECT note FROM marker"), "acknowledged");
    assert_eq!(restored.sql(common::ACCOUNTS_FINGERPRINT), expected);
    assert!(restored.pgbench_consistent());
}

/// SIGKILL to the postmaster and its children.
fn run_kill_9(server: &Server) {
    let pid = std::fs::read_to_string(server.pgdata.join("postmaster.pid")).unwrap();
    let pid: i32 = pid.lines().next().unwrap().trim().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "the postmaster did not die");
        std::thread::sleep(Duration::from_millis(50));
    }
}

on_each_version!(rpo_zero);
