//! `check` and `init`: each misconfiguration is reported with its fix.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Env, Pg};

fn check_and_init(pg: Pg) {
    let env = Env::new(&format!("check{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    assert!(env.pgkeep_ok(&["init"]).contains("already registered"));
    assert!(env.pgkeep_ok(&["check"]).starts_with("ok:"));

    // archive_command that does not call pgkeep.
    main.sql("ALTER SYSTEM SET archive_command = 'true'");
    main.sql("SELECT pg_reload_conf()");
    let err = env.pgkeep_err(&["check"]);
    assert!(
        err.contains("archive_command is 'true'; set archive_command = '")
            && err.contains("archive-push %p"),
        "{err}"
    );

    // %f instead of %p: named at once, not after waiting for a segment that never comes.
    main.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        env.archive_command().replace("%p", "%f")
    ));
    main.sql("SELECT pg_reload_conf()");
    let started = std::time::Instant::now();
    let err = env.pgkeep_err(&["check"]);
    assert!(
        err.contains("passes %f to archive-push, which needs the path of the WAL file (%p)"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // An archive_command that fails: reported as soon as the archiver says so.
    main.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        env.archive_command()
            .replace("--config ", "--config /nonexistent")
    ));
    main.sql("SELECT pg_reload_conf()");
    let started = std::time::Instant::now();
    let err = env.pgkeep_err(&["check"]);
    assert!(err.contains("archive_command failed for"), "{err}");
    eprintln!(
        "failing archive_command reported after {:?}: {err}",
        started.elapsed()
    );

    // archive_mode off (needs a restart): set, but not yet in effect.
    main.sql("ALTER SYSTEM RESET archive_command");
    main.sql("ALTER SYSTEM SET archive_mode = off");
    main.stop();
    main.start();
    let err = env.pgkeep_err(&["check"]);
    assert!(
        err.contains("archive_mode is off; set archive_mode = on"),
        "{err}"
    );
    main.sql("ALTER SYSTEM RESET archive_mode");
    main.sql("SELECT pg_reload_conf()");
    let err = env.pgkeep_err(&["check"]);
    assert!(
        err.contains("archive_mode is off (it is set in the config file, but takes effect only when PostgreSQL restarts)"),
        "{err}"
    );
    main.stop();
    main.start();
    assert!(env.pgkeep_ok(&["check"]).starts_with("ok:"));

    // pg_control as pg_controldata reads it.
    main.sql("CHECKPOINT");
    let bytes = std::fs::read(main.pgdata.join("global/pg_control")).unwrap();
    let control = pgkeep::format::control::parse(&bytes).unwrap();
    let text = common::run_ok(
        common::as_postgres(main.pg.tool("pg_controldata"))
            .arg("-D")
            .arg(&main.pgdata),
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(
        control.system_identifier.to_string(),
        field("Database system identifier:")
    );
    assert_eq!(
        control.catalog_version.to_string(),
        field("Catalog version number:")
    );
    assert_eq!(
        control.checkpoint.to_string(),
        field("Latest checkpoint location:")
    );
    assert_eq!(
        control.timeline.to_string(),
        field("Latest checkpoint's TimeLineID:")
    );
    assert_eq!(field("Database cluster state:"), "in production");
    assert_eq!(control.state, pgkeep::format::control::DB_IN_PRODUCTION);

    // pgdata naming a copy of the cluster (same system) is refused: nothing published.
    let copy = env.path("copy");
    common::run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&main.pgdata)
            .arg(&copy),
    );
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        config.replace(
            &format!("pgdata = \"{}\"", main.pgdata.display()),
            &format!("pgdata = \"{}\"", copy.display()),
        ),
    )
    .unwrap();
    let err = env.pgkeep_err(&["backup"]);
    assert!(err.contains("runs data directory"), "{err}");
    assert!(!env.repo.join("main/backups").exists(), "nothing published");
    std::fs::write(&env.config, &config).unwrap();

    // A different server under the same cluster name is refused, and nothing changes.
    let other_env = Env::new(&format!("check-other{}", env.pg.major), env.pg.clone());
    let other = other_env.primary();
    let config = std::fs::read_to_string(&env.config).unwrap();
    let pointed = config
        .replace(
            &format!("port={}", main.port),
            &format!("port={}", other.port),
        )
        .replace(
            &main.socket.display().to_string(),
            &other.socket.display().to_string(),
        )
        .replace(
            &main.pgdata.display().to_string(),
            &other.pgdata.display().to_string(),
        );
    std::fs::write(&env.config, pointed).unwrap();
    let err = env.pgkeep_err(&["init"]);
    assert!(
        err.contains("belongs to database system") && err.contains("use another cluster name"),
        "{err}"
    );
    let err = env.pgkeep_err(&["backup"]);
    assert!(err.contains("but repository cluster 'main' is"), "{err}");

    // Two clusters: --cluster is required and selects.
    std::fs::write(
        &env.config,
        format!("{config}\n[cluster.second]\npgdata = \"/nonexistent\"\n"),
    )
    .unwrap();
    let err = env.pgkeep_err(&["info"]);
    assert!(
        err.contains("defines several clusters (main, second); choose one with --cluster"),
        "{err}"
    );
    env.pgkeep_ok(&["--cluster", "main", "info"]);
    let err = env.pgkeep_err(&["--cluster", "third", "info"]);
    assert!(err.contains("cluster 'third' is not in"), "{err}");
}

/// The problems a WAL switch does not show: a slot holding WAL, an archiver that has
/// been failing (and is fine again once a switch shows it works), a repository
/// PostgreSQL's user cannot write.
fn hazards(pg: Pg) {
    let env = Env::new(&format!("hazards{}", pg.major), pg);
    let main = env.primary();
    env.write_config(&main, "\n[receive]\nwarn_slot_wal_mb = 1\n");
    env.pgkeep_ok(&["init"]);

    main.sql("SELECT pg_create_physical_replication_slot('stale', true)");
    main.sql("CREATE TABLE t AS SELECT generate_series(1, 100000) g");
    let (out, err) = env.pgkeep_logged(&["check"]);
    assert!(out.starts_with("ok:"), "{out}");
    assert!(
        err.contains("replication slot stale holds")
            && err.contains("SELECT pg_drop_replication_slot('stale')"),
        "{err}"
    );
    main.sql("SELECT pg_drop_replication_slot('stale')");

    main.sql("ALTER SYSTEM SET archive_command = '/bin/false'");
    main.sql("SELECT pg_reload_conf()");
    main.sql("CREATE TABLE after_failure ()");
    main.sql("SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while main.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "the archiver never failed");
        std::thread::sleep(Duration::from_millis(100));
    }
    main.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        env.archive_command()
            .replace("--config ", "--config /nonexistent")
    ));
    main.sql("SELECT pg_reload_conf()");
    let err = env.pgkeep_err(&["check"]);
    assert!(
        err.contains("archive_command is failing: its last attempt, for 0000000")
            && err.contains("WAL files wait in pg_wal to be archived"),
        "{err}"
    );
    main.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        env.archive_command()
    ));
    main.sql("SELECT pg_reload_conf()");
    assert!(env.pgkeep_ok(&["check"]).starts_with("ok:"));

    if common::is_root() {
        let wal = env.repo.join("main/wal");
        std::os::unix::fs::chown(&wal, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = env.pgkeep_err(&["check"]);
        assert!(
            err.contains(
                "belongs to root with mode 755, so PostgreSQL's user postgres cannot write there"
            ),
            "{err}"
        );
        common::chown_postgres(&wal);
        assert!(env.pgkeep_ok(&["check"]).starts_with("ok:"));
    }
}

on_each_version!(check_and_init);
on_each_version!(hazards);
