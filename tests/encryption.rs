//! An encrypted repository: nothing stored shows the data, every flipped byte is caught,
//! a wrong key changes nothing, and key rotation rewrites no data object.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{ACCOUNTS_FINGERPRINT, Env, Pg};

const MARKER: &str = "pgkeep-secret-marker-0451";

/// Every stored object (lock files aside) by key, with its bytes.
fn objects(repo: &Path) -> BTreeMap<String, Vec<u8>> {
    common::repository_objects(repo)
        .into_iter()
        .map(|path| {
            let key = path
                .strip_prefix(repo)
                .unwrap()
                .to_string_lossy()
                .to_string();
            (key, std::fs::read(&path).unwrap())
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Replaces the `passphrase = ...` line of the config with `line`.
fn set_key(env: &Env, line: &str) {
    let config = std::fs::read_to_string(&env.config).unwrap();
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("passphrase") || l.starts_with("key_command") {
                line
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&env.config, config + "\n").unwrap();
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn encrypted_repository() {
    let env = Env::new("encrypted", Pg::new(15)).encrypted();
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(2);
    main.sql(&format!(
        "CREATE TABLE secrets AS SELECT g AS id, '{MARKER}' || g AS note FROM generate_series(1, 20000) g"
    ));
    let first = env.backup();
    main.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 3 = 0");
    let second = env.backup();
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    env.pgkeep_ok(&["check"]);

    // What the storage holds shows neither the data nor its hash; only the marker and the
    // key slots are plain, and every other object is sealed.
    let before = objects(&env.repo);
    let hash = blake3::hash(MARKER.as_bytes());
    for (key, bytes) in &before {
        assert!(
            !contains(bytes, MARKER.as_bytes()),
            "{key} holds the marker in the clear"
        );
        assert!(
            !contains(bytes, hash.as_bytes()),
            "{key} holds the marker's hash"
        );
        assert!(
            !contains(bytes, hash.to_hex().as_bytes()),
            "{key} holds the marker's hash"
        );
        if key != "pgkeep.repo" && !key.starts_with("keys/") {
            assert_eq!(&bytes[..4], b"PGKE", "{key} is not encrypted");
        }
    }

    // A wrong passphrase and a failing key command each say so and change nothing.
    set_key(&env, "passphrase = \"wrong\"");
    let err = env.pgkeep_err(&["backup"]);
    assert!(err.contains("opens none of the 1 key slots"), "{err}");
    set_key(&env, "key_command = \"echo vault sealed >&2; exit 3\"");
    let err = env.pgkeep_err(&["info"]);
    assert!(
        err.contains("key command") && err.contains("vault sealed"),
        "{err}"
    );
    assert_eq!(
        objects(&env.repo),
        before,
        "a refused key changed the repository"
    );

    // Rotation: add a key, switch to it, remove the old one.
    set_key(
        &env,
        &format!("passphrase = \"{}\"", "correct horse battery staple"),
    );
    let new_key = env.path("new.key");
    std::fs::write(&new_key, "a new passphrase\n").unwrap();
    common::chown_postgres(&new_key);
    std::fs::set_permissions(&new_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = env.pgkeep_err(&["key", "add", "--passphrase-file", new_key.to_str().unwrap()]);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&new_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let added = env.pgkeep_ok(&["key", "add", "--passphrase-file", new_key.to_str().unwrap()]);
    let listed = env.pgkeep_ok(&["key", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let old_slot = listed
        .lines()
        .find(|l| l.contains("opens with the configured key"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let err = env.pgkeep_err(&["key", "remove", &old_slot]);
    assert!(
        err.contains("switch the config to another key first"),
        "{err}"
    );
    set_key(
        &env,
        &format!("passphrase_file = \"{}\"", new_key.display()),
    );
    env.pgkeep_ok(&["key", "remove", &old_slot]);
    assert!(added.contains("added key slot"), "{added}");
    set_key(&env, "passphrase = \"correct horse battery staple\"");
    let err = env.pgkeep_err(&["info"]);
    assert!(
        err.contains("opens none of the 1 key slots"),
        "the old passphrase still opens it: {err}"
    );
    set_key(
        &env,
        &format!("passphrase_file = \"{}\"", new_key.display()),
    );
    let after = objects(&env.repo);
    let data = |objects: &BTreeMap<String, Vec<u8>>| {
        objects
            .iter()
            .filter(|(k, _)| !k.starts_with("keys/"))
            .map(|(k, v)| (k.clone(), blake3::hash(v)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        data(&after),
        data(&before),
        "rotation rewrote a data object"
    );
    env.pgkeep_ok(&["verify"]);
    for label in [&first, &second] {
        let server = env.restore_immediate_into(&format!("restored-{label}"), label);
        assert_eq!(server.sql("SELECT count(*) FROM secrets"), "20000");
        server.stop();
    }
    let server = env.restore_and_start("restored-end", &["--target-action", "promote"]);
    assert_eq!(server.sql(ACCOUNTS_FINGERPRINT), expected);
    server.stop();

    // A flipped byte anywhere is caught: in a pack, a WAL segment, a manifest.
    let pack = after.keys().find(|k| k.ends_with(".pack")).unwrap().clone();
    let wal = after
        .keys()
        .find(|k| k.contains("/wal/0000"))
        .unwrap()
        .clone();
    let manifest = format!("main/backups/{second}.manifest");
    for key in [&pack, &wal, &manifest] {
        let path = env.repo.join(key);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        flip_byte(&path, len / 2);
        let out = env.pgkeep(&["verify"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "verify missed a flipped byte in {key}: {stdout}"
        );
        let name = key.rsplit('/').next().unwrap();
        assert!(
            stdout.contains(name) || stderr.contains(name),
            "verify does not name {key}:\n{stdout}\n{stderr}"
        );
        flip_byte(&path, len / 2);
    }
    let path = env.repo.join(&manifest);
    flip_byte(&path, 100);
    let err = env.pgkeep_err(&[
        "restore",
        "--pgdata",
        env.path("bad").to_str().unwrap(),
        "--backup",
        &second,
    ]);
    assert!(err.contains("fails authentication"), "{err}");
    flip_byte(&path, 100);
    env.pgkeep_ok(&["verify"]);
}
