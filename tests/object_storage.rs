//! Repositories on object storage: every command on Azure Blob Storage (Azurite) and on
//! Google Cloud Storage (fake-gcs-server), and on S3 (moto) with faults injected between
//! pgkeep and the service. (The PITR test runs on
//! S3, and so does expire beside running backups, coordinated by lease objects.)

mod common;

use std::time::Duration;

use common::faults::Faults;
use common::objects::Service;
use common::{ACCOUNTS_FINGERPRINT, Env, Pg};

/// Restores `label` to the end of the archive and checks the accounts are `expected`.
fn restores_exactly(env: &Env, name: &str, label: &str, expected: &str) {
    let server = env.restore_and_start(name, &["--backup", label, "--target-action", "promote"]);
    assert_eq!(server.sql(ACCOUNTS_FINGERPRINT), expected, "backup {label}");
    server.stop();
}

/// Every command on Azure Blob Storage (Azurite).
#[test]
fn azure_round_trip() {
    round_trip(Env::on_object_storage("azure", Pg::new(15), Service::Azure));
}

/// Every command on Google Cloud Storage (fake-gcs-server).
#[test]
fn gcs_round_trip() {
    round_trip(Env::on_object_storage("gcs", Pg::new(18), Service::Gcs));
}

/// Every command: init, check, backup (full and incremental), archive-push and
/// archive-get, info, verify, pin, expire and restore; pack indexes are fetched once.
fn round_trip(env: Env) {
    let main = env.primary();
    env.write_config(
        &main,
        "\n[retention]\nkeep_last = 1\nexpire_after_backup = false\n",
    );
    env.pgkeep_ok(&["init"]);
    env.pgkeep_ok(&["check"]);
    main.pgbench_init(2);
    let first = env.backup();
    env.pgkeep_ok(&["pin", &first]);
    main.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 7 = 0");
    let index_gets = || env.faults.as_ref().unwrap().index_gets();
    let before = index_gets();
    let second = env.backup();
    assert!(
        index_gets() > before,
        "the second backup fetches the pack indexes of the first"
    );
    main.sql("UPDATE pgbench_accounts SET abalance = abalance + 2 WHERE aid % 5 = 0");
    let third = env.backup();
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    env.pgkeep_ok(&["check"]);
    let expired = env.pgkeep_ok(&["expire"]);
    assert!(expired.contains(&second), "{expired}");
    assert_eq!(
        env.labels(),
        [first.clone(), third.clone()],
        "the pinned backup stays"
    );
    env.pgkeep_ok(&["verify"]);
    restores_exactly(&env, "restored", &third, &expected);
    // Packs never change, so their indexes are fetched once and then read locally.
    let before = index_gets();
    restores_exactly(&env, "from-pinned", &first, &expected);
    assert_eq!(
        index_gets(),
        before,
        "a restore fetched pack indexes it had fetched before"
    );
}

/// Archive-push and backups on S3 with random faults under a pgbench load: nothing that
/// returned success is missing, backups publish whole or not at all; then the service
/// goes down in the middle of a backup, which fails and names the object, and the next
/// backup succeeds.
#[test]
fn s3_faults() {
    let env = Env::on_object_storage("faults", Pg::new(18), Service::S3);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(5);
    env.backup();
    let faults = env.faults.as_ref().unwrap();

    faults.set(Faults::Random(30));
    let load = main.pgbench_load(2);
    let mut published = Vec::new();
    let mut failed = 0;
    for _ in 0..3 {
        let before = std::time::Instant::now();
        let out = env.pgkeep(&["backup"]);
        if out.status.success() {
            published.push(common::label_of(&String::from_utf8_lossy(&out.stdout)));
        } else {
            failed += 1;
        }
        std::thread::sleep(Duration::from_secs(2).saturating_sub(before.elapsed()));
    }
    load.stop(&main);
    let injected = faults.faults();
    faults.set(Faults::None);
    assert!(injected > 20, "only {injected} faults were injected");
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    env.pgkeep_ok(&["check"]);
    let checked = common::archived_exactly(&env, &main);
    assert!(
        checked > 3,
        "only {checked} archived segments were still in pg_wal"
    );
    // A backup that failed left no manifest: the listing has exactly the published ones.
    let listed = env.labels();
    assert_eq!(
        listed.len(),
        1 + published.len(),
        "{listed:?} vs {published:?}"
    );
    assert_eq!(failed, 0, "transient faults are retried until they pass");
    env.pgkeep_ok(&["verify"]);
    restores_exactly(&env, "after-faults", listed.last().unwrap(), &expected);

    // The service goes down in the middle of a backup.
    main.sql("UPDATE pgbench_accounts SET abalance = abalance + 3");
    main.sql("CHECKPOINT");
    let err = std::thread::scope(|s| {
        let backup = s.spawn(|| env.pgkeep(&["backup", "--full"]));
        // Early enough that even a fast backup is not done yet (an outage before it
        // opened the repository fails it just the same, naming the object).
        std::thread::sleep(Duration::from_millis(250));
        faults.set(Faults::Down);
        backup.join().unwrap()
    });
    assert!(
        !err.status.success(),
        "the backup succeeded with the service down"
    );
    let stderr = String::from_utf8_lossy(&err.stderr);
    let error = stderr.trim().lines().last().unwrap();
    eprintln!("with the service down: {error}");
    assert!(
        error.starts_with("pgkeep: error: cannot ") && error.contains("s3://faults-"),
        "the error names the object: {stderr}"
    );
    faults.set(Faults::None);
    assert_eq!(env.labels(), listed, "the failed backup published nothing");
    let label = env.backup();
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    env.pgkeep_ok(&["check"]);
    env.pgkeep_ok(&["verify"]);
    restores_exactly(&env, "after-outage", &label, &expected);
}
