//! Restore targets of every kind, each recorded with exactly what the database held
//! there, for tests that restore to each and compare.

use std::time::Duration;

use super::{Env, Server};

/// Exactly what a pgbench database with a `marks (id int, name text)` table holds: every
/// balance, the history's length and sum, the marks.
pub fn fingerprint(s: &Server) -> String {
    s.sql(
        "SELECT (SELECT md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) FROM pgbench_accounts) \
         || '|' || (SELECT count(*) || '/' || coalesce(sum(delta), 0) FROM pgbench_history) \
         || '|' || (SELECT coalesce(string_agg(name, ',' ORDER BY id), '') FROM marks)",
    )
}

/// A target: its name, the restore options that reach it, the fingerprint there.
pub type Target = (&'static str, Vec<String>, String);

/// Makes one target of each kind on `main` (xid, restore point, LSN, time, end of WAL),
/// each after a mark of its own; `main` must hold pgbench tables and `marks`.
pub fn record(main: &Server) -> Vec<Target> {
    let mut targets = Vec::new();
    let xid = main.sql("BEGIN; INSERT INTO marks VALUES (1, 'xid'); SELECT txid_current(); COMMIT");
    targets.push((
        "xid",
        vec!["--target-xid".to_string(), xid],
        fingerprint(main),
    ));
    main.sql("INSERT INTO marks VALUES (2, 'name')");
    main.sql("SELECT pg_create_restore_point('mark')");
    let name = vec!["--target-name".into(), "mark".into()];
    targets.push(("name", name, fingerprint(main)));
    main.sql("INSERT INTO marks VALUES (3, 'lsn')");
    let lsn = main.sql("SELECT pg_current_wal_lsn()");
    targets.push(("lsn", vec!["--target-lsn".into(), lsn], fingerprint(main)));
    main.sql("INSERT INTO marks VALUES (4, 'time')");
    std::thread::sleep(Duration::from_millis(1100));
    let time = main.sql("SELECT now()");
    targets.push((
        "time",
        vec!["--target-time".into(), time],
        fingerprint(main),
    ));
    std::thread::sleep(Duration::from_millis(1100));
    main.sql("INSERT INTO marks VALUES (5, 'end')");
    targets.push(("end", vec![], fingerprint(main)));
    targets
}

/// Restores to each target, promoted, and checks the contents and pgbench's invariant.
pub fn restore_each(env: &Env, targets: &[Target]) {
    for (name, target, expected) in targets {
        let mut args: Vec<&str> = target.iter().map(String::as_str).collect();
        args.extend(["--target-action", "promote"]);
        let restored = env.restore_and_start(&format!("restored-{name}"), &args);
        assert_eq!(&fingerprint(&restored), expected, "target {name}");
        assert!(restored.pgbench_consistent(), "target {name}");
        restored.stop();
    }
}
