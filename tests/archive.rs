//! archive-push / archive-get: durable, idempotent, never overwriting, never partial.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Env, Pg, as_postgres};

/// A real, complete WAL segment of the cluster, copied into the scratch directory.
fn real_segment(main: &common::Server) -> Vec<u8> {
    let name = main.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    main.sql("SELECT pg_switch_wal()");
    std::fs::read(main.pgdata.join("pg_wal").join(name)).unwrap()
}

fn put(env: &Env, name: &str, data: &[u8]) -> PathBuf {
    let dir = env.path("incoming");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    common::chown_postgres(&dir);
    path
}

fn get(env: &Env, name: &str) -> (i32, Option<Vec<u8>>) {
    let dest = env.path("fetched");
    let _ = std::fs::remove_file(&dest);
    std::fs::create_dir_all(env.path("fetched-dir")).ok();
    let out = env.pgkeep(&["archive-get", name, dest.to_str().unwrap()]);
    (out.status.code().unwrap(), std::fs::read(&dest).ok())
}

fn archive_semantics(pg: Pg) {
    let env = Env::new(&format!("archive{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    let segment = real_segment(&main);
    let name = "0000000100000000000000F0";
    let path = put(&env, name, &segment);
    let p = path.to_str().unwrap();

    env.pgkeep_ok(&["archive-push", p]);
    env.pgkeep_ok(&["archive-push", p]); // identical duplicate: success
    assert_eq!(get(&env, name), (0, Some(segment.clone())));

    let mut changed = segment.clone();
    changed[10_000] ^= 0xFF;
    put(&env, name, &changed);
    let err = env.pgkeep_err(&["archive-push", p]);
    assert!(
        err.contains("already archived with different content"),
        "{err}"
    );
    assert_eq!(
        get(&env, name),
        (0, Some(segment.clone())),
        "stored segment must be unchanged"
    );

    // Missing files: exit 1, and nothing on stderr PostgreSQL would log as an error.
    let out = env.pgkeep(&[
        "archive-get",
        "0000000100000000000000F1",
        env.path("x").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&env, "00000005.history").0, 1);

    // Not WAL, wrong size, wrong system: refused.
    let err = env.pgkeep_err(&[
        "archive-push",
        put(&env, "postgresql.conf", b"x").to_str().unwrap(),
    ]);
    assert!(err.contains("is not a WAL file name"), "{err}");
    let err = env.pgkeep_err(&[
        "archive-push",
        put(&env, "0000000100000000000000F2", &segment[..8192])
            .to_str()
            .unwrap(),
    ]);
    assert!(err.contains("refusing a truncated"), "{err}");
    let mut foreign = segment.clone();
    foreign[24..32].copy_from_slice(&42u64.to_le_bytes());
    let err = env.pgkeep_err(&[
        "archive-push",
        put(&env, "0000000100000000000000F3", &foreign)
            .to_str()
            .unwrap(),
    ]);
    assert!(err.contains("comes from database system 42"), "{err}");

    // Killed at many moments: a segment is either absent or whole, and a retry succeeds.
    for i in 0..40u64 {
        let name = format!("00000001000000020000{i:04X}");
        let path = put(&env, &name, &segment);
        let mut child = as_postgres(&env.pgkeep)
            .arg("--config")
            .arg(&env.config)
            .arg("archive-push")
            .arg(&path)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(i * 1500));
        let _ = child.kill();
        let _ = child.wait();
        match get(&env, &name) {
            (1, None) => {}
            (0, Some(data)) => {
                assert!(data == segment, "{name}: partial or wrong segment returned")
            }
            other => panic!(
                "{name}: archive-get gave {:?}",
                (other.0, other.1.map(|d| d.len()))
            ),
        }
        env.pgkeep_ok(&["archive-push", path.to_str().unwrap()]);
        assert_eq!(get(&env, &name), (0, Some(segment.clone())));
    }
    assert_no_visible_temp_files(&env.repo);
}

/// Leftover temporary files are allowed (cleaned up later) but must never carry a WAL name.
fn assert_no_visible_temp_files(repo: &Path) {
    for entry in std::fs::read_dir(repo.join("main/wal/00000001")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        assert!(
            name.starts_with(".tmp.") || name.len() >= 24,
            "unexpected file {name}"
        );
    }
}

on_each_version!(archive_semantics);
