//! The README's Set up as a new user walks it, with the traps found on the way: a
//! repository directory that is missing or root's, pgkeep run as root, a cluster without
//! data checksums, and the first restore (back up, change data, drop a table, restore to
//! just before) tried before the newest WAL is archived.

mod common;

use std::process::Command;

use common::{Env, Pg, as_postgres, run_ok};

/// The one line of an error, which must name the fix and no temporary file.
fn one_line(err: &str) -> &str {
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one sentence expected: {err}"
    );
    assert!(
        !err.contains(".tmp."),
        "a temporary file name leaked: {err}"
    );
    err.trim()
}

fn first_use(pg: Pg) {
    let env = Env::new(&format!("firstuse{}", pg.major), pg);
    let main = env.primary();

    // The repository directory does not exist, and its parent is root's.
    let parent = env.path("var-lib");
    std::fs::create_dir(&parent).unwrap();
    let repo = parent.join("pgkeep");
    let config = std::fs::read_to_string(&env.config).unwrap();
    let config = config.replace(&env.repo.display().to_string(), &repo.display().to_string());
    std::fs::write(&env.config, &config).unwrap();
    let fix = format!("install -d -o postgres -m 700 {}", repo.display());
    let err = env.pgkeep_err(&["init"]);
    assert!(one_line(&err).contains(&fix), "{err}");
    // It exists but is root's, and empty.
    std::fs::create_dir(&repo).unwrap();
    let err = env.pgkeep_err(&["init"]);
    assert!(one_line(&err).contains(&fix), "{err}");
    run_ok(Command::new("chown").arg("postgres:").arg(&repo));
    env.pgkeep_ok(&["init"]);

    // As root, pgkeep would leave root's files in postgres's repository.
    let out = Command::new(&env.pgkeep)
        .arg("--config")
        .arg(&env.config)
        .arg("info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        one_line(&err).contains("running as root") && err.contains("sudo -u postgres pgkeep"),
        "{err}"
    );

    // A cluster without data checksums: said by check, backup and info.
    main.stop();
    run_ok(
        as_postgres(main.pg.tool("pg_checksums"))
            .args(["--disable", "-D"])
            .arg(&main.pgdata),
    );
    main.start();
    let out = env.pgkeep(&["check"]);
    assert!(out.status.success());
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(warning.contains("no data checksums"), "{warning}");
    let out = env.pgkeep(&["backup"]);
    assert!(out.status.success());
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("no data checksums, so no page was validated"),
        "{warning}"
    );
    let info = env.pgkeep_ok(&["info"]);
    assert!(
        info.contains("status: ATTENTION")
            && info.contains("no data checksums")
            && info.contains("no page checksums"),
        "{info}"
    );
    assert!(
        info.contains("backups (times UTC)") && info.contains(" UTC .. "),
        "{info}"
    );

    // The first restore: the table's last rows are not archived yet when it is dropped.
    main.sql("CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g");
    env.backup();
    main.sql("INSERT INTO orders SELECT g FROM generate_series(1001, 1500) g");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let good = main.sql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    main.sql("DROP TABLE orders");
    let pgdata = env.path("restored");
    let target = ["--target-time", good.as_str()];
    let mut args = vec!["restore", "--pgdata", pgdata.to_str().unwrap()];
    args.extend_from_slice(&target);
    let err = env.pgkeep_err(&args);
    assert!(
        one_line(&err).contains("the newest WAL is not archived yet")
            && err.contains("run `pgkeep check`")
            && err.contains("pg_switch_wal()"),
        "{err}"
    );
    assert!(!pgdata.exists(), "a refused restore wrote something");
    env.pgkeep_ok(&["check"]);
    // PostgreSQL's default at the target is to pause: the output says what to do next.
    let out = env.pgkeep_ok(&args);
    assert!(
        out.contains("the server pauses read-only") && out.contains("pg_wal_replay_resume()"),
        "{out}"
    );
    assert!(out.contains("archiving: off"), "{out}");
    std::fs::remove_dir_all(&pgdata).unwrap();
    let mut promote = target.to_vec();
    promote.extend_from_slice(&["--target-action", "promote"]);
    let restored = env.restore_and_start("restored", &promote);
    assert_eq!(
        restored.sql("SELECT count(*), sum(id) FROM orders"),
        "1500|1125750"
    );
}

on_each_version!(first_use);
