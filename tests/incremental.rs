//! Incremental backups: after 1% churn they store a small fraction of a full backup and
//! still restore, on their own, to exactly the right data.

mod common;

use common::{Env, Pg, Server};

fn accounts(s: &Server) -> String {
    s.sql("SELECT md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) || '/' || (SELECT count(*) FROM marks) FROM pgbench_accounts")
}

fn info(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap()
}

fn incremental(pg: Pg) {
    let env = Env::new(&format!("incremental{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(50);
    main.sql("CREATE TABLE marks (id serial PRIMARY KEY, name text)");
    main.sql("VACUUM ANALYZE");
    main.sql("CHECKPOINT");
    let full = env.backup();

    // 1% of the accounts change: a contiguous range, as a hot spot of a real workload.
    main.sql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 50000");
    let out = env.pgkeep_ok(&["backup"]);
    assert!(out.contains(&format!("(incremental from {full})")), "{out}");
    let incr = out.split_whitespace().nth(1).unwrap().to_string();

    let report = info(&env);
    let full_info = &report["backups"][0];
    let incr_info = &report["backups"][1];
    assert_eq!(incr_info["parent"], full.as_str());
    assert_eq!(full_info["parent"], serde_json::Value::Null);
    let (full_stored, incr_stored) = (
        full_info["stored_size"].as_u64().unwrap(),
        incr_info["stored_size"].as_u64().unwrap(),
    );
    assert!(
        incr_stored * 20 < full_stored,
        "incremental stored {incr_stored} bytes, not under 5% of the full's {full_stored}"
    );
    assert!(
        incr_info["size"].as_u64().unwrap() >= full_info["size"].as_u64().unwrap(),
        "every backup lists the whole cluster"
    );
    eprintln!("full stored {full_stored} bytes, incremental {incr_stored}");

    // A --full backup reads and hashes everything, and stores nothing new.
    let out = env.pgkeep_ok(&["backup", "--full"]);
    let size = out
        .split(": ")
        .nth(1)
        .unwrap()
        .split(" in ")
        .next()
        .unwrap();
    assert!(
        out.contains("(full)") && out.contains(&format!("read {size},")),
        "{out}"
    );
    let forced = &info(&env)["backups"][2];
    assert!(
        forced["stored_size"].as_u64().unwrap() * 100 < full_stored,
        "{out}"
    );

    // PITR to a mark after the incremental picks it and gives exactly the data.
    main.sql("INSERT INTO marks (name) VALUES ('after incremental')");
    let expected = accounts(&main);
    let lsn = main.sql("SELECT pg_current_wal_lsn()");
    main.sql("UPDATE pgbench_accounts SET abalance = 0 WHERE aid <= 10");
    env.pgkeep_ok(&["check"]);

    // Expire the parent full (keep the newest and the pinned incremental) and collect
    // its data: the incremental must still restore on its own.
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{config}\n[retention]\nkeep_last = 1\n"),
    )
    .unwrap();
    env.pgkeep_ok(&["pin", &incr]);
    let out = env.pgkeep_ok(&["expire"]);
    assert!(
        out.contains(&format!("expire  {full}")) && out.contains("data: removed"),
        "{out}"
    );
    let left: Vec<String> = info(&env)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap().to_string())
        .collect();
    assert!(!left.contains(&full) && left.contains(&incr), "{left:?}");
    env.pgkeep_ok(&["verify"]);

    let pgdata = env.path("restored");
    let out = env.pgkeep_ok(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--backup",
        &incr,
        "--target-lsn",
        &lsn,
        "--target-action",
        "promote",
    ]);
    assert!(out.contains(&incr), "{out}");
    let mut restored = env.restored(&pgdata);
    restored.options = "-c archive_mode=off".into();
    restored.start();
    restored.wait_promoted();
    assert_eq!(accounts(&restored), expected);
    restored.amcheck();
    restored.stop();
    restored.checksums_ok();
    env.pgkeep_ok(&["verify"]);
}

on_each_version!(incremental);

/// Visibility map bits are cleared without changing the map page's LSN: an incremental
/// must never take the map from its parent on page LSNs, or a restore would mark pages
/// with dead rows all-visible.
fn visibility_map_changes(pg: Pg) {
    let env = Env::new(&format!("vm{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.sql("CREATE EXTENSION pg_visibility");
    main.sql("CREATE TABLE t (id int, v text) WITH (autovacuum_enabled = off)");
    main.sql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100000) g");
    main.sql("VACUUM t");
    main.sql("CHECKPOINT");
    std::thread::sleep(std::time::Duration::from_millis(2100)); // mtimes older than the parent
    env.backup();
    // Clears the all-visible bit of one heap page; the map page keeps its old LSN.
    main.sql("UPDATE t SET v = 'y' WHERE id = 50000");
    let out = env.pgkeep_ok(&["backup"]);
    assert!(out.contains("incremental from"), "{out}");
    let pgdata = env.path("restored");
    env.pgkeep_ok(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target",
        "immediate",
        "--target-action",
        "promote",
    ]);
    let mut restored = env.restored(&pgdata);
    restored.options = "-c archive_mode=off".into();
    restored.start();
    restored.wait_promoted();
    assert_eq!(
        restored.sql("SELECT count(*) FROM pg_check_visible('t')"),
        "0",
        "a page is all-visible with a dead row"
    );
    assert_eq!(restored.sql("SELECT count(*) FROM t WHERE v = 'y'"), "1");
}

on_each_version!(visibility_map_changes);
