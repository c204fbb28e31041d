//! Page checksum validation during backup, with pg_checksums as the oracle.

mod common;

use std::os::unix::fs::FileExt;

use common::{Env, Pg, as_postgres};

fn page_checksums(pg: Pg) {
    let env = Env::new(&format!("checksums{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.sql("CREATE TABLE victim AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g");
    main.sql("CHECKPOINT");

    // A clean cluster: no block may be reported.
    let out = env.pgkeep_ok(&["backup"]);
    assert!(
        !out.contains("WARNING"),
        "clean cluster reported bad blocks: {out}"
    );

    // Corrupt block 3 of the table on disk, behind PostgreSQL's back.
    let relpath = main.sql("SELECT pg_relation_filepath('victim')");
    main.stop();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(main.pgdata.join(&relpath))
        .unwrap();
    file.write_all_at(b"garbage!", 3 * 8192 + 4000).unwrap();
    drop(file);
    let oracle = as_postgres(main.pg.tool("pg_checksums"))
        .args(["--check", "-D"])
        .arg(&main.pgdata)
        .output()
        .unwrap();
    let oracle_err = String::from_utf8_lossy(&oracle.stderr);
    assert!(
        !oracle.status.success() && oracle_err.contains("block 3:"),
        "pg_checksums: {oracle_err}"
    );
    main.start();

    // A full backup still completes, and names exactly that block. (An incremental
    // reads only blocks the WAL shows changed, and this change wrote no WAL.)
    let out = env.pgkeep(&["backup", "--full"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("WARNING: 1 blocks failed"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{relpath} has invalid page checksums in blocks [3]"
        )),
        "{stderr}"
    );
    let info = env.pgkeep_ok(&["info", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["backups"][0]["bad_blocks"], 0);
    assert_eq!(info["backups"][1]["bad_blocks"], 1);
}

on_each_version!(page_checksums);
