//! Incremental backups: after 1% churn they store a small fraction of a full backup and
//! still restore, on their own, to exactly the right data.

mod common;

use common::{Env, Pg, Server, as_postgres, label_of};
use pgkeep::engine::physical::backup::CHUNK_SIZE as CHUNK;
use pgkeep::format::lsn::Lsn;

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
    let incr = label_of(&out);

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

    let restored = env.restore_and_start(
        "restored",
        &[
            "--backup",
            &incr,
            "--target-lsn",
            &lsn,
            "--target-action",
            "promote",
        ],
    );
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
    let restored = env.restore_and_start(
        "restored",
        &["--target", "immediate", "--target-action", "promote"],
    );
    assert_eq!(
        restored.sql("SELECT count(*) FROM pg_check_visible('t')"),
        "0",
        "a page is all-visible with a dead row"
    );
    assert_eq!(restored.sql("SELECT count(*) FROM t WHERE v = 'y'"), "1");
}

on_each_version!(visibility_map_changes);

/// The manifest of `label`, as JSON.
fn manifest(env: &Env, label: &str) -> serde_json::Value {
    let bytes = std::fs::read(env.repo.join(format!("main/backups/{label}.manifest"))).unwrap();
    serde_json::from_slice(&pgkeep::repo::object::decode(&bytes).unwrap()).unwrap()
}

fn chunks_of(m: &serde_json::Value, path: &str) -> serde_json::Value {
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap()["chunks"]
        .clone()
}

/// Takes a `--full` backup and checks that `incremental` holds the same chunks for
/// `files`: what it took unread is what a full read finds.
fn assert_chunks_match_full(env: &Env, incremental: &str, files: &[String], size: f64) {
    let full = env.pgkeep_ok(&["backup", "--full"]);
    assert!(bytes_read(&full) > size, "{full}");
    let full_label = label_of(&full);
    for file in files {
        assert_eq!(
            chunks_of(&manifest(env, incremental), file),
            chunks_of(&manifest(env, &full_label), file),
            "chunks of {file} taken unread differ from what a full read finds"
        );
    }
}

/// "read 3.4 MiB" in a backup's summary line, in bytes.
fn bytes_read(summary: &str) -> f64 {
    let rest = summary.split(", read ").nth(1).unwrap();
    let mut words = rest.split_whitespace();
    let n: f64 = words.next().unwrap().parse().unwrap();
    let unit = words.next().unwrap().trim_end_matches(',');
    n * match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        other => panic!("unit {other}"),
    }
}

/// The blocks changed since the parent, from PostgreSQL 17+'s WAL summaries or from the
/// WAL itself: an incremental reads only the chunks holding changed blocks, and what it
/// takes unread is exactly what a full read finds, through updates, a truncation by
/// VACUUM and growth after it.
fn only_changed_chunks_read(pg: Pg, summaries: bool) {
    let env = Env::new(&format!("changed{}{summaries}", pg.major), pg);
    let main = env.primary();
    if summaries {
        main.sql("ALTER SYSTEM SET summarize_wal = on");
        main.sql("SELECT pg_reload_conf()");
    }
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(5);
    main.sql("CREATE TABLE marks (id serial PRIMARY KEY, name text)");
    main.sql("CREATE TABLE shrink AS SELECT g AS id, repeat('x', 200) AS t FROM generate_series(1, 20000) g");
    main.sql("VACUUM ANALYZE");
    let parent = env.backup();
    let files: Vec<String> = ["pgbench_accounts", "shrink"]
        .iter()
        .map(|t| main.sql(&format!("SELECT pg_relation_filepath('{t}')")))
        .collect();
    let size: f64 = main
        .sql("SELECT pg_relation_size('pgbench_accounts')")
        .parse()
        .unwrap();

    main.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 1000");
    main.sql("DELETE FROM shrink WHERE id > 12000");
    main.sql("VACUUM shrink"); // truncates the empty tail
    main.sql("INSERT INTO shrink SELECT g, repeat('y', 300) FROM generate_series(1, 6000) g");
    main.sql("INSERT INTO marks (name) VALUES ('after')");
    main.sql("CHECKPOINT");
    let out = env.pgkeep_ok(&["backup"]);
    assert!(out.contains("incremental from"), "{out}");
    let read = bytes_read(&out);
    assert!(
        read < size / 8.0,
        "read {read} bytes, the accounts table alone is {size}: {out}"
    );
    let incremental = label_of(&out);
    // Page LSNs agree: every chunk the incremental shares with its parent holds only
    // pages last changed before the parent started.
    let parent_start: Lsn = manifest(&env, &parent)["start_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (ours, theirs) = (manifest(&env, &incremental), manifest(&env, &parent));
    for file in &files {
        let bytes = std::fs::read(main.pgdata.join(file)).unwrap();
        let shared = chunks_of(&ours, file)
            .as_array()
            .unwrap()
            .iter()
            .zip(chunks_of(&theirs, file).as_array().unwrap())
            .enumerate()
            .filter(|(_, (a, b))| a == b)
            .map(|(i, _)| i)
            .collect::<Vec<_>>();
        assert!(!shared.is_empty(), "{file} shares no chunk with its parent");
        for i in shared {
            for page in bytes[i * CHUNK..].chunks(8192).take(CHUNK / 8192) {
                let lsn = Lsn(
                    (u32::from_le_bytes(page[0..4].try_into().unwrap()) as u64) << 32
                        | u32::from_le_bytes(page[4..8].try_into().unwrap()) as u64,
                );
                assert!(lsn < parent_start, "{file} chunk {i}: a page of {lsn}");
            }
        }
    }

    assert_chunks_match_full(&env, &incremental, &files, size);

    let contents = |s: &Server| {
        accounts(s)
            + &s.sql("SELECT md5(string_agg(id::text || t, ',' ORDER BY id, t)) FROM shrink")
    };
    let expected = contents(&main);
    let restored = env.restore_immediate(&incremental);
    assert_eq!(contents(&restored), expected);
    restored.amcheck();
}

mod only_changed_chunks_read {
    use super::*;

    #[test]
    fn from_wal_pg15() {
        only_changed_chunks_read(Pg::new(15), false);
    }

    #[test]
    fn from_wal_pg18() {
        only_changed_chunks_read(Pg::new(18), false);
    }

    #[test]
    fn from_summaries_pg18() {
        only_changed_chunks_read(Pg::new(18), true);
    }
}

/// A database dropped and created again with the same OID by FILE_COPY (no per-page
/// WAL; the copied pages keep the template's old LSNs) between two backups must never
/// be taken from the parent. On 17+ the WAL summaries mark the whole database changed.
fn recreated_database(pg: Pg) {
    let summaries = pg.major >= 17;
    let env = Env::new(&format!("recreated{}", pg.major), pg);
    let main = env.primary();
    if summaries {
        main.sql("ALTER SYSTEM SET summarize_wal = on");
        main.sql("SELECT pg_reload_conf()");
    }
    env.pgkeep_ok(&["init"]);
    main.sql("CREATE DATABASE template_b");
    main.sql_db(
        "template_b",
        "CREATE TABLE t AS SELECT 'new' AS v, g FROM generate_series(1, 5000) g",
    );
    main.sql("CREATE DATABASE d OID = 50000");
    main.sql_db(
        "d",
        "CREATE TABLE t AS SELECT 'old' AS v, g FROM generate_series(1, 3000) g",
    );
    main.sql("CHECKPOINT");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    env.backup();
    main.sql("DROP DATABASE d");
    main.sql("CREATE DATABASE d OID = 50000 TEMPLATE template_b STRATEGY FILE_COPY");
    let out = env.pgkeep_ok(&["backup"]);
    assert!(out.contains("incremental from"), "{out}");
    let incremental = label_of(&out);
    let restored = env.restore_immediate(&incremental);
    assert_eq!(
        restored.sql_db("d", "SELECT v || ':' || count(*) FROM t GROUP BY v"),
        "new:5000"
    );
    restored.amcheck();
}

on_each_version!(recreated_database);

/// `pg_checksums --enable` rewrites every page offline and writes no WAL: a backup from
/// before it must not lend its pages, or the restored cluster fails its checksums.
fn checksums_enabled_since_parent(pg: Pg) {
    let env = Env::new(&format!("checksums{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(2);
    main.sql("CREATE TABLE marks (id serial PRIMARY KEY, name text)");
    let pg_checksums = |action: &str| {
        main.stop();
        let out = as_postgres(main.pg.tool("pg_checksums"))
            .args([action, "-D"])
            .arg(&main.pgdata)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        main.start();
    };
    pg_checksums("--disable");
    env.backup();
    pg_checksums("--enable");
    main.sql("UPDATE pgbench_accounts SET abalance = 7 WHERE aid <= 10");
    main.sql("CHECKPOINT");
    let out = env.pgkeep_ok(&["backup"]);
    assert!(!out.contains("incremental from"), "{out}");
    let label = label_of(&out);

    let expected = accounts(&main);
    let restored = env.restore_immediate(&label);
    assert_eq!(accounts(&restored), expected);
    restored.amcheck();
}

on_each_version!(checksums_enabled_since_parent);

/// The parent on timeline 1, the cluster restored to a point on it and promoted to
/// timeline 2: the changed blocks come from timeline 1's WAL up to the branch and
/// timeline 2's after it, never from timeline 1's WAL past the branch.
fn across_a_timeline_switch(pg: Pg) {
    let env = Env::new(&format!("acrosstl{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(5);
    main.sql("CREATE TABLE marks (id serial PRIMARY KEY, name text)");
    let parent = env.backup();
    let file = main.sql("SELECT pg_relation_filepath('pgbench_accounts')");
    let size: f64 = main
        .sql("SELECT pg_relation_size('pgbench_accounts')")
        .parse()
        .unwrap();

    main.sql("UPDATE pgbench_accounts SET abalance = 1 WHERE aid <= 500");
    let branch = main.sql("SELECT pg_current_wal_lsn()");
    // After the branch on timeline 1: must not count, and must not be restored.
    main.sql("UPDATE pgbench_accounts SET abalance = 99 WHERE aid > 499000");
    env.pgkeep_ok(&["check"]);
    main.stop();

    let pgdata = env.path("tl2");
    env.pgkeep_ok(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target-lsn",
        &branch,
        "--target-action",
        "promote",
        "--archive",
        "on",
    ]);
    let tl2 = env.restored(&pgdata);
    tl2.start();
    tl2.wait_promoted();
    env.write_config(&tl2, "");
    tl2.sql("UPDATE pgbench_accounts SET abalance = 2 WHERE aid BETWEEN 250000 AND 250500");
    tl2.sql("INSERT INTO marks (name) VALUES ('tl2')");
    tl2.sql("CHECKPOINT");

    let out = env.pgkeep_ok(&["backup"]);
    assert!(out.contains(&format!("incremental from {parent}")), "{out}");
    assert!(
        bytes_read(&out) < size / 8.0,
        "the WAL across the switch should show what changed: {out}"
    );
    let incremental = label_of(&out);
    assert_chunks_match_full(&env, &incremental, &[file], size);

    let expected = accounts(&tl2);
    let restored = env.restore_immediate(&incremental);
    assert_eq!(accounts(&restored), expected);
    restored.amcheck();
}

on_each_version!(across_a_timeline_switch);
