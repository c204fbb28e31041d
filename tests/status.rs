//! `status`: RPO, the archiver, backups and proofs judged against `[status]`, in text,
//! JSON and Nagios' form. With archiving broken, RPO grows as WAL is written and status
//! goes CRITICAL; fixed, it returns to OK; with a synchronous receive-wal RPO is 0.

mod common;

use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::{Env, Pg, Server, chown_postgres};

const THRESHOLDS: &str = "[status]\nrpo_warning_seconds = 3\nrpo_critical_seconds = 6\n";

fn nagios(env: &Env) -> (i32, String) {
    let out = env.pgkeep(&["status", "--nagios"]);
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap(), line)
}

fn status_json(env: &Env) -> serde_json::Value {
    let reports: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["status", "--json"])).unwrap();
    reports[0].clone()
}

fn rpo_bytes(env: &Env) -> u64 {
    status_json(env)["rpo"]["bytes"].as_u64().unwrap()
}

/// Waits up to a minute for the Nagios code to be `code`; returns the line.
fn wait_for_code(env: &Env, code: i32) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (now, line) = nagios(env);
        if now == code {
            return line;
        }
        assert!(Instant::now() < deadline, "status stayed {now}: {line}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn configure(env: &Env, server: &Server, receive: &str) {
    env.write_config(
        server,
        &format!(
            "pg_bin = \"{}\"\n{receive}{THRESHOLDS}",
            env.pg.bin.display()
        ),
    );
}

fn status(pg: Pg) {
    let env = Env::new(&format!("status{}", pg.major), pg);
    let main = env.primary();
    configure(&env, &main, "");
    env.pgkeep_ok(&["init"]);

    let (code, line) = nagios(&env);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("PGKEEP CRITICAL - ") && line.contains("no backup yet"),
        "{line}"
    );

    main.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    env.backup();
    let scratch = env.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    chown_postgres(&scratch);
    env.pgkeep_ok(&["prove", "--scratch-dir", &scratch_arg(&scratch)]);
    main.sql("SELECT pg_switch_wal()");
    main.wait_archived();
    let line = wait_for_code(&env, 0);
    assert!(line.starts_with("PGKEEP OK - "), "{line}");
    for perf in ["backup_age=", "rpo_bytes=", "rpo=", "proof_age="] {
        assert!(line.contains(perf), "{line}");
    }
    let report = status_json(&env);
    assert_eq!(report["level"], "OK", "{report}");
    assert_eq!(report["last_proof"]["passed"], true, "{report}");
    assert!(report["estimated_rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(!report["recoverable"].is_null());
    assert!(report["archiver"]["archived_count"].as_u64().unwrap() > 0);
    let text = env.pgkeep_ok(&["status"]);
    assert!(
        text.contains(": OK\n") && text.contains("estimated RTO now"),
        "{text}"
    );

    history(&env, &scratch_arg(&scratch));

    // Archiving breaks: RPO grows with the WAL written, then status goes CRITICAL.
    main.sql("ALTER SYSTEM SET archive_command = 'false'");
    main.sql("SELECT pg_reload_conf()");
    let before = rpo_bytes(&env);
    main.sql("INSERT INTO t SELECT generate_series(1, 200000)");
    let after = rpo_bytes(&env);
    assert!(after > before + (1 << 20), "RPO {before} -> {after} bytes");
    main.sql("SELECT pg_switch_wal()");
    main.sql("INSERT INTO t SELECT generate_series(1, 1000)");
    let line = wait_for_code(&env, 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = line;
    while !(line.contains("archive_command is failing") && line.contains("RPO")) {
        assert!(Instant::now() < deadline, "{line}");
        std::thread::sleep(Duration::from_millis(500));
        line = nagios(&env).1;
    }
    let report = status_json(&env);
    assert_eq!(report["level"], "CRITICAL");
    assert!(report["archiver"]["failed_count"].as_u64().unwrap() > 0);
    assert!(env.pgkeep_ok(&["status"]).contains(": CRITICAL\n"));

    // Fixed: the archiver catches up and status returns to OK.
    main.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        env.archive_command()
    ));
    main.sql("SELECT pg_reload_conf()");
    let line = wait_for_code(&env, 0);
    assert!(line.starts_with("PGKEEP OK"), "{line}");

    // A synchronous receive-wal: nothing acknowledged can be lost, RPO 0 under writes.
    main.sql("ALTER SYSTEM SET synchronous_standby_names = 'pgkeep'");
    main.sql("SELECT pg_reload_conf()");
    configure(
        &env,
        &main,
        &format!(
            "\n[receive]\nsynchronous = true\ndirectory = \"{}\"\n",
            env.path("receive").display()
        ),
    );
    let mut receiver = Receiver::start(&env);
    receiver.wait_for("started streaming", "streaming timeline");
    let deadline = Instant::now() + Duration::from_secs(30);
    while main.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgkeep'")
        != "sync"
    {
        assert!(
            Instant::now() < deadline,
            "receive-wal never became synchronous"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    main.sql("INSERT INTO t SELECT generate_series(1, 100000)");
    let report = status_json(&env);
    assert_eq!(report["rpo"]["bytes"], 0, "{report}");
    assert_eq!(report["rpo"]["via"], "synchronous receive-wal", "{report}");
    main.sql("ALTER SYSTEM RESET synchronous_standby_names");
    main.sql("SELECT pg_reload_conf()");
    receiver.stop();
}

fn scratch_arg(scratch: &std::path::Path) -> String {
    scratch.to_str().unwrap().to_string()
}

/// Every kind of run is in the history with what it made, a failed one with why.
fn history(env: &Env, scratch: &str) {
    env.pgkeep_ok(&["dump", "-d", "postgres"]);
    env.pgkeep_ok(&["verify"]);
    env.pgkeep_ok(&["expire"]);
    env.pgkeep_err(&["prove", "--backup", "nope", "--scratch-dir", scratch]);
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&env.pgkeep_ok(&["history", "--json"])).unwrap();
    let kinds: Vec<&str> = runs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["backup", "prove", "dump", "verify", "expire", "prove"],
        "{runs:?}"
    );
    let backup = &runs[0];
    assert_eq!(backup["passed"], true);
    for field in [
        "label",
        "size",
        "stored",
        "start_lsn",
        "stop_lsn",
        "started",
        "finished",
    ] {
        assert!(!backup[field].is_null(), "{field}: {backup}");
    }
    assert!(
        runs[1]["summary"].as_str().unwrap().contains("RTO"),
        "{}",
        runs[1]
    );
    assert_eq!(runs[2]["summary"], "database postgres");
    assert_eq!(runs[3]["passed"], true);
    let failed = &runs[5];
    assert_eq!(failed["passed"], false);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("backup 'nope' does not exist")
    );
    let text = env.pgkeep_ok(&["history"]);
    assert!(
        text.contains("  prove   FAILED  ") && text.contains("does not exist"),
        "{text}"
    );
    assert!(text.contains("  backup  ok      "), "{text}");
}

on_each_version!(status);
