//! A tablespace outside the data directory, restored elsewhere with --tablespace-map,
//! from a backup of the data directory or, on 16 and 17, from a `BASE_BACKUP` stream
//! (its tablespace arrives as an archive of its own; on 17 the last backup has the
//! server send only what changed, tablespace files included); and every value pgkeep
//! writes for recovery (tablespace paths, a restore point name, the paths in
//! `restore_command`) read back by PostgreSQL exactly as it was.

mod common;

use std::path::PathBuf;

use common::{Env, Pg};

/// PostgreSQL escapes these in `tablespace_map` and `postgresql.auto.conf`; a restore
/// point name may hold any of them.
const AWKWARD_NAME: &str = "pre\\fix it's";

/// A copy of the pgkeep binary and its config in a directory whose name needs quoting
/// in the shell, in a config file and in `restore_command`.
fn awkward_copy(env: &Env) -> (PathBuf, PathBuf) {
    let dir = env.path("it's a %dir");
    std::fs::create_dir_all(&dir).unwrap();
    let (binary, config) = (dir.join("pgkeep"), dir.join("pgkeep config.toml"));
    std::fs::copy(&env.pgkeep, &binary).unwrap();
    std::fs::copy(&env.config, &config).unwrap();
    common::chown_postgres(&dir);
    (binary, config)
}

fn tablespace(pg: Pg) {
    scenario(pg, "", false);
}

#[test]
fn remote_pg16() {
    scenario(Pg::new(16), "backup_source = \"replication\"\n", false);
}

#[test]
fn remote_pg17() {
    scenario(Pg::new(17), "backup_source = \"replication\"\n", true);
}

/// The scenario with `cluster` as extra lines of the cluster's config; with `changes`,
/// WAL is summarized and a second backup taken after a change, which the server sends
/// as changes only.
fn scenario(pg: Pg, cluster: &str, changes: bool) {
    let name = format!("tablespace{}{}", pg.major, cluster.len());
    let mut env = Env::new(&name, pg);
    let main = env.primary();
    env.write_config(&main, cluster);
    env.pgkeep_ok(&["init"]);
    if changes {
        main.sql("ALTER SYSTEM SET summarize_wal = on");
        main.sql("SELECT pg_reload_conf()");
    }
    let original = env.path("ts dir\\original");
    std::fs::create_dir(&original).unwrap();
    common::chown_postgres(&original);
    main.sql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        original.display()
    ));
    main.sql("CREATE TABLE far (id int, pad text) TABLESPACE ts");
    main.sql("INSERT INTO far SELECT g, md5(g::text) FROM generate_series(1, 50000) g");
    main.sql("CREATE INDEX far_id ON far (id) TABLESPACE ts");
    let oid = main.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
    env.pgkeep_ok(&["backup"]);
    if changes {
        main.sql("UPDATE far SET pad = 'changed' WHERE id % 1000 = 0");
        let (printed, log) = env.pgkeep_logged(&["-vv", "backup"]);
        assert!(
            printed.contains("taken unread from the parent"),
            "{printed}"
        );
        // The tablespace's files too (found by their paths in the uploaded manifest).
        let sent_changes = format!("pg_tblspc/{oid}/");
        assert!(
            log.lines()
                .any(|l| l.contains(&sent_changes) && l.contains("/INCREMENTAL.")),
            "{log}"
        );
    }
    main.sql(&format!(
        "SELECT pg_create_restore_point('{}')",
        AWKWARD_NAME.replace('\'', "''")
    ));
    main.sql("INSERT INTO far VALUES (0, 'after the restore point')");
    env.pgkeep_ok(&["check"]);

    // The original location is in use: restoring there must be refused, nothing written.
    let pgdata = env.path("restored");
    let err = env.pgkeep_err(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(
        err.contains("is not empty") && err.contains("--tablespace-map"),
        "{err}"
    );
    assert!(!pgdata.exists());

    // Restore through a binary and config whose paths need quoting: restore_command
    // must still run them.
    (env.pgkeep, env.config) = awkward_copy(&env);
    let relocated = env.path("ts new\\place");
    let map = format!("{}={}", original.display(), relocated.display());
    env.pgkeep_ok(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--tablespace-map",
        &map,
        "--target-name",
        AWKWARD_NAME,
        "--target-action",
        "promote",
    ]);
    assert_eq!(
        pgdata.join("backup_manifest").exists(),
        !cluster.is_empty(),
        "a streamed backup holds the server's manifest, a local one does not"
    );
    let link = std::fs::read_link(pgdata.join("pg_tblspc").join(&oid)).unwrap();
    assert_eq!(link, relocated);

    let mut server = env.restored(&pgdata);
    server.options = "-c archive_mode=off".into();
    server.start();
    server.wait_promoted();
    assert_eq!(
        server.sql("SELECT count(*), sum(id) FROM far"),
        "50000|1250025000",
        "recovery must stop at the restore point, before the last insert"
    );
    assert_eq!(
        server.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"),
        relocated.display().to_string()
    );
    assert_eq!(
        server.sql("SELECT count(*) FROM far WHERE pad = 'changed'"),
        if changes { "50" } else { "0" }
    );
    server.amcheck();
    server.stop();
    server.checksums_ok();
}

on_each_version!(tablespace);
