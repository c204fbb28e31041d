//! Asynchronous archiving on S3 (moto, with faults injected in between), encrypted:
//! the background pusher killed again and again under a pgbench load loses nothing
//! PostgreSQL was told is archived; a failing repository reaches PostgreSQL's log as
//! archive-push's error; a file changed after it was pushed is refused; archive-get
//! answers from segments fetched ahead, even with the service down; and a restore
//! recovering through the prefetcher holds exactly the rows of the source.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::faults::Faults;
use common::objects::Service;
use common::{ACCOUNTS_FINGERPRINT, Env, Pg};

/// SIGKILLs every background pusher of this environment; returns how many it killed.
fn kill_pushers(env: &Env) -> usize {
    let pattern = format!("{} .*archive-pusher", env.config.display());
    let out = std::process::Command::new("pkill")
        .args(["-9", "-e", "-f", &pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Waits until `log` contains `text`.
fn wait_for_log(log: &Path, text: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains(text)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn async_archiving_on_s3() {
    let env = Env::on_object_storage("async", Pg::new(18), Service::S3).encrypted();
    let main = env.primary();
    let spool = env.path("spool");
    let async_toml = format!(
        "\n[archive]\nasync = true\nspool_path = \"{}\"\npush_timeout = 20\n",
        spool.display()
    );
    env.write_config(&main, &async_toml);
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(5);
    let base = env.backup();
    let faults = env.faults.as_ref().unwrap();

    // Pushers killed mid-upload, under faults: nothing acknowledged is lost.
    faults.set(Faults::Random(15));
    let load = main.pgbench_load(2);
    let mut killed = 0;
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1500));
        main.sql("SELECT pg_switch_wal()");
        std::thread::sleep(Duration::from_millis(300));
        killed += kill_pushers(&env);
    }
    load.stop(&main);
    faults.set(Faults::None);
    assert!(killed >= 3, "only {killed} pushers were killed");
    main.sql("SELECT pg_switch_wal()");
    main.wait_archived();
    let checked = common::archived_exactly(&env, &main);
    assert!(
        checked > 5,
        "only {checked} archived segments were in pg_wal"
    );
    let expected = main.sql(ACCOUNTS_FINGERPRINT);

    // The repository down: PostgreSQL's log shows the pusher's error, naming it.
    faults.set(Faults::Down);
    main.sql("CREATE TABLE while_down AS SELECT 1 AS x");
    let stuck = main.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    main.sql("SELECT pg_switch_wal()");
    assert!(
        wait_for_log(
            &main.log,
            &format!("{stuck} is not archived in repository 1 (s3://")
        ),
        "PostgreSQL's log does not name the failing repository"
    );
    faults.set(Faults::None);
    // (After three failures the archiver waits a minute, unless new WAL wakes it.)
    main.sql("INSERT INTO while_down VALUES (2)");
    main.sql("SELECT pg_switch_wal()");
    main.wait_archived();

    // A file that changes after the pusher stored it is refused, then compared.
    let pg_wal = env.path("handmade/pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let name = "0000000100000000000000F0";
    let segment = std::fs::read(main.pgdata.join("pg_wal").join(&stuck)).unwrap();
    std::fs::write(pg_wal.join(name), &segment).unwrap();
    std::fs::write(pg_wal.join(format!("archive_status/{name}.ready")), "").unwrap();
    common::chown_postgres(&env.path("handmade"));
    let file = pg_wal.join(name);
    env.pgkeep_ok(&["archive-push", file.to_str().unwrap()]);
    // A status written under another config is not taken: the file is stored again.
    let status = |f: &str| {
        let dirs = std::fs::read_dir(spool.join("main")).unwrap();
        dirs.map(|d| d.unwrap().path().join("out").join(f))
            .find(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap())
    };
    let before = status(&format!("{name}.ok")).expect("a status for the pushed file");
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str("\n# changed\n");
    std::fs::write(&env.config, config).unwrap();
    env.pgkeep_ok(&["archive-push", file.to_str().unwrap()]);
    let after = status(&format!("{name}.ok")).expect("a status for the pushed file");
    assert_ne!(before, after, "the status of the old config was taken");
    let mut changed = segment.clone();
    changed[20_000] ^= 0xFF;
    std::fs::write(&file, &changed).unwrap();
    let err = env.pgkeep_err(&["archive-push", file.to_str().unwrap()]);
    assert!(
        err.contains("changed after the background pusher stored it"),
        "{err}"
    );
    let err = env.pgkeep_err(&["archive-push", file.to_str().unwrap()]);
    assert!(
        err.contains("already archived with different content"),
        "{err}"
    );

    // archive-get fetches ahead: the next segments answer with the service down.
    let done = common::done_segments(&main);
    let after = |name: &str| {
        let seg = u32::from_str_radix(&name[16..], 16).unwrap();
        format!("{}{:08X}", &name[..16], seg + 1)
    };
    let first = done
        .iter()
        .find(|f| {
            let (a, b) = (after(f), after(&after(f)));
            done.contains(&a) && done.contains(&b) && done.contains(&after(&b))
        })
        .expect("four consecutive archived segments in pg_wal");
    let next = [
        after(first),
        after(&after(first)),
        after(&after(&after(first))),
    ];
    let dest = env.path("got");
    env.pgkeep_ok(&["archive-get", first, dest.to_str().unwrap()]);
    // (Each data directory has its spool; this one is the test's working directory's.)
    let prefetched = |name: &str| {
        std::fs::read_dir(spool.join("main"))
            .unwrap()
            .any(|d| d.unwrap().path().join("in").join(name).exists())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !next.iter().all(|n| prefetched(n)) {
        assert!(
            Instant::now() < deadline,
            "the next segments were not fetched ahead"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    faults.set(Faults::Down);
    for n in &next {
        env.pgkeep_ok(&["archive-get", n, dest.to_str().unwrap()]);
        assert!(
            std::fs::read(&dest).unwrap()
                == std::fs::read(main.pgdata.join("pg_wal").join(n)).unwrap(),
            "prefetched {n} differs"
        );
    }
    faults.set(Faults::None);

    // A restore recovering through the prefetcher holds exactly the source's rows.
    main.stop();
    let restored = env.restore_and_start(
        "restored",
        &["--backup", &base, "--target-action", "promote"],
    );
    assert_eq!(restored.sql(ACCOUNTS_FINGERPRINT), expected);
    assert_eq!(restored.sql("SELECT count(*) FROM while_down"), "2");
    restored.stop();
}
