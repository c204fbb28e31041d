//! `check` and `init`: each misconfiguration is reported with its fix.

mod common;

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

    // archive_mode off (needs a restart).
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
    main.stop();
    main.start();
    assert!(env.pgkeep_ok(&["check"]).starts_with("ok:"));

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

on_each_version!(check_and_init);
