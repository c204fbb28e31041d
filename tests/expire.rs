//! Retention: the policy applied to a repository, crash safety of expire and backup,
//! and expire running beside backups and archive-push.

mod common;

use std::path::Path;

use common::{Env, Pg};
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

/// Copies of a real manifest at made-up dates: label `YYYYMMDDT120000Z`, stopped at noon.
fn fabricate(repo: &Path, real: &str, dates: &[&str]) {
    let dir = repo.join("main/backups");
    let json: serde_json::Value = serde_json::from_slice(
        &object::decode(&std::fs::read(dir.join(format!("{real}.manifest"))).unwrap()).unwrap(),
    )
    .unwrap();
    for date in dates {
        let mut m = json.clone();
        let label = format!("{}T120000Z", date.replace('-', ""));
        m["label"] = label.clone().into();
        m["start_time"] = format!("{date}T11:59:00Z").into();
        m["stop_time"] = format!("{date}T12:00:00Z").into();
        let bytes = object::encode(&serde_json::to_vec(&m).unwrap(), 1).unwrap();
        std::fs::write(dir.join(format!("{label}.manifest")), bytes).unwrap();
    }
    std::process::Command::new("chown")
        .arg("-R")
        .arg("postgres:")
        .arg(&dir)
        .status()
        .unwrap();
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

#[test]
fn policy_on_made_up_dates() {
    let env = Env::new("policy", Pg::new(15));
    let _main = env.primary();
    env.pgkeep_ok(&["init"]);
    let real = env.backup(); // today: the newest
    let base = std::fs::read_to_string(&env.config).unwrap();
    // Written table: policy -> survivors among the made-up backups (the real one, newest,
    // always survives).
    let table: [(&str, &[&str]); 5] = [
        ("keep_last = 2", &["2026-11-20"]),
        ("monthly = 3", &["2026-09-30", "2026-10-31"]),
        (
            "recovery_window_days = 3",
            &["2026-11-18", "2026-11-19", "2026-11-20"],
        ),
        ("weekly = 2\ndaily = 2", &["2026-11-14", "2026-11-20"]),
        ("keep_last = 1\nyearly = 2", &["2025-11-30", "2026-01-15"]), // 2026-01-15 is pinned
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
