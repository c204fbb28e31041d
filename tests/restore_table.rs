//! `restore-table`: one table as of a restore point, from a physical backup and the
//! archived WAL, into the live database under a new name or into a file. One server
//! per version carries the scenarios: rows deleted and a table dropped after the mark
//! come back exactly as they were, with their indexes; the live cluster is otherwise
//! untouched, the scratch server archived nothing and left nothing behind, also when
//! pgkeep is interrupted; bad input fails before anything changes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::scratch::{entries, none_left_in, processes_in};
use common::{Env, Pg, Server, as_postgres, chown_postgres, repository_objects, run_ok};

const SHOP: &str = "
CREATE SCHEMA app;
CREATE TABLE app.customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL UNIQUE,
    vip boolean DEFAULT false);
CREATE TABLE app.orders (id bigserial PRIMARY KEY, customer int REFERENCES app.customers,
    amount numeric CHECK (amount >= 0), note text COLLATE \"C\", doubled numeric GENERATED ALWAYS AS (amount * 2) STORED);
CREATE INDEX orders_customer ON app.orders (customer);
CREATE UNIQUE INDEX orders_note ON app.orders (note) WHERE note IS NOT NULL;
CREATE TABLE app.untouched (k int PRIMARY KEY, v text);
INSERT INTO app.customers (name) SELECT 'customer ' || g FROM generate_series(1, 300) g;
INSERT INTO app.orders (customer, amount, note)
    SELECT 1 + g % 300, g * 1.25, CASE WHEN g % 10 = 0 THEN 'note ' || g END FROM generate_series(1, 20000) g;
INSERT INTO app.untouched SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
";

/// A table's rows hashed in a fixed order: equal strings mean equal rows.
fn rows_of(server: &Server, db: &str, table: &str) -> String {
    server.sql_db(
        db,
        &format!("SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {table} t"),
    )
}

/// The definitions of a table's indexes, with the table's name taken out.
fn indexes_of(server: &Server, db: &str, schema: &str, table: &str) -> String {
    server.sql_db(
        db,
        &format!(
            "SELECT string_agg(regexp_replace(replace(indexdef, '{table}', 'T'), 'INDEX \\S+ ON', 'INDEX ON'), '; ' ORDER BY indexdef) \
             FROM pg_indexes WHERE schemaname = '{schema}' AND tablename = '{table}'"
        ),
    )
}

fn restore_table(pg: Pg) {
    let env = Env::new(&format!("table{}", pg.major), pg);
    let server = env.primary();
    env.write_config(&server, &format!("pg_bin = \"{}\"\n", env.pg.bin.display()));
    env.pgkeep_ok(&["init"]);
    server.sql("CREATE DATABASE shop");
    server.sql_db("shop", SHOP);
    // Another database, so that restoring one is measurably less than all of them.
    server.sql("CREATE DATABASE bulk");
    server.sql_db(
        "bulk",
        "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 200000) g",
    );
    let scratch = env.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    chown_postgres(&scratch);
    let scratch_arg = scratch.to_str().unwrap().to_string();

    let before_backup = server.sql("SELECT now()");
    let label = env.backup();
    // Changes after the backup that the restore must replay, then the mark; the other
    // database changes too (its files are restored empty, and replay must cope).
    server.sql_db("bulk", "UPDATE filler SET pad = 'x' WHERE g % 100 = 0");
    server.sql_db("bulk", "VACUUM filler");
    server.sql_db(
        "shop",
        "UPDATE app.orders SET note = 'changed ' || id WHERE id % 7 = 0",
    );
    server.sql_db(
        "shop",
        "INSERT INTO app.customers (name) VALUES ('late customer')",
    );
    // A setting a standby needs as high, raised since the backup: the scratch server
    // follows the live server.
    server.sql("ALTER SYSTEM SET max_connections = 150");
    server.stop();
    server.start();
    server.sql("SELECT pg_create_restore_point('mark')");
    let orders_at_mark = rows_of(&server, "shop", "app.orders");
    let customers_at_mark = rows_of(&server, "shop", "app.customers");
    // After the mark: rows deleted, a table dropped.
    server.sql_db("shop", "DELETE FROM app.orders WHERE id % 3 = 0");
    server.sql_db("shop", "DROP TABLE app.customers CASCADE");
    env.pgkeep_ok(&["check"]);
    server.wait_archived();
    let untouched = rows_of(&server, "shop", "app.untouched");
    let objects_before = repository_objects(&env.repo);

    // The deleted rows come back beside the table, with its indexes and constraints.
    let out = env.pgkeep_ok(&[
        "restore-table",
        "--table",
        "app.orders",
        "--database",
        "shop",
        "--target-name",
        "mark",
        "--into-database",
        "shop",
        "--scratch-dir",
        &scratch_arg,
    ]);
    assert!(out.contains(&format!("from backup {label}")), "{out}");
    assert!(out.contains("20000 rows"), "{out}");
    assert!(
        out.contains("left out of the copy: foreign key orders_customer_fkey"),
        "{out}"
    );
    let copy = server.sql_db(
        "shop",
        "SELECT relname FROM pg_class WHERE relname LIKE 'orders_restored_%' AND relkind = 'r'",
    );
    assert_eq!(
        rows_of(&server, "shop", &format!("app.{copy}")),
        orders_at_mark
    );
    assert_eq!(
        indexes_of(&server, "shop", "app", &copy),
        indexes_of(&server, "shop", "app", "orders")
    );
    let checks = server.sql_db(
        "shop",
        &format!("SELECT count(*) FROM pg_constraint WHERE conrelid = 'app.{copy}'::regclass AND contype = 'c'"),
    );
    assert_eq!(checks, "1");
    // Its own sequence, past every restored id (as after any recovery, up to 32 ahead:
    // PostgreSQL logs sequences ahead of use).
    let next: i64 = server
        .sql_db(
            "shop",
            &format!("INSERT INTO app.{copy} (amount) VALUES (1) RETURNING id"),
        )
        .parse()
        .unwrap();
    assert!((20001..=20033).contains(&next), "{next}");
    // Only the shop database was restored: much less than the cluster.
    let restored: f64 = out
        .split(", ")
        .find_map(|p| p.split_once(" restored)").map(|(size, _)| size))
        .and_then(|s| {
            let (n, unit) = s.split_once(' ')?;
            let n: f64 = n.parse().ok()?;
            Some(
                n * match unit {
                    "KiB" => 1024.0,
                    "MiB" => 1048576.0,
                    "GiB" => 1073741824.0,
                    _ => 1.0,
                },
            )
        })
        .unwrap_or_else(|| panic!("{out}"));
    let bulk: f64 = server
        .sql("SELECT pg_database_size('bulk')")
        .parse()
        .unwrap();
    let full: f64 = server
        .sql("SELECT sum(pg_database_size(oid)) FROM pg_database")
        .parse()
        .unwrap();
    assert!(
        restored < full - bulk * 0.9,
        "restored {restored} of {full} bytes (bulk is {bulk})"
    );

    // A dropped table comes back under its own name, identity and all.
    env.pgkeep_ok(&[
        "restore-table",
        "--table",
        "app.customers",
        "--database",
        "shop",
        "--target-name",
        "mark",
        "--into-database",
        "shop",
        "--as",
        "customers",
        "--scratch-dir",
        &scratch_arg,
    ]);
    assert_eq!(rows_of(&server, "shop", "app.customers"), customers_at_mark);
    let next: i64 = server
        .sql_db(
            "shop",
            "INSERT INTO app.customers (name) VALUES ('new') RETURNING id",
        )
        .parse()
        .unwrap();
    assert!((302..=334).contains(&next), "{next}");

    // The live cluster is otherwise untouched, and the scratch server archived nothing
    // and left nothing behind.
    assert_eq!(rows_of(&server, "shop", "app.untouched"), untouched);
    let objects_after = repository_objects(&env.repo);
    let new: Vec<_> = objects_after
        .iter()
        .filter(|o| !objects_before.contains(o))
        .collect();
    assert!(
        new.iter().all(|o| !o.to_string_lossy().contains("00000002")
            && !o.to_string_lossy().contains(".history")),
        "the scratch server archived: {new:?}"
    );
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    assert!(
        processes_in(&scratch_arg).is_empty(),
        "{:?}",
        processes_in(&scratch_arg)
    );

    interrupted(&env, &scratch_arg);
    to_file(&env, &server, &scratch_arg, &orders_at_mark);
    bad_input(&env, &server, &scratch_arg, &before_backup);
}

/// The table as pg_dump writes it, in both formats, for the stock tools.
fn to_file(env: &Env, server: &Server, scratch: &str, orders_at_mark: &str) {
    let custom = env.path("orders.dump");
    env.pgkeep_ok(&[
        "restore-table",
        "--table",
        "app.orders",
        "--database",
        "shop",
        "--target-name",
        "mark",
        "--to-file",
        custom.to_str().unwrap(),
        "--scratch-dir",
        scratch,
    ]);
    let list = run_ok(
        as_postgres(env.pg.tool("pg_restore"))
            .arg("--list")
            .arg(&custom),
    );
    assert!(list.contains("TABLE DATA app orders"), "{list}");
    server.sql("CREATE DATABASE from_file");
    server.sql_db("from_file", "CREATE SCHEMA app");
    // The table and its rows (its foreign key needs a customers table this database lacks).
    run_ok(
        server
            .client("pg_restore")
            .args([
                "-d",
                "from_file",
                "--no-owner",
                "--section=pre-data",
                "--section=data",
            ])
            .arg(&custom),
    );
    assert_eq!(rows_of(server, "from_file", "app.orders"), orders_at_mark);
    let plain = env.path("orders.sql");
    env.pgkeep_ok(&[
        "restore-table",
        "--table",
        "app.orders",
        "--database",
        "shop",
        "--target-name",
        "mark",
        "--to-file",
        plain.to_str().unwrap(),
        "--format",
        "plain",
        "--scratch-dir",
        scratch,
    ]);
    let script = std::fs::read_to_string(&plain).unwrap();
    assert!(script.contains("CREATE TABLE app.orders"), "{script}");
    // The directory a killed run left is gone with the next run.
    assert!(
        entries(Path::new(scratch)).is_empty(),
        "{:?}",
        entries(Path::new(scratch))
    );
}

/// Interrupted while the scratch server recovers: the server and the directory go.
fn interrupted(env: &Env, scratch: &str) {
    let restoring = || {
        entries(Path::new(scratch))
            .iter()
            .any(|e| e.starts_with("pgkeep-table-"))
    };
    let serving = || !processes_in(scratch).is_empty();
    let cases: [(libc::c_int, &dyn Fn() -> bool); 4] = [
        (libc::SIGTERM, &restoring),
        (libc::SIGTERM, &serving),
        (libc::SIGINT, &serving),
        (libc::SIGKILL, &serving),
    ];
    for (signal, when) in cases {
        let mut child = as_postgres(&env.pgkeep)
            .arg("--config")
            .arg(&env.config)
            .args([
                "restore-table",
                "--table",
                "app.orders",
                "--database",
                "shop",
                "--target-name",
                "mark",
                "--to-file",
                env.path("never.dump").to_str().unwrap(),
                "--scratch-dir",
                scratch,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !when() {
            assert!(Instant::now() < deadline, "restore-table never got there");
            assert!(
                child.try_wait().unwrap().is_none(),
                "restore-table ended before the signal"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        assert!(!child.wait().unwrap().success());
        // Killed outright, pgkeep leaves its directory to the next run, but the server
        // shuts down on its own when its parent dies.
        none_left_in(scratch);
        if signal != libc::SIGKILL {
            assert!(
                entries(Path::new(scratch)).is_empty(),
                "{signal}: {:?}",
                entries(Path::new(scratch))
            );
        }
        assert!(!env.path("never.dump").exists());
    }
}

fn bad_input(env: &Env, server: &Server, scratch: &str, before_backup: &str) {
    // The table, database and scratch directory unless `extra` names others.
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["restore-table"];
        for (option, default) in [
            ("--table", "app.orders"),
            ("--database", "shop"),
            ("--scratch-dir", scratch),
        ] {
            if !extra.contains(&option) {
                a.extend([option, default]);
            }
        }
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect()
    };
    let err = |extra: &[&str]| {
        let a = args(extra);
        env.pgkeep_err(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let tables = server.sql_db("shop", "SELECT count(*) FROM pg_class WHERE relkind = 'r'");
    let repository = repository_objects(&env.repo);

    let taken = env.path("orders.dump");
    let into_shop = ["--target-name", "mark", "--into-database", "shop"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--target-time", before_backup, "--into-database", "shop"],
            "no backup can recover to that target",
        ),
        (
            [&into_shop[..], &["--as", "untouched"]].concat(),
            "app.untouched already exists",
        ),
        (
            [&into_shop[..], &["--as", "nowhere.x"]].concat(),
            "schema nowhere does not exist",
        ),
        (
            vec!["--target-name", "mark", "--into-database", "no_such_db"],
            "\"no_such_db\" does not exist",
        ),
        (
            vec!["--target-name", "no such mark", "--into-database", "shop"],
            "no restore point named 'no such mark'",
        ),
        (
            vec![
                "--target-name",
                "mark",
                "--to-file",
                taken.to_str().unwrap(),
            ],
            "exists; restore-table writes only a new file",
        ),
        (
            [&into_shop[..], &["--table", "app.nothing"]].concat(),
            "table app.nothing did not exist",
        ),
        (
            [&into_shop[..], &["--database", "gone_db"]].concat(),
            "database gone_db did not exist at the target",
        ),
    ];
    for (extra, expected) in cases {
        let e = err(&extra);
        assert!(e.contains(expected), "{extra:?}: {e}");
    }

    // No room for the scratch restore.
    let tiny = env.path("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    run_ok(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs"])
            .arg(&tiny),
    );
    let tiny_arg = tiny.to_str().unwrap().to_string();
    let e = err(&[&into_shop[..], &["--scratch-dir", &tiny_arg]].concat());
    run_ok(std::process::Command::new("umount").arg(&tiny));
    assert!(e.contains("free space there or restore elsewhere"), "{e}");
    assert_eq!(repository_objects(&env.repo), repository);

    assert_eq!(
        server.sql_db("shop", "SELECT count(*) FROM pg_class WHERE relkind = 'r'"),
        tables
    );
    assert!(
        entries(Path::new(scratch)).is_empty(),
        "{:?}",
        entries(Path::new(scratch))
    );
}

on_every_version!(restore_table);
