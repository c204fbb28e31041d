//! Two repositories at once, a local one first and an encrypted one on S3 (moto): a
//! backup reads the data directory once and both receive it; with S3 down archive-push
//! fails and names it; with the local repository gone, restore and recovery use S3.

mod common;

use common::faults::Faults;
use common::objects::Service;
use common::{ACCOUNTS_FINGERPRINT, Env, Pg, label_of};

/// Bytes of a figure such as "12.5 MiB" that follows `after` in `text`.
fn bytes_after(text: &str, after: &str) -> f64 {
    let rest = &text[text
        .find(after)
        .unwrap_or_else(|| panic!("no '{after}' in {text}"))
        + after.len()..];
    let mut words = rest.split_whitespace();
    let value: f64 = words.next().unwrap().parse().unwrap();
    let unit = words.next().unwrap().trim_end_matches(',');
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other} in {text}"),
    };
    value * scale
}

#[test]
fn local_and_s3() {
    let env = Env::on_object_storage("two-repos", Pg::new(15), Service::S3)
        .encrypted()
        .and_local_first();
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    env.pgkeep_ok(&["check"]);
    main.pgbench_init(4);

    // A table that changes between the first and second backups only.
    main.sql("CREATE TABLE steady AS SELECT g AS id, 0 AS v FROM generate_series(1, 100000) g");
    main.sql("VACUUM FREEZE steady");

    // The first backup is copied whole; the data directory is read once.
    let out = env.pgkeep_ok(&["backup"]);
    let first = label_of(&out);
    let size = bytes_after(&out, "): ");
    assert!(bytes_after(&out, "files, read ") <= size * 1.01, "{out}");
    assert!(
        out.contains(&format!("backup {first} copied to repository 2")),
        "{out}"
    );

    // An incremental backup copies only what changed, and reads only that from repository 1.
    main.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 2000");
    main.sql("UPDATE steady SET v = 1");
    main.sql("VACUUM FREEZE steady");
    let out = env.pgkeep_ok(&["backup"]);
    let second = label_of(&out);
    let copy_line = &out[out.find("copied to repository 2").unwrap()..];
    let copied = bytes_after(copy_line, ": read ");
    assert!(
        copied < size / 4.0,
        "the copy read {copied} bytes of {size}: {out}"
    );
    // A third backup, whose parent is not the oldest backup of repository 2: its copy
    // takes the unchanged chunks from repository 2's copy of that parent.
    main.sql(
        "UPDATE pgbench_accounts SET abalance = abalance + 3 WHERE aid BETWEEN 300000 AND 302000",
    );
    let third = env.backup();
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    env.pgkeep_ok(&["check"]);
    for repo in ["1", "2"] {
        assert_eq!(
            env.labels_in(repo),
            [first.clone(), second.clone(), third.clone()],
            "repository {repo}"
        );
    }
    let verified = env.pgkeep_ok(&["verify"]);
    assert_eq!(
        verified.matches("verify ok: 3 backups").count(),
        2,
        "{verified}"
    );
    // To its consistency point, so the copied data itself is what is checked.
    let args = [
        "--repo",
        "2",
        "--backup",
        &third,
        "--target",
        "immediate",
        "--target-action",
        "promote",
    ];
    let server = env.restore_and_start("from-s3", &args);
    assert_eq!(server.sql(ACCOUNTS_FINGERPRINT), expected);
    assert_eq!(
        server.sql("SELECT count(*), sum(v) FROM steady"),
        "100000|100000"
    );
    server.stop();

    // S3 down: the segment reaches the local repository, but archive-push fails and
    // names repository 2, so PostgreSQL keeps it; once S3 is back it is archived in both.
    let faults = env.faults.as_ref().unwrap();
    faults.set(Faults::Down);
    main.sql("CREATE TABLE late AS SELECT generate_series(1, 1000) AS n");
    main.sql("SELECT pg_switch_wal()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while main.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "archive-push succeeded with S3 down"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let segment = main.sql("SELECT last_failed_wal FROM pg_stat_archiver");
    let local_copy = env
        .repo
        .join(format!("main/wal/{}/{segment}", &segment[..8]));
    assert!(
        local_copy.exists(),
        "{segment} did not reach the local repository"
    );
    let log = std::fs::read_to_string(&main.log).unwrap();
    assert!(
        log.contains("repository 2 (s3://"),
        "the log does not name repository 2"
    );
    assert!(
        log.contains(&format!("{segment} is not archived in repository 2")),
        "{log}"
    );
    faults.set(Faults::None);
    let later = main.sql(ACCOUNTS_FINGERPRINT) + &main.sql("SELECT count(*) FROM late");
    env.pgkeep_ok(&["check"]);

    // The local repository is gone: restore falls back to S3, and so does recovery.
    std::fs::rename(&env.repo, env.path("repo-gone")).unwrap();
    let pgdata = env.path("fallback");
    let out = env.pgkeep(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("restoring from repository 2 instead"),
        "{stderr}"
    );
    let conf = std::fs::read_to_string(env.path("fallback/postgresql.auto.conf")).unwrap();
    assert!(conf.contains("--repo 2 archive-get"), "{conf}");
    let server = env.start_restored(&pgdata);
    assert_eq!(
        server.sql(ACCOUNTS_FINGERPRINT) + &server.sql("SELECT count(*) FROM late"),
        later
    );
    server.stop();
}
