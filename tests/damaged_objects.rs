//! Every object of a small repository damaged in turn (a flipped bit, a truncation, a few
//! bytes of garbage appended): every reading command gives a clear error or a finding,
//! never a panic or an abort; `verify` finds each damage; `archive-get` of a damaged WAL
//! file exits 126 so PostgreSQL stops recovery instead of ending it early.

mod common;

use std::path::Path;
use std::process::Output;

use common::{Env, Pg};

#[derive(Clone, Copy, Debug)]
enum Damage {
    FlipBit,
    Truncate,
    AppendGarbage,
}

/// A reproducible stream of numbers (the same damage on every run).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn damage(path: &Path, how: Damage, dice: &mut Dice) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        Damage::FlipBit => {
            let at = dice.below(bytes.len());
            bytes[at] ^= 1 << dice.below(8);
        }
        Damage::Truncate => bytes.truncate(dice.below(bytes.len())),
        Damage::AppendGarbage => {
            bytes.extend((0..16).map(|_| dice.below(256) as u8));
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Replaces `to` with a copy of `from`.
fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    common::run_ok(std::process::Command::new("cp").arg("-a").arg(from).arg(to));
}

/// What a command must never do with damaged input: panic, abort, or die of a signal.
fn assert_no_crash(what: &str, out: &Output, codes: &[i32]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| codes.contains(&c)) && !stderr.contains("panicked"),
        "{what}: exit {:?}\n{stderr}",
        out.status
    );
}

#[test]
fn every_damaged_object_is_an_error_not_a_crash() {
    let env = Env::new("damaged", Pg::new(15));
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(1);
    let full = env.backup();
    main.sql("UPDATE pgbench_accounts SET abalance = 1 WHERE aid <= 1000");
    env.backup();
    env.pgkeep_ok(&["pin", &full]);
    env.pgkeep_ok(&["check"]);
    main.stop();
    env.pgkeep_ok(&["verify"]);

    let pristine = env.path("pristine");
    copy_tree(&env.repo, &pristine);
    let restored = env.path("restored");
    std::fs::create_dir(&restored).unwrap();
    common::chown_postgres(&restored);
    let fetched = env.path("fetched");
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let mut cases = 0;
    for object in common::repository_objects(&pristine) {
        let rel = object.strip_prefix(&pristine).unwrap().to_path_buf();
        let name = rel.file_name().unwrap().to_string_lossy().into_owned();
        let is_wal = rel.starts_with("main/wal");
        for how in [Damage::FlipBit, Damage::Truncate, Damage::AppendGarbage] {
            copy_tree(&pristine, &env.repo);
            damage(&env.repo.join(&rel), how, &mut dice);
            let case = format!("{} {how:?}", rel.display());
            // Restore reads WAL only to check a target; a time target past the archive
            // makes it read every segment and then refuse, writing nothing.
            let restore: &[&str] = if is_wal {
                &["--target-time", "2100-01-01 00:00:00+00"]
            } else {
                &[]
            };
            // A new directory each time: creating files where many were just removed is
            // slow on ext4, which avoids reusing recently freed inodes.
            let restored = restored.join(cases.to_string());
            let mut restore_args = vec!["restore", "--pgdata", restored.to_str().unwrap()];
            restore_args.extend_from_slice(restore);
            for args in [
                vec!["info"],
                vec!["info", "--json"],
                vec!["expire", "--dry-run"],
                restore_args,
            ] {
                let out = env.pgkeep(&args);
                assert_no_crash(&format!("{case}: {args:?}"), &out, &[0, 1]);
            }
            let out = env.pgkeep(&["verify"]);
            assert_no_crash(&format!("{case}: verify"), &out, &[1]);
            if is_wal {
                let _ = std::fs::remove_file(&fetched);
                let out = env.pgkeep(&["archive-get", &name, fetched.to_str().unwrap()]);
                assert_no_crash(&format!("{case}: archive-get"), &out, &[126]);
                assert!(
                    !fetched.exists(),
                    "{case}: a damaged WAL file was handed over"
                );
            }
            cases += 1;
        }
    }
    eprintln!("{cases} damaged copies, each read by every command");
    assert!(cases >= 30, "too few objects to mean anything: {cases}");
}
