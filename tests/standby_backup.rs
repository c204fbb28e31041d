//! Backups from a hot standby: pgkeep's config names only the standby (its data
//! directory and its server), the primary runs pgbench and archives nothing, and the
//! WAL comes from the standby's own archiving (`archive_mode = always`). Restores reach
//! every kind of target exactly, whether the backup reads the standby's data directory
//! or has the standby stream it (`BASE_BACKUP`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Env, Pg, Server};

/// Switches WAL on the primary and waits until the standby has archived the segment.
fn archived_through_standby(main: &Server, standby: &Server) {
    let segment = main.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment {
        assert!(
            Instant::now() < deadline,
            "the standby did not archive {segment}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Clears its flag when dropped, also when a panic unwinds.
struct Stopping<'a>(&'a AtomicBool);

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn standby_backup(pg: Pg) {
    scenario(pg, "");
}

#[test]
fn remote_pg18() {
    scenario(Pg::new(18), "backup_source = \"replication\"\n");
}

/// The scenario with `cluster` as extra lines of the cluster's config.
fn scenario(pg: Pg, cluster: &str) {
    let env = Env::new(&format!("standby{}{}", pg.major, cluster.len()), pg);
    let main = env.primary();
    main.pgbench_init(5);
    main.sql("CREATE TABLE marks (id int, name text)");
    // The standby keeps the archive_command of the primary's config file (pgkeep's);
    // the primary itself then stops archiving.
    // The repository exists before the standby archives (a failing archive_command
    // makes PostgreSQL wait a minute before it tries again).
    let mut standby = env.standby_of(&main, "standby");
    env.write_config(&standby, cluster);
    env.pgkeep_ok(&["init"]);
    standby.stop();
    standby.options = "-c archive_mode=always".into();
    standby.start();
    main.sql("ALTER SYSTEM SET archive_command = 'true'");
    main.sql("SELECT pg_reload_conf()");
    // The segments pg_basebackup gave the standby are not marked for archiving: the
    // backup must start from a checkpoint the standby replayed after archiving began.
    main.sql("SELECT pg_switch_wal()");
    main.sql("CHECKPOINT");
    let lsn = main.sql("SELECT pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'")) != "t" {
        assert!(Instant::now() < deadline, "the standby did not replay");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The backup runs under load; the test (not pgkeep) switches WAL on the primary so
    // that the segments the backup waits for fill quickly.
    let load = main.pgbench_load(2);
    let switching = AtomicBool::new(true);
    let label = std::thread::scope(|scope| {
        scope.spawn(|| {
            while switching.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1500));
                main.sql("SELECT pg_switch_wal()");
            }
        });
        let _stop_switching = Stopping(&switching);
        env.backup()
    });
    std::thread::sleep(Duration::from_millis(800));
    load.stop(&main);
    assert_eq!(env.labels(), vec![label]);

    let targets = common::targets::record(&main);
    archived_through_standby(&main, &standby);
    common::targets::restore_each(&env, &targets);
}

on_each_version!(standby_backup);
