//! Timelines: a restored and promoted cluster starts timeline 2 and archives into the same
//! repository; recovery then reaches points on either timeline after the branch.

mod common;

use std::time::{Duration, Instant};

use common::{Env, Pg, Server};

fn rows(s: &Server) -> String {
    s.sql("SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM t")
}

/// Switches WAL and waits until the server reports the segment archived.
fn archive_now(s: &Server) {
    let segment = s.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment {
        assert!(Instant::now() < deadline, "{segment} was not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn restore(env: &Env, dir: &str, args: &[&str]) -> Server {
    let pgdata = env.path(dir);
    let mut all = vec![
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target-action",
        "promote",
    ];
    all.extend_from_slice(args);
    let out = env.pgkeep_ok(&all);
    let archiving = if args.contains(&"--archive") {
        "on"
    } else {
        "off"
    };
    assert!(out.contains(&format!("archiving: {archiving}")), "{out}");
    env.restored(&pgdata)
}

/// The timeline history files in the repository.
fn histories(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.repo.join("main/wal/history"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn timelines(pg: Pg) {
    let env = Env::new(&format!("timelines{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.sql("CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'base')");
    env.pgkeep_ok(&["backup"]);

    main.sql("INSERT INTO t VALUES (2, 'tl1 before branch')");
    let branch_rows = rows(&main);
    let branch_lsn = main.sql("SELECT pg_current_wal_lsn()");
    main.sql("INSERT INTO t VALUES (3, 'tl1 after branch')");
    archive_now(&main);

    // Branch: recover to the LSN and promote; asked to, the new timeline archives into
    // the repository.
    let tl2 = restore(
        &env,
        "tl2",
        &["--target-lsn", &branch_lsn, "--archive", "on"],
    );
    tl2.start();
    tl2.wait_promoted();
    assert_eq!(rows(&tl2), branch_rows);
    assert_eq!(
        tl2.sql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    tl2.sql("INSERT INTO t VALUES (10, 'tl2')");
    let tl2_rows = rows(&tl2);
    let tl2_lsn = tl2.sql("SELECT pg_current_wal_lsn()");
    tl2.sql("INSERT INTO t VALUES (11, 'tl2 later')");
    archive_now(&tl2);
    tl2.stop();

    // Timeline 1 goes on after the branch.
    main.sql("INSERT INTO t VALUES (4, 'tl1 later')");
    let tl1_rows = rows(&main);
    std::thread::sleep(Duration::from_millis(1100));
    let tl1_time = main.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(1100));
    main.sql("INSERT INTO t VALUES (5, 'tl1 too late')");
    archive_now(&main);

    let info: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap();
    let timelines: Vec<u64> = info["wal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(timelines, vec![1, 2]);

    // A point on timeline 2 (latest), from the backup taken on timeline 1. Restored
    // copies elsewhere do not archive by default: promoted, they start timeline 3 without
    // writing its history (or any WAL) into the repository.
    assert_eq!(histories(&env), ["00000002.history"]);
    let on_tl2 = restore(&env, "on-tl2", &["--target-lsn", &tl2_lsn]);
    on_tl2.start();
    on_tl2.wait_promoted();
    assert_eq!(rows(&on_tl2), tl2_rows, "recovery along timeline 2");
    on_tl2.sql("SELECT pg_switch_wal()");
    on_tl2.stop();

    // A point on timeline 1 after the branch.
    let on_tl1 = restore(
        &env,
        "on-tl1",
        &["--target-time", &tl1_time, "--target-timeline", "1"],
    );
    on_tl1.start();
    on_tl1.wait_promoted();
    assert_eq!(
        rows(&on_tl1),
        tl1_rows,
        "recovery along timeline 1 past the branch point"
    );
    on_tl1.stop();
    assert_eq!(
        histories(&env),
        ["00000002.history"],
        "a restored copy archived into the repository"
    );
    let info: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap();
    assert_eq!(info["wal"].as_array().unwrap().len(), 2, "{info}");

    env.pgkeep_ok(&["verify"]);
}

on_each_version!(timelines);

/// Points `env`'s cluster at `server` (pgdata and connection), keeping the rest.
fn point_cluster_at(env: &Env, from: &Server, to: &Server) {
    let config = std::fs::read_to_string(&env.config).unwrap();
    let config = config
        .replace(
            &format!("pgdata = \"{}\"", from.pgdata.display()),
            &format!("pgdata = \"{}\"", to.pgdata.display()),
        )
        .replace(
            &format!("host={} port={}", from.socket.display(), from.port),
            &format!("host={} port={}", to.socket.display(), to.port),
        );
    std::fs::write(&env.config, config).unwrap();
}

/// After a point-in-time restore in place to a point before the newest backup, the new
/// timeline's WAL lies below that backup's LSN: `expire` must keep it, per timeline, and
/// a restore to the end of WAL must replay it. `verify` names a gap in it.
fn expire_after_in_place_pitr(pg: Pg) {
    let env = Env::new(&format!("inplace{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{config}\n[retention]\nkeep_last = 2\nexpire_after_backup = false\n"),
    )
    .unwrap();
    env.backup();
    main.sql("CREATE TABLE t (id int)");
    let branch_lsn = main.sql("SELECT pg_current_wal_lsn()");
    for id in 1..=8 {
        main.sql(&format!("INSERT INTO t VALUES ({id})"));
        main.sql("SELECT pg_switch_wal()");
    }
    env.backup();
    main.stop();

    // The cluster is now the one restored to before the inserts, promoted on timeline 2.
    let pgdata = env.path("after-pitr");
    let current = env.restored(&pgdata);
    point_cluster_at(&env, &main, &current);
    env.pgkeep_ok(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target-lsn",
        &branch_lsn,
        "--target-action",
        "promote",
    ]);
    current.start();
    current.wait_promoted();
    env.backup();
    for id in 101..=103 {
        current.sql(&format!("INSERT INTO t VALUES ({id})"));
        current.sql("SELECT pg_switch_wal()");
    }
    current.wait_archived();
    env.pgkeep_ok(&["expire"]);
    env.pgkeep_ok(&["verify"]);

    let restored = env.restore_and_start("latest", &[]);
    assert_eq!(
        restored.sql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "101,102,103",
        "a restore to the end of WAL lost timeline 2's WAL"
    );
    restored.stop();

    // A segment missing on timeline 2, below every timeline-1 backup's start.
    let seg = pgkeep::format::wal::SegmentSize(16 << 20);
    let lsn: pgkeep::format::lsn::Lsn = current.sql("SELECT pg_current_wal_lsn()").parse().unwrap();
    let missing = seg.name(2, seg.segno(lsn) - 2);
    std::fs::remove_file(env.repo.join("main/wal/00000002").join(&missing)).unwrap();
    let err = env.pgkeep_err(&["verify"]);
    assert!(
        err.contains(&format!("WAL gap on timeline 2: {missing} .. {missing}")),
        "{err}"
    );
}

on_each_version!(expire_after_in_place_pitr);
