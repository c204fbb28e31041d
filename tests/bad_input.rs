//! Bad input: one clear error, a non-zero exit, and nothing changed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Env, Pg};
use pgkeep::repo::lock::{LockMode, LockService};
use pgkeep::repo::object;
use pgkeep::repo::storage::LocalLocks;

/// Every file in a tree with its content hash. Temporary files (a concurrent writer's,
/// renamed or removed at any moment) are not part of the repository's state.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp.")
            {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(data) = std::fs::read(&p) {
                out.insert(
                    p.display().to_string(),
                    blake3::hash(&data).to_hex().to_string(),
                );
            }
        }
    }
    out
}

/// Runs pgkeep, expects failure with `needle` in the message and an unchanged repository.
fn refused(env: &Env, args: &[&str], needle: &str) {
    let before = snapshot(&env.repo);
    let err = env.pgkeep_err(args);
    assert!(
        err.contains(needle),
        "pgkeep {args:?}: expected '{needle}' in: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one sentence expected: {err}"
    );
    // A failed run is recorded in the history, as it should be; nothing else changes.
    let history = env.repo.join("main/history").display().to_string();
    let mut after = snapshot(&env.repo);
    after.retain(|k, _| !k.starts_with(&history) || before.contains_key(k));
    assert_eq!(after, before, "pgkeep {args:?} changed the repository");
}

fn bad_input(pg: Pg) {
    let env = Env::new(&format!("badinput{}", pg.major), pg);
    let main = env.primary();

    // Unreachable server: init fails before creating anything.
    let good_config = std::fs::read_to_string(&env.config).unwrap();
    let unreachable = good_config.replace(&format!("port={}", main.port), "port=1");
    std::fs::write(&env.config, &unreachable).unwrap();
    refused(&env, &["init"], "cannot connect to PostgreSQL");
    assert!(
        !env.repo.exists(),
        "a failed init must not create the repository"
    );

    // Unknown config key.
    std::fs::write(
        &env.config,
        good_config.replace("[backup]", "[backup]\narchive_timout = 5"),
    )
    .unwrap();
    refused(&env, &["info"], "unknown field `archive_timout`");
    std::fs::write(&env.config, &good_config).unwrap();

    // Not initialised yet.
    refused(&env, &["info"], "run `pgkeep init` first");

    env.pgkeep_ok(&["init"]);
    main.sql("CREATE TABLE t AS SELECT 1 AS x");
    let label = env.backup();
    // The backup's history file may still be on its way: nothing may change the
    // repository between the snapshots below but the commands under test.
    main.wait_archived();
    let pgdata = env.path("restored");
    let pgdata_s = pgdata.to_str().unwrap();

    // One backup at a time per cluster: the lock a running backup holds.
    let locks = LocalLocks::new(&env.repo);
    let running = locks
        .lock("main/locks/backup", LockMode::Exclusive, false)
        .unwrap();
    refused(
        &env,
        &["backup"],
        "another `pgkeep backup` of cluster 'main' is running",
    );
    drop(running);

    refused(
        &env,
        &[
            "restore",
            "--pgdata",
            pgdata_s,
            "--target-time",
            "2000-01-01 00:00:00+00",
        ],
        "no backup can recover to that target",
    );
    refused(
        &env,
        &[
            "restore",
            "--pgdata",
            pgdata_s,
            "--target-time",
            "2000-01-01 00:00:00",
        ],
        "time zone",
    );
    refused(
        &env,
        &["restore", "--pgdata", pgdata_s, "--target-lsn", "12345"],
        "is not an LSN",
    );
    refused(
        &env,
        &["restore", "--pgdata", pgdata_s, "--target-name", "nosuch"],
        "no restore point named 'nosuch'",
    );
    refused(
        &env,
        &["restore", "--pgdata", pgdata_s, "--backup", "nope"],
        "backup 'nope' does not exist",
    );
    refused(
        &env,
        &["restore", "--pgdata", pgdata_s, "--target-timeline", "7"],
        "timeline 7 has no history file",
    );
    refused(
        &env,
        &[
            "restore",
            "--pgdata",
            pgdata_s,
            "--tablespace-map",
            "/nowhere=/x",
        ],
        "has no tablespace there",
    );
    refused(
        &env,
        &[
            "restore",
            "--pgdata",
            pgdata_s,
            "--target",
            "immediate",
            "--target-action",
            "explode",
        ],
        "--target-action",
    );
    assert!(
        !pgdata.exists(),
        "a refused restore must not create the directory"
    );

    // A non-empty directory is never restored into.
    std::fs::create_dir(&pgdata).unwrap();
    std::fs::write(pgdata.join("precious"), b"keep me").unwrap();
    refused(&env, &["restore", "--pgdata", pgdata_s], "is not empty");
    assert_eq!(std::fs::read_dir(&pgdata).unwrap().count(), 1);
    assert_eq!(std::fs::read(pgdata.join("precious")).unwrap(), b"keep me");
    std::fs::remove_dir_all(&pgdata).unwrap();

    // A manifest that would write outside the data directory.
    let manifest_path = env.repo.join(format!("main/backups/{label}.manifest"));
    let original = std::fs::read(&manifest_path).unwrap();
    let json = String::from_utf8(object::decode(&original).unwrap()).unwrap();
    let evil = json.replacen("\"path\":\"PG_VERSION\"", "\"path\":\"../../escaped\"", 1);
    assert_ne!(evil, json);
    std::fs::write(&manifest_path, object::encode(evil.as_bytes(), 3).unwrap()).unwrap();
    refused(
        &env,
        &["restore", "--pgdata", pgdata_s, "--backup", &label],
        "not a plain relative path",
    );
    assert!(!pgdata.exists() && !env.dir.join("escaped").exists());

    // A corrupt manifest.
    let mut corrupt = original.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 1;
    std::fs::write(&manifest_path, &corrupt).unwrap();
    refused(
        &env,
        &["restore", "--pgdata", pgdata_s, "--backup", &label],
        "is corrupt",
    );
    assert!(!pgdata.exists());
    let err = env.pgkeep_err(&["verify"]);
    assert!(err.contains(&label) && err.contains("corrupt"), "{err}");
    std::fs::write(&manifest_path, &original).unwrap();
    env.pgkeep_ok(&["verify"]);
}

on_each_version!(bad_input);
