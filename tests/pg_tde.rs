//! A cluster with pg_tde's key files. (pg_tde is Percona's and cannot be installed
//! here, so its key directory is laid out by hand as pg_tde does: `pg_tde/wal_keys`
//! when it encrypts WAL, `pg_tde/1664_providers` for the global key providers.) A backup
//! holds them byte for byte, an incremental backup reads the changed files instead of
//! parsing the WAL, and a key change during a backup keeps it from being published.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{ACCOUNTS_FINGERPRINT, Env, Pg};

#[test]
fn pg_tde_key_files() {
    let env = Env::new("tde", Pg::new(18));
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(2);
    let keys = main.pgdata.join("pg_tde");
    std::fs::create_dir_all(&keys).unwrap();
    let key_bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(keys.join("wal_keys"), &key_bytes).unwrap();
    std::fs::write(keys.join("1664_providers"), b"provider: file /etc/keys").unwrap();
    common::chown_postgres(&keys);
    env.backup();

    main.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 3 = 0");
    let out = env.pgkeep(&["-v", "backup"]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("pg_tde encrypts the WAL: reading every changed file"),
        "{log}"
    );
    let second = common::label_of(&String::from_utf8_lossy(&out.stdout));
    let expected = main.sql(ACCOUNTS_FINGERPRINT);

    // A key rotated while the backup runs: the backup fails and publishes nothing.
    let rotating = AtomicBool::new(true);
    let failed = std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u32;
            while rotating.load(Ordering::Relaxed) {
                n += 1;
                std::fs::write(keys.join("wal_keys"), n.to_be_bytes()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        let err = env.pgkeep_err(&["backup"]);
        rotating.store(false, Ordering::Relaxed);
        err
    });
    assert!(
        failed.contains(
            "pg_tde's WAL key or global key files changed during the backup (pg_tde/wal_keys:"
        ) && failed.contains("the backup was not published"),
        "{failed}"
    );
    assert_eq!(env.labels().len(), 2, "the failed backup published nothing");

    let out = env.pgkeep_ok(&[
        "restore",
        "--backup",
        &second,
        "--target",
        "immediate",
        "--target-action",
        "promote",
        "--pgdata",
        env.path("restored").to_str().unwrap(),
    ]);
    assert!(out.contains("the backup holds pg_tde's keys"), "{out}");
    let restored = env.start_restored(&env.path("restored"));
    assert_eq!(restored.sql(ACCOUNTS_FINGERPRINT), expected);
    assert_eq!(
        std::fs::read(restored.pgdata.join("pg_tde/wal_keys")).unwrap(),
        key_bytes
    );
    assert_eq!(
        std::fs::read(restored.pgdata.join("pg_tde/1664_providers")).unwrap(),
        b"provider: file /etc/keys"
    );
}
