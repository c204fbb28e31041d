//! Logical backups: `dump` runs the server's pg_dump into the repository and
//! `dump-restore` brings it back through pg_restore. One server per version carries the
//! scenarios: a round trip of a database using most kinds of object (compared with
//! pg_dump --schema-only and per-table row hashes), selection on both sides,
//! deduplication of a dump that did not change, collection keeping dumped data, and the
//! bad inputs each with its error.

mod common;

use common::{Env, Pg, Server, label_of};

/// A database with schemas, types, functions, sequences, large objects, a
/// materialized view, grants and some bulk.
const SHOP: &str = "
CREATE ROLE shop_reader;
CREATE SCHEMA app;
CREATE SCHEMA audit;
CREATE TYPE app.status AS ENUM ('new', 'paid', 'shipped');
CREATE TYPE app.money_pair AS (amount numeric, currency text);
CREATE SEQUENCE app.invoice_no START 1000;
CREATE TABLE app.customers (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE app.orders (id bigserial PRIMARY KEY, customer int REFERENCES app.customers,
    status app.status NOT NULL DEFAULT 'new', total app.money_pair, note text);
CREATE INDEX orders_status ON app.orders (status);
CREATE TABLE app.orders_archive (LIKE app.orders);
CREATE TABLE audit.events (at timestamptz DEFAULT now(), what text);
CREATE FUNCTION app.order_count(c int) RETURNS bigint LANGUAGE sql STABLE
    AS 'SELECT count(*) FROM app.orders WHERE customer = c';
CREATE FUNCTION audit.log() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN INSERT INTO audit.events(what) VALUES (TG_OP || ' ' || NEW.id); RETURN NEW; END$$;
CREATE TRIGGER orders_audit AFTER INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION audit.log();
INSERT INTO app.customers (name) SELECT 'customer ' || g FROM generate_series(1, 500) g;
INSERT INTO app.orders (customer, status, total, note)
    SELECT 1 + g % 500, (ARRAY['new','paid','shipped']::app.status[])[1 + g % 3],
           ROW((g * 1.5)::numeric, 'EUR'::text)::app.money_pair, md5(g::text) || md5((g * 7)::text)
    FROM generate_series(1, 100000) g;
INSERT INTO app.orders_archive SELECT * FROM app.orders WHERE id <= 1000;
CREATE MATERIALIZED VIEW app.revenue AS SELECT customer, count(*) AS n FROM app.orders GROUP BY customer;
SELECT setval('app.invoice_no', 4242);
SELECT lo_from_bytea(0, convert_to(repeat('large object ', 1000), 'UTF8'));
GRANT USAGE ON SCHEMA app TO shop_reader;
GRANT SELECT ON app.orders, app.customers TO shop_reader;
COMMENT ON TABLE app.orders IS 'every order';
";

/// Each table's (and the materialized view's) rows hashed in a fixed order, the
/// sequence's position and the large objects' contents: equal strings mean equal data.
fn fingerprint(server: &Server, db: &str) -> String {
    let relations = server.sql_db(
        db,
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), ' ' ORDER BY n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'm') AND n.nspname IN ('app', 'audit', 'public')",
    );
    let mut out = String::new();
    for rel in relations.split_whitespace() {
        let hash = server.sql_db(
            db,
            &format!("SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {rel} t"),
        );
        out.push_str(&format!("{rel}={hash}\n"));
    }
    out.push_str(&server.sql_db(db, "SELECT 'seq=' || last_value FROM app.invoice_no"));
    out.push_str(&server.sql_db(
        db,
        "SELECT ' lo=' || count(*) || ':' || coalesce(md5(string_agg(md5(lo_get(oid)), ',' ORDER BY oid)), '') FROM pg_largeobject_metadata",
    ));
    out
}

/// `pg_dump --schema-only` of `db`: the schema, grants and comments as text.
fn schema_of(server: &Server, db: &str) -> String {
    let out = server
        .client("pg_dump")
        .args(["--schema-only", "-d", db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The header names the dumping tool's version and a random restrict key (18+).
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tables of `db` outside the system schemas, sorted.
fn tables_of(server: &Server, db: &str) -> String {
    server.sql_db(
        db,
        "SELECT coalesce(string_agg(schemaname || '.' || tablename, ' ' ORDER BY schemaname, tablename), '') FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
}

/// The dump's entry in `info --json`.
fn dump_info(env: &Env, label: &str) -> serde_json::Value {
    let info: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap();
    info["dumps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["label"] == label)
        .unwrap_or_else(|| panic!("dump {label} not in info: {info}"))
        .clone()
}

fn logical(pg: Pg) {
    let env = Env::new(&format!("logical{}", pg.major), pg);
    let server = env.primary();
    env.write_config(&server, &format!("pg_bin = \"{}\"\n", env.pg.bin.display()));
    env.pgkeep_ok(&["init"]);
    server.sql("CREATE DATABASE shop");
    server.sql_db("shop", SHOP);

    let first = round_trip(&env, &server);
    selection(&env, &server);
    retention(&env, &server, &first);
    dedup(&env, &server);
    interrupted(&env, &first);
    export_import(&env, &server, &first);
    bad_input(&env, &server);
    whole_cluster(&env, &server);
    damage(&env, &server);
}

/// A whole database into another name, identical in schema and data; an unchanged
/// second dump costs next to nothing; expire keeps what dumps refer to.
fn round_trip(env: &Env, server: &Server) -> String {
    let out = env.pgkeep_ok(&["dump", "--database", "shop", "--jobs", "2"]);
    let first = label_of(&out);
    let out = env.pgkeep_ok(&[
        "dump-restore",
        &first,
        "--to",
        "shop_copy",
        "--create",
        "--jobs",
        "2",
    ]);
    assert!(out.contains("into database shop_copy"), "{out}");
    assert!(out.contains("ANALYZE"), "{out}");
    assert_eq!(
        fingerprint(server, "shop_copy"),
        fingerprint(server, "shop")
    );
    assert_eq!(schema_of(server, "shop_copy"), schema_of(server, "shop"));
    // ANALYZE ran: the planner knows the restored table's size.
    let rows = server.sql_db(
        "shop_copy",
        "SELECT reltuples::bigint FROM pg_class WHERE oid = 'app.orders'::regclass",
    );
    assert_eq!(rows, "100000");

    let info = dump_info(env, &first);
    assert_eq!(info["database"], "shop");
    assert_eq!(info["selection"], "all");
    let size = info["size"].as_u64().unwrap();
    assert!(size > 8 << 20, "{info}");

    // Nothing changed: the second dump stores under 1% of the first's size.
    let second = label_of(&env.pgkeep_ok(&["dump", "--database", "shop"]));
    let stored = dump_info(env, &second)["stored_size"].as_u64().unwrap();
    assert!(
        stored * 100 < size,
        "unchanged dump stored {stored} of {size} bytes"
    );

    // Collection keeps every chunk a dump refers to (there is no physical backup at all).
    env.pgkeep_ok(&["expire"]);
    server.sql("DROP DATABASE shop_copy");
    env.pgkeep_ok(&["dump-restore", &second, "--to", "shop_copy", "--create"]);
    assert_eq!(
        fingerprint(server, "shop_copy"),
        fingerprint(server, "shop")
    );

    // --clean replaces what a database holds; --single-transaction restores all or nothing.
    server.sql_db("shop_copy", "DELETE FROM app.orders_archive");
    env.pgkeep_ok(&[
        "dump-restore",
        &first,
        "--to",
        "shop_copy",
        "--clean",
        "--single-transaction",
    ]);
    assert_eq!(
        fingerprint(server, "shop_copy"),
        fingerprint(server, "shop")
    );
    server.sql("DROP DATABASE shop_copy");
    first
}

/// pg_dump's -t (with a wildcard), -T, -n and -N, and pg_restore's -t. (As with
/// pg_dump itself, -t leaves out the schema and types a table depends on.)
fn selection(env: &Env, server: &Server) {
    let out = env.pgkeep_ok(&[
        "dump",
        "-d",
        "shop",
        "-t",
        "app.orders*",
        "-T",
        "app.orders",
    ]);
    let label = label_of(&out);
    assert_eq!(
        dump_info(env, &label)["selection"],
        "-t app.orders* -T app.orders"
    );
    server.sql("CREATE DATABASE pick");
    server.sql_db(
        "pick",
        "CREATE SCHEMA app; CREATE TYPE app.status AS ENUM ('new', 'paid', 'shipped'); \
         CREATE TYPE app.money_pair AS (amount numeric, currency text)",
    );
    // A database that holds anything takes a dump only with --clean.
    env.pgkeep_ok(&[
        "dump-restore",
        &label,
        "--to",
        "pick",
        "--no-owner",
        "--clean",
    ]);
    assert_eq!(tables_of(server, "pick"), "app.orders_archive");
    assert_eq!(
        server.sql_db("pick", "SELECT count(*) FROM app.orders_archive"),
        "1000"
    );

    let label = label_of(&env.pgkeep_ok(&["dump", "-d", "shop", "-n", "app", "-N", "audit"]));
    let only_app = label_of(&env.pgkeep_ok(&["dump", "-d", "shop", "-N", "app"]));
    server.sql("CREATE DATABASE pick2");
    env.pgkeep_ok(&["dump-restore", &only_app, "--to", "pick2"]);
    assert_eq!(tables_of(server, "pick2"), "audit.events");

    // One table of a whole dump.
    server.sql("CREATE DATABASE pick3");
    server.sql_db("pick3", "CREATE SCHEMA app");
    env.pgkeep_ok(&[
        "dump-restore",
        &label,
        "--to",
        "pick3",
        "-n",
        "app",
        "-t",
        "customers",
        "-c",
    ]);
    assert_eq!(tables_of(server, "pick3"), "app.customers");
    assert_eq!(
        server.sql_db("pick3", "SELECT count(*) FROM app.customers"),
        "500"
    );
    for db in ["pick", "pick2", "pick3"] {
        server.sql(&format!("DROP DATABASE {db}"));
    }
}

/// `[retention.dumps]` counts each database's dumps on its own, spares pinned ones,
/// runs after a dump, and collection keeps what the survivors need.
fn retention(env: &Env, server: &Server, pinned: &str) {
    let config = |after_dump: bool| {
        let pg_bin = env.pg.bin.display();
        env.write_config(
            server,
            &format!(
                "pg_bin = \"{pg_bin}\"\n\n[retention]\nexpire_after_backup = {after_dump}\n\n[retention.dumps]\nkeep_last = 2\n"
            ),
        )
    };
    config(false);
    server.sql("CREATE DATABASE other");
    server.sql_db("other", "CREATE TABLE t AS SELECT 1 AS x");
    let other = label_of(&env.pgkeep_ok(&["dump", "-d", "other"]));
    env.pgkeep_ok(&["pin", pinned]);
    let shop_dumps = |env: &Env| {
        let info: serde_json::Value =
            serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap();
        info["dumps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["database"] == "shop")
            .map(|d| d["label"].as_str().unwrap().to_string())
            .collect::<Vec<String>>()
    };
    let before = shop_dumps(env);
    assert_eq!(before.len(), 5, "{before:?}");
    let plan = env.pgkeep_ok(&["expire", "--dry-run"]);
    assert!(plan.contains("logical backups, database shop:"), "{plan}");
    assert_eq!(plan.matches("expire  ").count(), 2, "{plan}");
    assert!(plan.contains(&format!("keep    {other}")), "{plan}");
    assert_eq!(shop_dumps(env), before);

    env.pgkeep_ok(&["expire"]);
    assert_eq!(
        shop_dumps(env),
        [pinned, before[3].as_str(), &before[4]],
        "{plan}"
    );
    // A dump expires the others after it.
    config(true);
    let newest = label_of(&env.pgkeep_ok(&["dump", "-d", "shop"]));
    assert_eq!(shop_dumps(env), [pinned, before[4].as_str(), &newest]);
    server.sql("CREATE DATABASE shop_copy");
    env.pgkeep_ok(&["dump-restore", pinned, "--to", "shop_copy"]);
    assert_eq!(
        fingerprint(server, "shop_copy"),
        fingerprint(server, "shop")
    );
    server.sql("DROP DATABASE shop_copy");
    let verified = env.pgkeep_ok(&["verify"]);
    assert!(verified.contains("4 logical backups"), "{verified}");
}

/// A copy of a database costs nothing; 1% more rows in one table cost little;
/// scattered updates to another store that table again, and the untouched ones nothing.
fn dedup(env: &Env, server: &Server) {
    server.sql("CREATE DATABASE shop2 TEMPLATE shop");
    let stored_by_dump = || {
        let label = label_of(&env.pgkeep_ok(&["dump", "--database", "shop2"]));
        let info = dump_info(env, &label);
        (
            info["stored_size"].as_u64().unwrap(),
            info["size"].as_u64().unwrap(),
        )
    };
    let (stored, size) = stored_by_dump();
    assert!(
        stored * 100 < size,
        "a copy of shop: stored {stored} of {size} bytes"
    );
    server.sql_db(
        "shop2",
        "INSERT INTO app.orders (customer, note) SELECT 1 + g % 500, md5(g::text) FROM generate_series(1, 1000) g",
    );
    // (At 14 MB the last chunk of each of the two files that grew, 256 KiB on average,
    // weighs more than the rows: under 5% here; bench/logical measures 0.1% at pgbench
    // scale 50.)
    let (stored, size) = stored_by_dump();
    assert!(
        stored * 100 < size * 5,
        "1% appended: stored {stored} of {size} bytes"
    );
    server.sql_db(
        "shop2",
        "UPDATE audit.events SET what = what || '!' WHERE random() < 0.01",
    );
    let (stored, size) = stored_by_dump();
    assert!(
        stored * 100 < size * 15,
        "scattered updates: stored {stored} of {size} bytes"
    );
    server.sql("DROP DATABASE shop2");
}

/// Exports the stock tools restore, and imports of pg_dump's every format that restore
/// like the original.
fn export_import(env: &Env, server: &Server, label: &str) {
    let expected = fingerprint(server, "shop");
    let restored_by = |db: &str, tool: &str, args: &[&str]| {
        server.sql(&format!("CREATE DATABASE {db}"));
        let out = server
            .client(tool)
            .args(["-d", db])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fingerprint(server, db),
            expected,
            "restored by {tool} {args:?}"
        );
        server.sql(&format!("DROP DATABASE {db}"));
    };
    let dir = env.path("export-dir");
    let sql = env.path("export.sql");
    env.pgkeep_ok(&["dump-export", label, "-f", dir.to_str().unwrap()]);
    restored_by(
        "from_dir",
        "pg_restore",
        &["-j", "2", dir.to_str().unwrap()],
    );
    env.pgkeep_ok(&[
        "dump-export",
        label,
        "--format",
        "plain",
        "-f",
        sql.to_str().unwrap(),
    ]);
    restored_by(
        "from_sql",
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            sql.to_str().unwrap(),
        ],
    );
    // The directory dump as a tar archive (large object and all), for stock pg_restore.
    let tar = env.path("export.tar");
    env.pgkeep_ok(&[
        "dump-export",
        label,
        "--format",
        "tar",
        "-f",
        tar.to_str().unwrap(),
    ]);
    restored_by("from_tar", "pg_restore", &[tar.to_str().unwrap()]);
    // And as a custom archive, restored in parallel (which needs every block's position).
    let custom = env.path("export.dump");
    let custom_arg = custom.to_str().unwrap();
    env.pgkeep_ok(&["dump-export", label, "--format", "custom", "-f", custom_arg]);
    restored_by("from_custom", "pg_restore", &["-j", "2", custom_arg]);
    let err = env.pgkeep_err(&["dump-export", label, "-f", dir.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");

    for (format, name) in [
        ("custom", "shop.dump"),
        ("tar", "shop.tar"),
        ("plain", "shop.sql"),
    ] {
        let file = env.path(name);
        let out = server
            .client("pg_dump")
            .args([
                "-d",
                "shop",
                "--format",
                format,
                "-f",
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let imported =
            label_of(&env.pgkeep_ok(&["dump-import", file.to_str().unwrap(), "-d", "shop"]));
        let info = dump_info(env, &imported);
        assert!(
            info["selection"]
                .as_str()
                .unwrap()
                .contains(&format!("({format} format)")),
            "{info}"
        );
        env.pgkeep_ok(&["dump-restore", &imported, "--to", "imported", "--create"]);
        assert_eq!(
            fingerprint(server, "imported"),
            expected,
            "imported {format}"
        );
        server.sql("DROP DATABASE imported");
        // Exported as it came in, it is the same file.
        let back = env.path(&format!("back-{name}"));
        env.pgkeep_ok(&["dump-export", &imported, "-f", back.to_str().unwrap()]);
        assert!(
            std::fs::read(&back).unwrap() == std::fs::read(&file).unwrap(),
            "{format}"
        );
    }
    let err = env.pgkeep_err(&[
        "dump-import",
        env.path("export.sql").parent().unwrap().to_str().unwrap(),
        "-d",
        "shop",
    ]);
    assert!(err.contains("not a pg_dump directory archive"), "{err}");
}

/// `dump --all` into a fresh cluster: roles first, then every database as it was.
fn whole_cluster(env: &Env, server: &Server) {
    let out = env.pgkeep_ok(&["dump", "--all", "--jobs", "2"]);
    let globals = label_of(&out);
    assert!(out.contains("of the globals"), "{out}");
    for db in ["postgres", "shop", "other", "template1"] {
        assert!(out.contains(&format!("of database {db}:")), "{out}");
    }
    let info = dump_info(env, &globals);
    assert_eq!(info["globals"], true);
    let member = label_of(out.lines().nth(1).unwrap());
    assert_eq!(dump_info(env, &member)["set"], globals.as_str());

    // A run is one unit for retention: newer dumps of one database (keep_last = 2 is
    // set) do not expire that database's dump in the run.
    env.pgkeep_ok(&["dump", "-d", "shop"]);
    env.pgkeep_ok(&["dump", "-d", "shop"]);
    let plan = env.pgkeep_ok(&["expire", "--dry-run"]);
    assert!(plan.contains(&format!("keep    {member}")), "{plan}");
    assert!(plan.contains("part of a kept dump --all run"), "{plan}");

    let fresh_env = Env::new(
        &format!("logical-fresh{}", env.pg.major),
        Pg::new(env.pg.major),
    );
    let fresh = fresh_env.primary();
    // The repository's config, pointed at the fresh cluster.
    env.write_config(&fresh, &format!("pg_bin = \"{}\"\n", env.pg.bin.display()));
    let err = env.pgkeep_err(&["dump-restore", &member, "--all"]);
    assert!(err.contains("is not one"), "{err}");
    let err = env.pgkeep_err(&["dump-restore", &globals, "--all", "-1", "-j", "1"]);
    assert!(err.contains("leave out --single-transaction"), "{err}");
    let out = env.pgkeep_ok(&["dump-restore", &globals, "--all", "--jobs", "2"]);
    assert!(out.contains("into the cluster's globals"), "{out}");
    assert_eq!(
        fresh.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'shop_reader'"),
        "1"
    );
    assert_eq!(fingerprint(&fresh, "shop"), fingerprint(server, "shop"));
    assert_eq!(schema_of(&fresh, "shop"), schema_of(server, "shop"));
    assert_eq!(fresh.sql_db("other", "SELECT x FROM t"), "1");
    // Again: the databases hold what it would restore, so nothing is touched.
    let err = env.pgkeep_err(&["dump-restore", &globals, "--all"]);
    assert!(err.contains("already holds"), "{err}");
    env.write_config(server, &format!("pg_bin = \"{}\"\n", env.pg.bin.display()));
}

/// pgkeep interrupted mid-restore takes pg_restore with it: no process is left reading
/// its pipes.
fn interrupted(env: &Env, label: &str) {
    let mut restore = common::as_postgres(&env.pgkeep)
        .arg("--config")
        .arg(&env.config)
        .args([
            "dump-restore",
            label,
            "--to",
            "interrupted",
            "--create",
            "-j",
            "2",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pgrep = |args: &[&str]| {
        let out = std::process::Command::new("pgrep")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // pgkeep's pid names its scratch directory, which the pg_restore it starts reads
    // from.
    let pgkeep = restore.id().to_string();
    let readers = format!("pg_restore.*pgkeep-restore-{pgkeep}-");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pgrep(&["-f", &readers]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "pg_restore never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-INT", &pgkeep])
        .status()
        .unwrap();
    assert!(!restore.wait().unwrap().success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        pgrep(&["-f", &readers]).is_empty(),
        "a pg_restore outlived the interrupted pgkeep"
    );
}

/// A damaged chunk: verify names the dump it breaks, and dump-restore stops pg_restore
/// and fails instead of loading a short table.
fn damage(env: &Env, server: &Server) {
    server.sql("CREATE DATABASE dmg");
    server.sql_db(
        "dmg",
        "CREATE TABLE noise AS SELECT g, md5(random()::text) AS t FROM generate_series(1, 200000) g",
    );
    let label = label_of(&env.pgkeep_ok(&["dump", "-d", "dmg"]));
    let newest_pack = common::repository_objects(&env.repo)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .unwrap();
    let mut bytes = std::fs::read(&newest_pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&newest_pack, bytes).unwrap();

    let err = env.pgkeep_err(&["verify"]);
    assert!(err.contains(&label), "{err}");
    assert!(err.contains("of the dump of database dmg"), "{err}");
    let err = env.pgkeep_err(&["dump-restore", &label, "--to", "dmg2", "--create"]);
    assert!(err.contains("pg_restore was stopped"), "{err}");
    assert!(err.contains("may hold part of the dump"), "{err}");
}

/// Each bad input: one sentence, a non-zero exit, nothing stored or changed.
fn bad_input(env: &Env, server: &Server) {
    let dumps_before = env.pgkeep_ok(&["info", "--json"]);
    let count = |text: &str| {
        let info: serde_json::Value = serde_json::from_str(text).unwrap();
        info["dumps"].as_array().unwrap().len()
    };
    let err = env.pgkeep_err(&["dump", "-d", "no_such_db"]);
    assert!(
        err.contains("database 'no_such_db' does not exist"),
        "{err}"
    );
    let err = env.pgkeep_err(&["dump", "-d", "shop", "-t", "app.nothing_like_this*"]);
    assert!(err.contains("no matching tables"), "{err}");
    assert_eq!(
        count(&env.pgkeep_ok(&["info", "--json"])),
        count(&dumps_before)
    );

    let label = label_of(&env.pgkeep_ok(&["dump", "-d", "shop", "-n", "audit"]));
    let err = env.pgkeep_err(&["dump-restore", &label]);
    assert!(err.contains("database 'shop' already holds"), "{err}");
    assert!(err.contains("--clean"), "{err}");
    let err = env.pgkeep_err(&["dump-restore", &label, "--to", "nowhere"]);
    assert!(
        err.contains("does not exist on the server; add --create"),
        "{err}"
    );
    let err = env.pgkeep_err(&["dump-restore", &label, "--to", "shop", "--create"]);
    assert!(err.contains("already exists; add --clean"), "{err}");
    let err = env.pgkeep_err(&[
        "dump-restore",
        &label,
        "-d",
        "other",
        "--to",
        "x",
        "--create",
    ]);
    assert!(err.contains("holds database 'shop', not 'other'"), "{err}");
    let err = env.pgkeep_err(&[
        "dump-restore",
        &label,
        "--to",
        "x",
        "--create",
        "-1",
        "-j",
        "2",
    ]);
    assert!(err.contains("exclude each other"), "{err}");
    let err = env.pgkeep_err(&[
        "dump-restore",
        &label,
        "--to",
        "shop",
        "-C",
        "-c",
        "-t",
        "events",
    ]);
    assert!(err.contains("would bring back only part of it"), "{err}");
    assert_eq!(
        server.sql_db("shop", "SELECT count(*) > 0 FROM app.orders"),
        "t"
    );
    let err = env.pgkeep_err(&[
        "dump-restore",
        "20200101T000000Z-dump",
        "--to",
        "x",
        "--create",
    ]);
    assert!(
        err.contains("does not exist; `pgkeep info` lists the dumps"),
        "{err}"
    );
    assert_eq!(
        server.sql("SELECT count(*) FROM pg_database WHERE datname IN ('x', 'nowhere')"),
        "0"
    );

    // A data-only dump goes into tables that exist.
    let rows =
        label_of(&env.pgkeep_ok(&["dump", "-d", "shop", "--data-only", "-t", "app.customers"]));
    let err = env.pgkeep_err(&["dump-restore", &rows, "--to", "nowhere", "--create"]);
    assert!(err.contains("a data-only dump loads rows"), "{err}");

    // A physical backup's label is not a dump.
    let backup = label_of(&env.pgkeep_ok(&["backup"]));
    let err = env.pgkeep_err(&["dump-restore", &backup, "--to", "x", "--create"]);
    assert!(
        err.contains("is a physical backup, not a logical one"),
        "{err}"
    );
}

on_every_version!(logical);
