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

/// Checkpoints the primary and waits until the standby has replayed the checkpoint.
fn checkpoint_replayed(main: &Server, standby: &Server) {
    main.sql("CHECKPOINT");
    let lsn = main.sql("SELECT pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'")) != "t" {
        assert!(Instant::now() < deadline, "the standby did not replay");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a backup while the test (not pgkeep) switches WAL on the primary, so that the
/// segments the backup waits for fill quickly; returns what it printed.
fn backup_while_switching(env: &Env, main: &Server) -> String {
    let switching = AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while switching.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1500));
                main.sql("SELECT pg_switch_wal()");
            }
        });
        let _stop_switching = Stopping(&switching);
        env.pgkeep_ok(&["backup"])
    })
}

/// Clears its flag when dropped, also when a panic unwinds.
struct Stopping<'a>(&'a AtomicBool);

impl Drop for Stopping<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn standby_backup(pg: Pg) {
    scenario(pg, false);
}

/// Over `BASE_BACKUP`, with WAL summarized on the standby: the second backup has the
/// standby send only what changed.
#[test]
fn remote_pg18() {
    scenario(Pg::new(18), true);
}

fn scenario(pg: Pg, remote: bool) {
    let cluster = if remote {
        "backup_source = \"replication\"\n"
    } else {
        ""
    };
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
    standby.options = match remote {
        true => "-c archive_mode=always -c summarize_wal=on".into(),
        false => "-c archive_mode=always".into(),
    };
    standby.start();
    main.sql("ALTER SYSTEM SET archive_command = 'true'");
    main.sql("SELECT pg_reload_conf()");
    // The segments pg_basebackup gave the standby are not marked for archiving: the
    // backup must start from a checkpoint the standby replayed after archiving began.
    main.sql("SELECT pg_switch_wal()");
    checkpoint_replayed(&main, &standby);

    // The backup runs under load.
    let load = main.pgbench_load(2);
    let label = common::label_of(&backup_while_switching(&env, &main));
    std::thread::sleep(Duration::from_millis(800));
    load.stop(&main);
    assert_eq!(env.labels(), vec![label]);
    if remote {
        // A standby's backup starts at its last restartpoint: after a new checkpoint.
        checkpoint_replayed(&main, &standby);
        let printed = backup_while_switching(&env, &main);
        assert!(
            printed.contains("taken unread from the parent"),
            "{printed}"
        );
    }

    let targets = common::targets::record(&main);
    archived_through_standby(&main, &standby);
    common::targets::restore_each(&env, &targets);
}

on_each_version!(standby_backup);
