//! The catalog `info`, `status` and `serve` read the repository through: what they say
//! agrees with what the repository holds after new WAL, a segment archived out of
//! order, `expire`, a damaged catalog, and a repository made anew at the same place; a
//! segment lost by hand shows once `verify` has run.

mod common;

use common::{Env, Pg};

fn info(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap()
}

/// The segments of timeline 1 in the repository's folder, sorted.
fn stored_segments(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.repo.join("main/wal/00000001"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    names
}

/// `info`'s count, first and last segment and gaps of timeline 1 equal the folder's.
fn assert_info_agrees(env: &Env, when: &str) {
    let info = info(env);
    let wal = &info["wal"][0];
    let stored = stored_segments(env);
    assert_eq!(wal["segments"], stored.len(), "{when}: {wal}");
    assert_eq!(wal["first_segment"], stored[0], "{when}: {wal}");
    assert_eq!(
        wal["last_segment"],
        *stored.last().unwrap(),
        "{when}: {wal}"
    );
    let contiguous = stored.windows(2).all(|w| segno(&w[1]) == segno(&w[0]) + 1);
    assert_eq!(
        wal["gaps"].as_array().unwrap().is_empty(),
        contiguous,
        "{when}: {wal}"
    );
}

/// The segment number of a segment name (16 MiB segments).
fn segno(name: &str) -> u64 {
    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).unwrap();
    hex(8..16) * 256 + hex(16..24)
}

/// Copies of a stored segment under names far past the server's WAL (from segment
/// 0/10000000 on), more than the catalog's lookback of them: the real segments are then
/// known to a call only from the catalog, not from its listing.
fn add_far_segments(env: &Env) {
    let dir = env.repo.join("main/wal/00000001");
    let source = dir.join(&stored_segments(env)[0]);
    let seg = pgkeep::format::wal::SegmentSize(16 << 20);
    for segno in 0x1000..0x1000 + pgkeep::engine::catalog::LOOKBACK + 50 {
        let copy = dir.join(seg.name(1, segno));
        std::fs::copy(&source, &copy).unwrap();
        common::chown_postgres(&copy);
    }
}

/// Writes and archives `n` more segments.
fn switch_segments(main: &common::Server, n: usize) {
    for _ in 0..n {
        main.sql("INSERT INTO t VALUES (1)");
        main.sql("SELECT pg_switch_wal()");
    }
    main.wait_archived();
}

#[test]
fn catalog_follows_the_repository() {
    let env = Env::new("catalog", Pg::new(15));
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.sql("CREATE TABLE t (i int)");
    env.backup();
    switch_segments(&main, 4);

    // Archived out of order: a segment that arrives after later ones were listed.
    let stored = stored_segments(&env);
    let late = stored[stored.len() - 2].clone();
    let place = env.repo.join("main/wal/00000001").join(&late);
    let aside = env.path("late-segment");
    std::fs::rename(&place, &aside).unwrap();
    assert_info_agrees(&env, "with a segment not yet there");
    std::fs::rename(&aside, &place).unwrap();
    switch_segments(&main, 2);
    assert_info_agrees(&env, "once the late segment came");

    // Lost by hand: reports learn it from verify, which lists everything.
    add_far_segments(&env);
    std::fs::rename(&place, &aside).unwrap();
    assert!(env.pgkeep_err(&["verify"]).contains(&late));
    assert_info_agrees(&env, "after verify found a segment lost");
    let status: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["status", "--json"])).unwrap();
    let findings = status[0]["findings"].to_string();
    assert!(
        findings.contains(&format!("{late} .. {late} are missing")),
        "{findings}"
    );
    std::fs::rename(&aside, &place).unwrap();
    assert!(!env.pgkeep_err(&["verify"]).contains(&late));
    assert_info_agrees(&env, "after verify found it back");

    // A damaged catalog is built again.
    let catalog = walk(&env.path("cache"))
        .into_iter()
        .find(|p| p.ends_with("main/catalog.json"))
        .expect("no catalog was written");
    common::damage::flip(&catalog, 10);
    assert_info_agrees(&env, "with the catalog damaged");

    // A repository made anew at the same place is not taken for the old one.
    std::fs::remove_dir_all(&env.repo).unwrap();
    std::fs::create_dir(&env.repo).unwrap();
    common::chown_postgres(&env.repo);
    env.pgkeep_ok(&["init"]);
    let only = env.backup();
    assert_eq!(env.labels(), [only]);
    switch_segments(&main, 1);
    assert_info_agrees(&env, "in a new repository at the same place");

    // Removed by expire: the WAL epoch moves on, and the catalog lists all WAL again.
    add_far_segments(&env);
    assert_info_agrees(&env, "before expire");
    let before = stored_segments(&env);
    env.write_config(&main, "[retention]\nkeep_last = 1\n");
    env.backup();
    env.pgkeep_ok(&["expire"]);
    assert!(
        stored_segments(&env)[0] > before[0],
        "expire removed no WAL"
    );
    assert_info_agrees(&env, "after expire");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        match path.is_dir() {
            true => out.extend(walk(&path)),
            false => out.push(path),
        }
    }
    out
}
