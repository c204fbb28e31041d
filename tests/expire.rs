//! Retention: the policy applied to a repository, crash safety of expire and backup,
//! and expire running beside backups and archive-push.

mod common;

use std::path::Path;

use common::objects::Service;
use common::{ACCOUNTS_FINGERPRINT, Env, Pg};
use pgkeep::repo::object;

/// Labels of the published backups.
fn labels(repo: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo.join("main/backups"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".manifest")
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// The manifest of backup `label`, as JSON.
fn manifest_json(repo: &Path, label: &str) -> serde_json::Value {
    let path = repo.join(format!("main/backups/{label}.manifest"));
    serde_json::from_slice(&object::decode(&std::fs::read(path).unwrap()).unwrap()).unwrap()
}

/// Stores `m` as the manifest of backup `label`.
fn write_manifest(repo: &Path, label: &str, m: &serde_json::Value) {
    let dir = repo.join("main/backups");
    let bytes = object::encode(&serde_json::to_vec(m).unwrap(), 1).unwrap();
    std::fs::write(dir.join(format!("{label}.manifest")), bytes).unwrap();
    common::chown_postgres(&dir);
}

/// Copy `m` dated `date`, stopped at noon.
fn dated(m: &serde_json::Value, date: &str) -> serde_json::Value {
    let mut m = m.clone();
    m["start_time"] = format!("{date}T11:59:00Z").into();
    m["stop_time"] = format!("{date}T12:00:00Z").into();
    m
}

/// Moves a real backup's times to `date`, so no test depends on the day it runs.
fn retime(repo: &Path, label: &str, date: &str) {
    write_manifest(repo, label, &dated(&manifest_json(repo, label), date));
}

/// Copies of a real manifest at made-up dates: label `YYYYMMDDT120000Z`, stopped at noon.
fn fabricate(repo: &Path, real: &str, dates: &[&str]) {
    let json = manifest_json(repo, real);
    for date in dates {
        let label = format!("{}T120000Z", date.replace('-', ""));
        let mut m = dated(&json, date);
        m["label"] = label.clone().into();
        write_manifest(repo, &label, &m);
    }
}

fn set_retention(env: &Env, base: &str, retention: &str) {
    std::fs::write(&env.config, format!("{base}\n[retention]\n{retention}\n")).unwrap();
}

const DATES: [&str; 9] = [
    "2025-11-30",
    "2026-01-15",
    "2026-06-30",
    "2026-09-30",
    "2026-10-31",
    "2026-11-14",
    "2026-11-18",
    "2026-11-19",
    "2026-11-20",
];
const NOW: &str = "2026-11-21T12:00:00Z";

fn label(date: &str) -> String {
    format!("{}T120000Z", date.replace('-', ""))
}

/// The policy as of a fixed `--now`, over made-up backups before it. The one real
/// backup is dated after `--now`: it did not exist at that moment, so it is kept and
/// fills no rule's slot.
#[test]
fn policy_on_made_up_dates() {
    let env = Env::new("policy", Pg::new(15));
    let _main = env.primary();
    env.pgkeep_ok(&["init"]);
    let real = env.backup();
    retime(&env.repo, &real, "2026-11-22");
    let base = std::fs::read_to_string(&env.config).unwrap();
    // Written table: policy -> survivors among the made-up backups.
    let table: [(&str, &[&str]); 5] = [
        ("keep_last = 2", &["2026-11-19", "2026-11-20"]),
        ("monthly = 3", &["2026-09-30", "2026-10-31", "2026-11-20"]),
        (
            "recovery_window_days = 3",
            &["2026-11-18", "2026-11-19", "2026-11-20"],
        ),
        (
            "weekly = 2\ndaily = 2",
            &["2026-11-14", "2026-11-19", "2026-11-20"],
        ),
        // 2026-01-15 is pinned.
        (
            "keep_last = 1\nyearly = 2",
            &["2025-11-30", "2026-01-15", "2026-11-20"],
        ),
    ];
    for (policy, expected) in table {
        fabricate(&env.repo, &real, &DATES);
        if policy.contains("yearly") {
            env.pgkeep_ok(&["pin", &label("2026-01-15")]);
        }
        set_retention(&env, &base, policy);
        let before = labels(&env.repo);
        let dry = env.pgkeep_ok(&["expire", "--dry-run", "--now", NOW]);
        assert!(dry.contains("dry run: nothing was removed"), "{dry}");
        assert!(
            dry.contains(&format!("keep    {real}")) && dry.contains("made after --now"),
            "{policy}: {dry}"
        );
        assert_eq!(
            labels(&env.repo),
            before,
            "{policy}: a dry run removed something"
        );
        env.pgkeep_ok(&["expire", "--now", NOW]);
        let mut want: Vec<String> = expected.iter().map(|d| label(d)).collect();
        want.push(real.clone());
        want.sort();
        assert_eq!(labels(&env.repo), want, "{policy}\ndry run said:\n{dry}");
        for d in expected {
            assert!(
                dry.contains(&format!("keep    {}", label(d))),
                "{policy}: {dry}"
            );
        }
        env.pgkeep_ok(&["unpin", &label("2026-01-15")]);
        for l in labels(&env.repo).iter().filter(|l| **l != real) {
            std::fs::remove_file(env.repo.join(format!("main/backups/{l}.manifest"))).unwrap();
        }
    }
    env.pgkeep_ok(&["verify"]);
}

/// Runs pgkeep and kills it with SIGKILL after `delay`; true if it had finished first.
fn run_and_kill(env: &Env, args: &[&str], delay: std::time::Duration) -> bool {
    let mut child = common::as_postgres(&env.pgkeep)
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    finished
}

fn burst(main: &common::Server) {
    common::run_ok(
        main.client("pgbench")
            .args(["-n", "-t", "300", "-c", "2", "postgres"]),
    );
}

/// Restores `label` to `lsn` and checks its accounts hold `expected`.
fn restores_to(env: &Env, label: &str, lsn: &str, expected: &str) {
    static RESTORES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RESTORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let server = env.restore_and_start(
        &format!("restored-{n}-{label}"),
        &[
            "--backup",
            label,
            "--target-lsn",
            lsn,
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(
        server.sql(ACCOUNTS_FINGERPRINT),
        expected,
        "backup {label} restored the wrong data"
    );
    assert!(server.pgbench_consistent());
    server.stop();
}

fn with_retention(env: &Env) {
    let base = std::fs::read_to_string(&env.config).unwrap();
    set_retention(env, &base, "keep_last = 1\nexpire_after_backup = false");
}

/// Expire and backup killed at many points: afterwards verify passes and every published
/// backup restores.
fn crash_safety(pg: Pg) {
    let env = Env::new(&format!("crash{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(3);
    with_retention(&env);
    for round in 0..12u64 {
        burst(&main);
        env.backup();
        burst(&main);
        env.backup();
        let delay = std::time::Duration::from_millis(10 + round * 8);
        let finished = run_and_kill(&env, &["expire"], delay);
        eprintln!(
            "expire killed after {delay:?}: finished first: {finished}, backups left {}",
            labels(&env.repo).len()
        );
        env.pgkeep_ok(&["verify"]);
    }
    let started = std::time::Instant::now();
    env.backup();
    let backup_time = started.elapsed();
    for round in 1..=8u32 {
        burst(&main);
        let before = labels(&env.repo);
        let finished = run_and_kill(&env, &["backup"], backup_time * round / 9);
        eprintln!("backup killed at {round}/9: finished first: {finished}");
        let after = labels(&env.repo);
        assert!(
            after.len() == before.len() + finished as usize || after.len() == before.len() + 1,
            "{before:?} {after:?}"
        );
        env.pgkeep_ok(&["verify"]);
    }
    burst(&main);
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    let lsn = main.sql("SELECT pg_current_wal_lsn()");
    env.pgkeep_ok(&["check"]);
    for label in labels(&env.repo) {
        restores_to(&env, &label, &lsn, &expected);
    }
    env.pgkeep_ok(&["expire"]);
    env.pgkeep_ok(&["verify"]);
    let left = labels(&env.repo);
    assert_eq!(left.len(), 1);
    restores_to(&env, &left[0], &lsn, &expected);
}

on_each_version!(crash_safety);

/// Expire beside running backups and archive-push never removes what they need.
fn beside_backups(pg: Pg) {
    expire_beside_backups(Env::new(&format!("beside{}", pg.major), pg));
}

on_each_version!(beside_backups);

/// The same on S3, where lease objects, not `flock`, keep expire away from what a
/// running backup refers to.
#[test]
fn beside_backups_on_s3() {
    expire_beside_backups(Env::on_object_storage(
        "beside-s3",
        Pg::new(15),
        Service::S3,
    ));
}

fn expire_beside_backups(env: Env) {
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(3);
    with_retention(&env);
    env.backup();
    let load = main.pgbench_load(2); // archive-push runs all along
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..4 {
                env.backup();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        s.spawn(|| {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                env.pgkeep_ok(&["expire"]);
                env.pgkeep_ok(&["verify"]); // every published backup is still whole
                runs += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
    });
    load.stop(&main);
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    let lsn = main.sql("SELECT pg_current_wal_lsn()");
    env.pgkeep_ok(&["check"]);
    env.pgkeep_ok(&["verify"]);
    env.pgkeep_ok(&["expire"]);
    env.pgkeep_ok(&["verify"]);
    let left = env.labels();
    assert_eq!(left.len(), 1);
    restores_to(&env, &left[0], &lsn, &expected);
}

/// A backup that changed little stores a pack of tiny deltas, not much larger than its
/// own index. Once its neighbours expire, collection copies the live chunks into a pack
/// of their own; later collections must leave that pack alone: copying it again frees
/// nothing, and could write the same bytes under the same name, which the rewrite then
/// removed (a loss first seen with `expire` running every 50 ms beside backups).
fn tiny_changes_survive_collection(pg: Pg) {
    let env = Env::new(&format!("tiny{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(1);
    with_retention(&env);
    env.backup();
    main.sql("UPDATE pgbench_accounts SET abalance = 7 WHERE aid = 1");
    env.backup();
    let label = env.backup();
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    env.pgkeep_ok(&["expire"]);
    for _ in 0..2 {
        let again = env.pgkeep_ok(&["expire"]);
        assert!(again.contains("removed 0 packs, rewrote 0,"), "{again}");
        env.pgkeep_ok(&["verify"]);
    }
    env.pgkeep_ok(&["check"]);
    let server = env.restore_and_start("restored", &["--backup", &label]);
    assert_eq!(server.sql(ACCOUNTS_FINGERPRINT), expected);
}

on_each_version!(tiny_changes_survive_collection);
