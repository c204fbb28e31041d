//! Remote backups: the server runs as another OS user with its data directory closed
//! (0700), and pgkeep's config names no `pgdata`, so every byte comes over the
//! replication protocol. As on a backup host, the WAL comes from receive-wal (the
//! server archives nothing). Restores reach every
//! kind of target exactly, a second backup stores only what changed (on 17+ the server
//! sends only what changed: `BASE_BACKUP (INCREMENTAL)`, patched onto the parent's
//! chunks), and PostgreSQL's own pg_verifybackup accepts a restored full backup against
//! the server's manifest.

mod common;

use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::targets;
use common::{Env, Pg, as_postgres};

fn stored_size(env: &Env, label: &str) -> u64 {
    let info: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap();
    info["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == label)
        .and_then(|b| b["stored_size"].as_u64())
        .unwrap()
}

/// A backup killed while the server streams publishes nothing, and the server lets the
/// next one run (its walsender ended with the connection).
fn killed_mid_stream(env: &Env) {
    let log = env.path("killed-backup.log");
    let mut backup = as_postgres(&env.pgkeep)
        .arg("--config")
        .arg(&env.config)
        .args(["-v", "backup"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("started at")
    {
        assert!(Instant::now() < deadline, "the backup did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    backup.kill().unwrap();
    backup.wait().unwrap();
    assert!(env.labels().is_empty(), "a killed backup was published");
}

/// Without the WAL summaries since the parent the server refuses to send only what
/// changed; the backup then takes the whole stream.
fn refused_incremental(env: &Env, main: &common::Server) {
    // The summarizer ends a summary at each checkpoint's redo record.
    main.sql("CHECKPOINT");
    let lsn = main.sql("SELECT redo_lsn FROM pg_control_checkpoint()");
    let caught_up = format!("SELECT summarized_lsn >= '{lsn}' FROM pg_get_wal_summarizer_state()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while main.sql(&caught_up) != "t" {
        assert!(
            Instant::now() < deadline,
            "WAL summarization did not reach {lsn}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let summaries = main.pgdata.join("pg_wal/summaries");
    for entry in std::fs::read_dir(&summaries).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let (stdout, stderr) = env.pgkeep_logged(&["-v", "backup"]);
    assert!(
        stderr.contains("WAL summaries are required") && stderr.contains("every file instead"),
        "{stderr}"
    );
    assert!(!stdout.contains("taken unread from the parent"), "{stdout}");
}

fn remote_backup(pg: Pg) {
    let env = Env::new(&format!("remote{}", pg.major), pg);
    let mut main = env.primary();
    main.pgbench_init(10);
    main.sql("CREATE TABLE marks (id int, name text)");
    main.sql("ALTER SYSTEM SET archive_command = 'true'");
    if env.pg.major >= 17 {
        main.sql("ALTER SYSTEM SET summarize_wal = on");
    }
    env.hand_over(&mut main, "pgsource");
    let listed = as_postgres("ls").arg(&main.pgdata).output().unwrap();
    assert!(
        !listed.status.success() || !common::is_root(),
        "pgkeep's user can read the data directory"
    );
    let receive = format!(
        "\n[receive]\ndirectory = \"{}\"\n",
        env.path("receive").display()
    );
    env.write_config(&main, &receive);
    // No pgdata: the cluster is backed up over replication.
    let config = std::fs::read_to_string(&env.config).unwrap();
    let config = config.replace(&format!("pgdata = \"{}\"\n", main.pgdata.display()), "");
    assert!(!config.contains("pgdata"), "{config}");
    std::fs::write(&env.config, config).unwrap();

    env.pgkeep_ok(&["init"]);
    let mut receiver = Receiver::start(&env);
    receiver.wait_for("started streaming", "streaming timeline 1");
    // check knows the WAL comes from receive-wal, not from archive_command.
    let (_, stderr) = env.pgkeep_logged(&["check"]);
    assert!(stderr.contains("only through receive-wal"), "{stderr}");
    killed_mid_stream(&env);
    let load = main.pgbench_load(2);
    let first = env.backup();
    load.stop(&main);
    // After a small change the next backup stores little, though the server sends all.
    let quiet = env.backup();
    main.sql("CREATE TABLE filler AS SELECT generate_series(1, 10000) AS n");
    let load = main.pgbench_load(1);
    std::thread::sleep(Duration::from_millis(500));
    load.stop(&main);
    let printed = env.pgkeep_ok(&["backup"]);
    let second = common::label_of(&printed);
    // On 17+ the server sends only the blocks changed since the parent (WAL summaries).
    assert_eq!(
        printed.contains("taken unread from the parent"),
        env.pg.major >= 17,
        "{printed}"
    );
    let at_second = targets::fingerprint(&main);
    assert!(stored_size(&env, &quiet) > 0);
    let (full, incremental) = (stored_size(&env, &first), stored_size(&env, &second));
    assert!(
        incremental * 10 < full,
        "the second backup stored {incremental} bytes, the first {full}"
    );
    if env.pg.major >= 17 {
        refused_incremental(&env, &main);
    }

    let targets = targets::record(&main);
    main.sql("SELECT pg_switch_wal()");
    receiver.stop();
    let stderr = env.pgkeep_err(&["check"]);
    assert!(stderr.contains("is not in use"), "{stderr}");
    env.pgkeep_ok(&["verify"]);
    targets::restore_each(&env, &targets);

    // The backup patched from the parent's chunks holds exactly what the server did.
    let restored = env.restore_immediate_into("restored-second", &second);
    assert_eq!(targets::fingerprint(&restored), at_second);
    restored.stop();

    // The server's manifest of a full backup, pgkeep's of one patched from changes.
    let verify = |copy: &std::path::Path| {
        as_postgres(env.pg.tool("pg_verifybackup"))
            .arg("-n")
            .arg(copy)
            .output()
            .unwrap()
    };
    let copy = env.path("verified");
    for label in [&first, &second] {
        let _ = std::fs::remove_dir_all(&copy);
        let copy_arg = copy.to_str().unwrap();
        let args = ["restore", "--backup", label, "--pgdata", copy_arg];
        env.pgkeep_ok(&[&args[..], &["--target", "immediate"]].concat());
        let out = verify(&copy);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // pg_verifybackup does catch a change: the oracle is not blind.
    std::fs::write(copy.join("PG_VERSION"), "0\n").unwrap();
    assert!(
        !verify(&copy).status.success(),
        "pg_verifybackup missed a change"
    );
}

on_each_version!(remote_backup);
