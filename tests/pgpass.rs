//! `~/.pgpass` matching for Unix-socket connections, with libpq (psql) as the oracle:
//! for each password file and host, pgkeep finds the password exactly when psql does.

mod common;

use std::path::Path;

use common::{Env, Pg, as_postgres};

/// libpq's default socket directory on Debian, where a `localhost` line also matches.
const DEFAULT_SOCKETS: &str = "/var/run/postgresql";

fn write_passfile(path: &Path, line: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{line}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    common::chown_postgres(path);
}

#[test]
fn pgpass_matches_as_libpq_does() {
    assert!(
        Path::new(DEFAULT_SOCKETS).is_dir(),
        "{DEFAULT_SOCKETS} is missing; scripts/test installs PostgreSQL, which creates it"
    );
    let env = Env::new("pgpass", Pg::new(15));
    let mut main = env.primary();
    main.sql("ALTER USER postgres PASSWORD 'secret'");
    std::fs::write(
        main.pgdata.join("pg_hba.conf"),
        "local all all scram-sha-256\n",
    )
    .unwrap();
    main.stop();
    main.options = format!(
        "-c unix_socket_directories='{},{DEFAULT_SOCKETS}'",
        main.socket.display()
    );
    main.start();
    env.pgkeep_err(&["init"]); // no password yet

    let passfile = env.path("pgpass");
    let own = main.socket.display().to_string();
    let cases = [
        ("localhost:*:*:*:secret", own.as_str()),
        ("localhost:*:*:*:secret", DEFAULT_SOCKETS),
        ("localhost:*:*:*:secret", ""),
        (&format!("{own}:*:*:*:secret"), own.as_str()),
        (&format!("{DEFAULT_SOCKETS}:*:*:*:secret"), DEFAULT_SOCKETS),
        ("*:*:*:*:secret", own.as_str()),
    ];
    let config = std::fs::read_to_string(&env.config).unwrap();
    let mut matched = 0;
    for (line, host) in cases {
        write_passfile(&passfile, line);
        let mut psql = as_postgres(main.pg.tool("psql"));
        if !host.is_empty() {
            psql.args(["-h", host]);
        }
        let libpq = psql
            .args(["-w", "-X", "-p", &main.port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-c", "SELECT 1"])
            .env("PGPASSFILE", &passfile)
            .output()
            .unwrap()
            .status
            .success();
        let host_setting = if host.is_empty() {
            String::new()
        } else {
            format!("host={host} ")
        };
        std::fs::write(
            &env.config,
            config.replace(
                &format!("host={} ", main.socket.display()),
                &format!("{host_setting}passfile={} ", passfile.display()),
            ),
        )
        .unwrap();
        let pgkeep = env.pgkeep(&["init"]);
        assert_eq!(
            pgkeep.status.success(),
            libpq,
            "{line} with host '{host}': psql {}, pgkeep said {}",
            if libpq {
                "connects"
            } else {
                "finds no password"
            },
            String::from_utf8_lossy(&pgkeep.stderr)
        );
        matched += libpq as usize;
    }
    assert!(
        (2..cases.len()).contains(&matched),
        "the cases must include both outcomes"
    );
}
