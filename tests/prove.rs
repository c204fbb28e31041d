//! `prove`: a test restore of a backup into a scratch server, checked by recovery to
//! the target, pg_amcheck and the configured probes, recorded in the repository. A
//! good backup passes with its RTO; a probe that does not hold and a damaged chunk
//! fail, named, and the backup is flagged in `info`; nothing is left behind, also when
//! the proof is interrupted or killed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::damage::damage_table;
use common::scratch::{entries, none_left_in, processes_in};
use common::{Env, Pg, Server, as_postgres, chown_postgres, repository_objects};
use pgkeep::format::lsn::Lsn;
use pgkeep::repo::proof::Proof;

/// Holds at every point of the test: updates never change the count.
const PROBE_HOLDS: &str = "SELECT count(*) = 20000 FROM orders";
const PROBE_FAILS: &str = "SELECT count(*) > 20000 FROM orders";

fn configure(env: &Env, server: &Server, probe: &str) {
    env.write_config(
        server,
        &format!(
            "pg_bin = \"{}\"\nprobes = [{{ sql = \"{probe}\" }}]\n",
            env.pg.bin.display()
        ),
    );
}

fn info(env: &Env) -> serde_json::Value {
    serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap()
}

/// Backup `label` as `info --json` shows it.
fn backup_info(env: &Env, label: &str) -> serde_json::Value {
    info(env)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == label)
        .unwrap()
        .clone()
}

/// Every proof record of backup `label`, oldest first.
fn proofs_of(env: &Env, label: &str) -> Vec<Proof> {
    let mut out: Vec<Proof> = repository_objects(&env.repo)
        .iter()
        .filter(|o| o.starts_with(env.repo.join(format!("main/proofs/{label}"))))
        .map(|o| {
            let bytes = std::fs::read(o).unwrap();
            serde_json::from_slice(&pgkeep::repo::object::decode(&bytes).unwrap()).unwrap()
        })
        .collect();
    out.sort_by_key(|p| p.finished);
    out
}

fn prove(pg: Pg) {
    let env = Env::new(&format!("prove{}", pg.major), pg);
    let server = env.primary();
    configure(&env, &server, PROBE_HOLDS);
    env.pgkeep_ok(&["init"]);
    server.sql(
        "CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 20000) g",
    );
    server.sql("CREATE INDEX orders_note ON orders (note)");
    let scratch = env.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    chown_postgres(&scratch);
    let scratch_arg = scratch.to_str().unwrap().to_string();
    let prove_args = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["prove", "--scratch-dir", &scratch_arg];
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&str]| {
        let args = prove_args(extra);
        env.pgkeep(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let first = env.backup();
    server.sql("UPDATE orders SET note = 'changed ' || note WHERE id % 10 = 0");
    let second = env.backup();
    server.sql("UPDATE orders SET note = 'later ' || note WHERE id % 7 = 0");
    let written: Lsn = server.sql("SELECT pg_current_wal_lsn()").parse().unwrap();
    server.sql("SELECT pg_switch_wal()");
    server.wait_archived();
    let objects_before = repository_objects(&env.repo);

    // To the end of the WAL: the newest backup, every check passing, the RTO recorded.
    let out = run(&[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("proof of backup {second} (target latest) passed")),
        "{text}"
    );
    for check in [
        "restore".to_string(),
        "recovery".to_string(),
        "pg_amcheck".to_string(),
        format!("probe in postgres: {PROBE_HOLDS}"),
    ] {
        assert!(text.contains(&format!("ok      {check}\n")), "{text}");
    }
    let [proof] = &proofs_of(&env, &second)[..] else {
        panic!("one proof expected")
    };
    assert!(proof.passed);
    assert!(
        proof.lsn_reached.unwrap() >= written,
        "recovery stopped before the last change: {proof:?}"
    );
    let shown = &backup_info(&env, &second)["proof"];
    assert_eq!(shown["passed"], true, "{shown}");
    let rto = shown["rto_seconds"].as_f64().unwrap();
    assert!(
        proof.recovery_seconds.unwrap() > 0.0 && (rto - proof.rto_seconds().unwrap()).abs() < 1e-9,
        "{shown}"
    );
    // Nothing left and nothing archived by the scratch server: its record is all.
    let new: Vec<_> = repository_objects(&env.repo)
        .into_iter()
        .filter(|o| !objects_before.contains(o))
        .collect();
    assert!(
        new.iter()
            .all(|o| o.starts_with(env.repo.join("main/proofs"))
                || o.starts_with(env.repo.join("main/history"))),
        "a proof stored more than its record: {new:?}"
    );
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    assert!(processes_in(&scratch_arg).is_empty());

    // A random backup to a random position.
    let out = run(&["--target", "random"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("(target random: ") && text.contains(") passed"),
        "{text}"
    );

    // A probe that does not hold fails the proof, flagged until a proof passes again.
    configure(&env, &server, PROBE_FAILS);
    let out = run(&["--backup", &first, "--target", "immediate"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "proof of backup {first} (target immediate) FAILED"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "FAILED  probe in postgres: {PROBE_FAILS}: it returned false, not true"
        )),
        "{text}"
    );
    assert!(text.contains("ok      pg_amcheck"), "{text}");
    let attention = info(&env)["status"]["attention"].to_string();
    assert!(
        attention.contains(&format!("backup {first} FAILED its restore proof")),
        "{attention}"
    );
    configure(&env, &server, PROBE_HOLDS);
    assert!(
        run(&["--backup", &first, "--target", "immediate"])
            .status
            .success()
    );
    let attention = info(&env)["status"]["attention"].to_string();
    assert!(!attention.contains("restore proof"), "{attention}");

    interrupted(&env, &scratch_arg, &second, &prove_args(&[]));

    // A damaged chunk: the restore fails naming it, and the backup is flagged.
    let chunk = damage_table(&env, &server, &second, "orders");
    let out = run(&["--backup", &second]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED  restore: ") && text.contains(&format!("chunk {chunk}")),
        "{text}"
    );
    let shown = &backup_info(&env, &second)["proof"];
    assert_eq!(shown["passed"], false, "{shown}");
    assert!(shown["rto_seconds"].is_null(), "{shown}");
    assert!(
        shown["failure"]
            .as_str()
            .unwrap()
            .contains(&format!("chunk {chunk}")),
        "{shown}"
    );
    let rendered = env.pgkeep_ok(&["info"]);
    assert!(rendered.contains("PROOF FAILED"), "{rendered}");
    assert!(
        rendered.contains(&format!("backup {second} FAILED its restore proof")),
        "{rendered}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["status", "--json"])).unwrap();
    assert_eq!(status[0]["level"], "CRITICAL", "{status}");
    assert!(
        status[0]["findings"]
            .to_string()
            .contains(&format!("backup {second} FAILED its restore proof")),
        "{status}"
    );
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    none_left_in(&scratch_arg);

    // Input that names nothing to prove records nothing.
    let proofs = || {
        repository_objects(&env.repo)
            .into_iter()
            .filter(|o| o.starts_with(env.repo.join("main/proofs")))
            .count()
    };
    let before = proofs();
    let err = env.pgkeep_err(
        &prove_args(&["--backup", "nope"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(err.contains("backup 'nope' does not exist"), "{err}");
    assert_eq!(proofs(), before, "a proof was recorded for bad input");
}

/// Interrupted while the scratch server recovers: the server goes, and so does the
/// directory (killed outright, pgkeep leaves it to the next run, which removes it); no
/// proof is recorded.
fn interrupted(env: &Env, scratch: &str, label: &str, args: &[String]) {
    let recorded = proofs_of(env, label).len();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut child = as_postgres(&env.pgkeep)
            .arg("--config")
            .arg(&env.config)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while processes_in(scratch).is_empty() {
            assert!(Instant::now() < deadline, "prove never started its server");
            assert!(
                child.try_wait().unwrap().is_none(),
                "prove ended before the signal"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        assert!(!child.wait().unwrap().success());
        none_left_in(scratch);
        if signal != libc::SIGKILL {
            assert!(
                entries(Path::new(scratch)).is_empty(),
                "{signal}: {:?}",
                entries(Path::new(scratch))
            );
        }
    }
    assert_eq!(proofs_of(env, label).len(), recorded);
    // The next run removes what the killed one left, and proves.
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(env.pgkeep(&args).status.success());
    assert!(entries(Path::new(scratch)).is_empty());
}

on_each_version!(prove);
