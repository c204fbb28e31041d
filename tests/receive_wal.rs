//! receive-wal: WAL streamed over a replication slot into the repository. The primary
//! archives nothing itself (`archive_command` only says yes), so every segment a restore
//! or verify finds came through the receiver.

mod common;

use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::{Env, Pg, Server, as_postgres};

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
    // ("potential" until the walsender has caught up.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while main.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgkeep'")
        != "sync"
    {
        assert!(
            Instant::now() < deadline,
            "receive-wal is not the synchronous standby"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let info = env.pgkeep_ok(&["info", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&info).unwrap();
    let status = &report["receivers"][0];
    assert_eq!(status["connected"], true, "{info}");
    assert_eq!(status["synchronous"], true, "{info}");
    run_kill_9(&main);
    receiver.wait_for("stored the streamed segment", "stored the streamed copy");
    let info = env.pgkeep_ok(&["info"]);
    assert!(info.contains("is not streaming since"), "{info}");

    // The primary comes back (crash recovery) and the receiver streams again. Then
    // both die at once: the receiver, started again while the server is gone, stores
    // the segment its last run left.
    let streams = receiver.log().matches("streaming timeline 1 from").count();
    main.start();
    receiver.wait_for_more("streamed again", "streaming timeline 1 from", streams);
    main.sql("INSERT INTO marker VALUES ('acknowledged too')");
    receiver.kill();
    run_kill_9(&main);
    let stored = std::fs::read_to_string(env.path("receive-wal.log"))
        .unwrap()
        .matches("stored the streamed copy")
        .count();
    let mut receiver = Receiver::start(&env);
    receiver.wait_for_more(
        "stored what its last run left",
        "stored the streamed copy",
        stored,
    );
    receiver.stop();

    env.pgkeep_ok(&["verify"]);
    let restored = env.restore_and_start("restored", &["--target-action", "promote"]);
    assert_eq!(
        restored.sql("SELECT string_agg(note, ',' ORDER BY note) FROM marker"),
        "acknowledged,acknowledged too"
    );
    assert_eq!(restored.sql(common::ACCOUNTS_FINGERPRINT), expected);
    assert!(restored.pgbench_consistent());
}

/// receive-wal streams from a standby that is then promoted: it follows onto the new
/// timeline, archives its history file and the old timeline's last segment as
/// `.partial`, and a restore reaches a target on the new timeline from WAL that only the
/// receiver stored.
fn follows_promotion(pg: Pg) {
    let env = Env::new(&format!("receivetl{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.sql("CREATE TABLE t (id int, note text); INSERT INTO t VALUES (1, 'before backup')");
    env.backup();
    let standby = env.standby_of(&main, "standby");
    // The receiver's config names the standby as the cluster (same system, same
    // repository).
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            main.pgdata.to_str().unwrap(),
            standby.pgdata.to_str().unwrap(),
        )
        .replace(
            &format!("port={}", main.port),
            &format!("port={}", standby.port),
        )
        .replace(
            main.socket.to_str().unwrap(),
            standby.socket.to_str().unwrap(),
        )
        + &format!(
            "\n[receive]\nwarn_slot_wal_mb = 1\ndirectory = \"{}\"\n",
            env.path("receive").display()
        );
    let standby_config = env.path("standby.toml");
    std::fs::write(&standby_config, config).unwrap();
    common::chown_postgres(&standby_config);
    let mut receiver = Receiver::start_with(&env, &standby_config);
    receiver.wait_for("started streaming", "streaming timeline 1");

    // Stopped while WAL piles up, the receiver's slot holds it on the server: the
    // receiver says so when it comes back, and so does info.
    receiver.stop();
    main.sql("INSERT INTO t SELECT 0, repeat('x', 100) FROM generate_series(1, 30000)");
    main.sql("DELETE FROM t WHERE id = 0");
    main.sql("INSERT INTO t VALUES (2, 'timeline 1')");
    replayed(&main, &standby);
    let mut receiver = Receiver::start_with(&env, &standby_config);
    receiver.wait_for("warned of the slot", "more than [receive] warn_slot_wal_mb");
    let info = common::run_ok(
        as_postgres(&env.pgkeep)
            .arg("--config")
            .arg(&standby_config)
            .arg("info"),
    );
    assert!(
        info.contains("more than [receive] warn_slot_wal_mb"),
        "{info}"
    );
    assert!(info.contains("slot pgkeep_main"), "{info}");
    common::run_ok(
        common::as_postgres(standby.pg.tool("pg_ctl"))
            .args(["-w", "-D"])
            .arg(&standby.pgdata)
            .arg("promote"),
    );
    standby.wait_promoted();
    standby.sql("INSERT INTO t VALUES (3, 'timeline 2')");
    standby.sql("SELECT pg_create_restore_point('on_timeline_2')");
    let at_point = rows(&standby);
    standby.sql("INSERT INTO t VALUES (4, 'after the restore point')");
    let switched = standby.sql("SELECT pg_walfile_name(pg_switch_wal())");
    assert!(switched.starts_with("00000002"), "{switched}");
    receiver.wait_for(
        "followed the promotion",
        "timeline 1 ended; timeline 2 starts",
    );
    receiver.wait_for(
        "archived timeline 2",
        &format!("archived streamed {switched}"),
    );
    receiver.stop();

    let wal = env.repo.join("main/wal");
    assert!(wal.join("history/00000002.history").exists());
    let partials: Vec<_> = std::fs::read_dir(wal.join("00000001"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert_eq!(partials.len(), 1, "{partials:?}");

    let restored = env.restore_and_start(
        "restored",
        &[
            "--target-name",
            "on_timeline_2",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(rows(&restored), at_point);
    assert_eq!(
        restored.sql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "3"
    );
}

/// Waits until `standby` has replayed all that `primary` wrote.
fn replayed(primary: &Server, standby: &Server) {
    let lsn = primary.sql("SELECT pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'")) != "t" {
        assert!(Instant::now() < deadline, "the standby did not replay");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rows(s: &Server) -> String {
    s.sql("SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM t")
}

/// pg_tde encrypts the WAL on disk (its key file is laid out by hand, as in
/// tests/pg_tde.rs: no pg_tde build here), but streaming sends it decrypted: receive-wal
/// refuses a repository that is not encrypted, and streams into an encrypted one.
fn refuses_decrypted_wal_in_plain_repository(pg: Pg) {
    for encrypted in [false, true] {
        let mut env = Env::new(&format!("receivetde{}{encrypted}", pg.major), pg.clone());
        if encrypted {
            env = env.encrypted();
        }
        let main = env.primary();
        let receive = format!(
            "\n[receive]\ndirectory = \"{}\"\n",
            env.path("receive").display()
        );
        env.write_config(&main, &receive);
        env.pgkeep_ok(&["init"]);
        std::fs::create_dir_all(main.pgdata.join("pg_tde")).unwrap();
        std::fs::write(main.pgdata.join("pg_tde/wal_keys"), [1u8; 64]).unwrap();
        common::chown_postgres(&main.pgdata.join("pg_tde"));
        let mut receiver = Receiver::start(&env);
        if encrypted {
            receiver.wait_for("started streaming", "streaming timeline 1");
            receiver.stop();
        } else {
            let deadline = Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = receiver.child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "receive-wal ran on:\n{}",
                    receiver.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(!status.success());
            let log = receiver.log();
            assert!(log.contains("encrypts its WAL with pg_tde"), "{log}");
            assert!(log.contains("not encrypted"), "{log}");
        }
    }
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
on_each_version!(follows_promotion);
on_each_version!(refuses_decrypted_wal_in_plain_repository);
