//! Point-in-time recovery under a pgbench load, to every kind of target, on real servers,
//! with the repository on S3 (moto), encrypted.

mod common;

use std::time::Duration;

use common::objects::Service;
use common::targets::fingerprint;
use common::{Env, Pg, Server};

fn sleep(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Runs the load for a moment, then lets the data stand still.
fn burst(main: &Server) {
    let load = main.pgbench_load(2);
    sleep(1500);
    load.stop(main);
}

struct Mark {
    name: &'static str,
    args: Vec<String>,
    expected: String,
    backup: String,
}

/// Restores to a mark into a new directory, starts it, and checks it holds exactly the
/// data of the mark and passes pgbench's invariant, pg_amcheck and pg_checksums.
fn restore_and_check(env: &Env, mark: &Mark) {
    let pgdata = env.path(&format!("restore-{}", mark.name));
    let mut args = vec![
        "restore".to_string(),
        "--pgdata".into(),
        pgdata.display().to_string(),
    ];
    args.extend(mark.args.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.pgkeep_ok(&args);
    assert!(
        out.contains(&format!("restored backup {} ", mark.backup)),
        "mark {}: {out}",
        mark.name
    );
    let mut server = env.restored(&pgdata);
    server.options = "-c archive_mode=off".into();
    server.start();
    server.wait_promoted();
    if !mark.expected.is_empty() {
        assert_eq!(
            fingerprint(&server),
            mark.expected,
            "mark {}: wrong data after recovery",
            mark.name
        );
    }
    assert!(
        server.pgbench_consistent(),
        "mark {}: pgbench invariant broken",
        mark.name
    );
    server.amcheck();
    server.stop();
    server.checksums_ok();
}

fn pitr(pg: Pg) {
    let env = Env::on_object_storage(&format!("pitr{}", pg.major), pg, Service::S3).encrypted();
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    env.pgkeep_ok(&["check"]);
    main.pgbench_init(5);
    main.sql("CREATE TABLE marks (id serial PRIMARY KEY, name text)");

    // Backup A under load.
    let load = main.pgbench_load(2);
    sleep(500);
    let backup_a = env.backup();
    sleep(500);
    load.stop(&main);

    // Mark 1, a time between backup A and backup B.
    main.sql("INSERT INTO marks (name) VALUES ('time1')");
    let fp1 = fingerprint(&main);
    main.sql("SELECT pg_create_restore_point('early')");
    sleep(1100);
    let t1 = main.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    sleep(1100);

    // Backup B under load.
    let load = main.pgbench_load(2);
    sleep(500);
    let backup_b = env.backup();
    sleep(500);
    load.stop(&main);

    // Mark 2: a transaction id.
    let xid =
        main.sql("BEGIN; INSERT INTO marks (name) VALUES ('xid2'); SELECT txid_current(); COMMIT;");
    let fp2 = fingerprint(&main);
    burst(&main);
    // Mark 3: a named restore point.
    main.sql("INSERT INTO marks (name) VALUES ('name3')");
    let fp3 = fingerprint(&main);
    main.sql("SELECT pg_create_restore_point('mark3')");
    burst(&main);
    // Mark 4: an LSN.
    main.sql("INSERT INTO marks (name) VALUES ('lsn4')");
    let fp4 = fingerprint(&main);
    let lsn4 = main.sql("SELECT pg_current_wal_lsn()");
    burst(&main);
    // Mark 5: the end of the archive.
    let fp_before5 = fingerprint(&main);
    main.sql("INSERT INTO marks (name) VALUES ('end5')");
    let fp5 = fingerprint(&main);
    env.pgkeep_ok(&["check"]); // switches WAL and waits for it to be archived
    // The window's end, read from the archived WAL, is restorable and holds mark 5.
    let info: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap();
    let window_end: chrono::DateTime<chrono::Utc> = info["recoverable"]["to_time"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The window ends at the last transaction, 'end5': a target there is never reached
    // and is refused before anything is written; a microsecond earlier is just before it.
    let at_end = window_end.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
    let refused = env.path("restore-refused");
    let err = env.pgkeep_err(&[
        "restore",
        "--pgdata",
        refused.to_str().unwrap(),
        "--target-time",
        &at_end,
    ]);
    assert!(
        err.contains("is not before the last archived transaction"),
        "{err}"
    );
    assert!(!refused.exists());
    let window_end = (window_end - chrono::Duration::microseconds(1))
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string();
    assert_eq!(info["recoverable"]["from_backup"], backup_a.as_str());

    let promote = || vec!["--target-action".to_string(), "promote".to_string()];
    let with = |extra: &[&str]| {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(promote());
        v
    };
    let marks = vec![
        Mark {
            name: "time",
            args: with(&["--target-time", &t1]),
            expected: fp1.clone(),
            backup: backup_a.clone(),
        },
        Mark {
            name: "xid",
            args: with(&["--target-xid", &xid]),
            expected: fp2,
            backup: backup_b.clone(),
        },
        Mark {
            name: "name",
            args: with(&["--target-name", "mark3"]),
            expected: fp3,
            backup: backup_b.clone(),
        },
        Mark {
            name: "name-early",
            args: with(&["--target-name", "early"]),
            expected: fp1,
            backup: backup_a.clone(),
        },
        Mark {
            name: "lsn",
            args: with(&["--target-lsn", &lsn4]),
            expected: fp4,
            backup: backup_b.clone(),
        },
        Mark {
            name: "window-end",
            args: with(&["--target-time", &window_end]),
            expected: fp_before5,
            backup: backup_b.clone(),
        },
        Mark {
            name: "end",
            args: vec![],
            expected: fp5,
            backup: backup_b.clone(),
        },
        Mark {
            name: "immediate",
            args: with(&["--target", "immediate", "--backup", &backup_a]),
            expected: String::new(),
            backup: backup_a.clone(),
        },
    ];
    for mark in &marks {
        restore_and_check(&env, mark);
    }
    env.pgkeep_ok(&["verify"]);
}

on_each_version!(pitr);
