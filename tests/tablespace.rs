//! A tablespace outside the data directory, restored elsewhere with --tablespace-map.

mod common;

use common::{Env, Pg};

fn tablespace(pg: Pg) {
    let env = Env::new(&format!("tablespace{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    let original = env.path("ts-original");
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
    env.pgkeep_ok(&["check"]);

    // The original location is in use: restoring there must be refused, nothing written.
    let pgdata = env.path("restored");
    let err = env.pgkeep_err(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(
        err.contains("is not empty") && err.contains("--tablespace-map"),
        "{err}"
    );
    assert!(!pgdata.exists());

    let relocated = env.path("ts-relocated");
    let map = format!("{}={}", original.display(), relocated.display());
    env.pgkeep_ok(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--tablespace-map",
        &map,
    ]);
    let link = std::fs::read_link(pgdata.join("pg_tblspc").join(&oid)).unwrap();
    assert_eq!(link, relocated);

    let mut server = env.restored(&pgdata);
    server.options = "-c archive_mode=off".into();
    server.start();
    server.wait_promoted();
    assert_eq!(
        server.sql("SELECT count(*), sum(id) FROM far"),
        "50000|1250025000"
    );
    assert_eq!(
        server.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"),
        relocated.display().to_string()
    );
    server.amcheck();
    server.stop();
    server.checksums_ok();
}

on_each_version!(tablespace);
