//! Connection settings resolved the way libpq resolves them, so that a DBA's existing
//! conninfo strings, URIs, `PG*` variables, service files and `~/.pgpass` just work.
//!
//! Order of precedence (as in libpq): the conninfo itself, then the service named in it or
//! in `PGSERVICE`, then the environment, then built-in defaults. The password, if still
//! unset, comes from the password file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::tls::{self, Need};

/// Keywords pgkeep understands, with the environment variable libpq reads for each.
const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("dbname", Some("PGDATABASE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("application_name", Some("PGAPPNAME")),
    ("options", Some("PGOPTIONS")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("service", Some("PGSERVICE")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("replication", None),
];

/// Fully resolved settings for one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnParams {
    /// Host names, IP addresses or Unix socket directories (absolute paths).
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub user: String,
    pub dbname: String,
    pub password: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub application_name: String,
    pub options: Option<String>,
    pub sslmode: String,
    /// CA certificates to check the server's certificate against (`sslrootcert`).
    pub sslrootcert: Option<PathBuf>,
    /// The client certificate and its key (`sslcert`, `sslkey`).
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

/// Parses `conninfo` (keyword/value string or `postgres://` URI) and completes it from
/// the service file, the environment, the defaults and the password file.
pub fn resolve(conninfo: &str) -> Result<ConnParams> {
    resolve_with(conninfo, &|k| std::env::var(k).ok())
}

fn resolve_with(conninfo: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnParams> {
    let mut map = parse(conninfo)?;
    let service = map.get("service").cloned().or_else(|| env("PGSERVICE"));
    if let Some(service) = service {
        for (k, v) in service_params(&service, env)? {
            map.entry(k).or_insert(v);
        }
    }
    for (key, var) in KEYWORDS {
        if let Some(value) = var.and_then(env) {
            map.entry(key.to_string()).or_insert(value);
        }
    }
    let os_user = env("USER")
        .or_else(|| env("LOGNAME"))
        .unwrap_or_else(|| "postgres".into());
    let hosts: Vec<String> = map
        .get("host")
        .or(map.get("hostaddr"))
        .map(|h| h.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| vec![default_socket_dir()]);
    let ports = match map.get("port") {
        Some(p) => p
            .split(',')
            .map(|p| p.trim().parse::<u16>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                anyhow::anyhow!("port '{p}' in the connection settings is not a port number")
            })?,
        None => vec![5432],
    };
    let user = map.get("user").cloned().unwrap_or(os_user);
    let dbname = map.get("dbname").cloned().unwrap_or_else(|| user.clone());
    let connect_timeout = match map.get("connect_timeout") {
        Some(t) => Some(Duration::from_secs(t.parse().with_context(|| {
            format!("connect_timeout '{t}' in the connection settings is not a number of seconds")
        })?)),
        None => None,
    };
    let sslmode = map
        .get("sslmode")
        .cloned()
        .unwrap_or_else(|| "prefer".into());
    if ![
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ]
    .contains(&sslmode.as_str())
    {
        bail!(
            "sslmode '{sslmode}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
        );
    }
    let mut params = ConnParams {
        hosts,
        ports,
        user,
        dbname,
        password: map.get("password").cloned(),
        connect_timeout,
        application_name: map
            .get("application_name")
            .cloned()
            .unwrap_or_else(|| "pgkeep".into()),
        options: map.get("options").cloned(),
        sslmode,
        sslrootcert: map.get("sslrootcert").map(PathBuf::from),
        sslcert: map.get("sslcert").map(PathBuf::from),
        sslkey: map.get("sslkey").map(PathBuf::from),
    };
    if params.password.is_none() {
        let passfile = map
            .get("passfile")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")));
        if let Some(file) = passfile {
            params.password = password_from_file(&file, &params)?;
        }
    }
    Ok(params)
}

/// Debian's (and most packagers') default socket directory, else PostgreSQL's own default.
/// libpq has this compiled in (`DEFAULT_PGSOCKET_DIR`); pgkeep takes the packagers' one
/// where it exists, which is what the system's libpq uses on Debian and Red Hat.
fn default_socket_dir() -> String {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql"
    } else {
        "/tmp"
    }
    .into()
}

/// Parses a conninfo string or URI into keyword/value pairs, rejecting unknown keywords.
pub fn parse(conninfo: &str) -> Result<BTreeMap<String, String>> {
    let trimmed = conninfo.trim();
    let pairs = if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        parse_uri(trimmed)?
    } else {
        parse_keyword_value(trimmed)?
    };
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if !KEYWORDS.iter().any(|(known, _)| *known == k) {
            bail!(
                "unknown connection keyword '{k}'; pgkeep understands {}",
                KEYWORDS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        map.insert(k, v);
    }
    Ok(map)
}

fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            bail!("connection setting '{key}' has no '=value'; write it as {key}=value");
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        bail!("the quoted value of connection setting '{key}' has no closing quote")
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                bail!("bad percent-encoding in connection URI near '{}'", &s[i..])
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("connection URI is not valid UTF-8 after percent-decoding")
}

/// `postgresql://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`
fn parse_uri(uri: &str) -> Result<Vec<(String, String)>> {
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, dbname) = rest.split_once('/').unwrap_or((rest, ""));
    let mut out = Vec::new();
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            if !user.is_empty() {
                out.push(("user".into(), percent_decode(user)?));
            }
            if userinfo.contains(':') {
                out.push(("password".into(), percent_decode(password)?));
            }
            hosts
        }
        None => authority,
    };
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    for spec in hostspec.split(',').filter(|s| !s.is_empty()) {
        let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .context("connection URI has an unclosed '[' in its host")?;
            (h.to_string(), after.strip_prefix(':').unwrap_or(""))
        } else {
            let (h, p) = spec.split_once(':').unwrap_or((spec, ""));
            (percent_decode(h)?, p)
        };
        hosts.push(host);
        ports.push(port.to_string());
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        out.push(("host".into(), hosts.join(",")));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        out.push(("port".into(), ports.join(",")));
    }
    if !dbname.is_empty() {
        out.push(("dbname".into(), percent_decode(dbname)?));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .context("connection URI query parameter without '='")?;
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

/// Reads the `[service]` section from the user's and the system's service files.
fn service_params(
    service: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    match env("PGSERVICEFILE") {
        Some(f) => files.push(PathBuf::from(f)),
        None => files.extend(env("HOME").map(|h| Path::new(&h).join(".pg_service.conf"))),
    }
    let sysconf = env("PGSYSCONFDIR").unwrap_or_else(|| "/etc/postgresql-common".into());
    files.push(Path::new(&sysconf).join("pg_service.conf"));
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let mut in_section = false;
        let mut found = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                if in_section {
                    break;
                }
                in_section = name == service;
            } else if in_section {
                let (k, v) = line.split_once('=').with_context(|| {
                    format!(
                        "service file {} has a malformed line '{line}'",
                        file.display()
                    )
                })?;
                found.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        if in_section {
            return Ok(found);
        }
    }
    bail!(
        "service '{service}' is not defined in any service file ({})",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The host name a `.pgpass` line must match, as libpq's `passwordFromFile` has it: an
/// empty host, or the default socket directory, is `localhost`; any other socket
/// directory is matched as the path it is.
fn pgpass_host(host: &str) -> &str {
    if host.is_empty() || host == default_socket_dir() {
        "localhost"
    } else {
        host
    }
}

/// Looks up the password in a `.pgpass`-format file, ignoring it (as libpq does) if
/// group or others can read it.
fn password_from_file(file: &Path, params: &ConnParams) -> Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(file) else {
        return Ok(None);
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access and is ignored; chmod 0600 it",
            file.display()
        );
        return Ok(None);
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read password file {}", file.display()))?;
    let host = pgpass_host(params.hosts.first().map_or("", String::as_str));
    let port = params.ports.first().copied().unwrap_or(5432).to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if matches(&fields[0], host)
            && matches(&fields[1], &port)
            && matches(&fields[2], &params.dbname)
            && matches(&fields[3], &params.user)
        {
            return Ok(Some(fields[4..].join(":")));
        }
    }
    Ok(None)
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

impl ConnParams {
    /// Settings for the `postgres` crate's client.
    pub fn to_client_config(&self) -> Result<postgres::Config> {
        let mut cfg = postgres::Config::new();
        for host in &self.hosts {
            cfg.host(host);
        }
        for port in &self.ports {
            cfg.port(*port);
        }
        cfg.user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name);
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        if let Some(t) = self.connect_timeout {
            cfg.connect_timeout(t);
        }
        if let Some(o) = &self.options {
            cfg.options(o);
        }
        let first = self.hosts.first().map_or("", String::as_str);
        cfg.ssl_mode(match tls::need(self, first) {
            Need::Never => postgres::config::SslMode::Disable,
            Need::IfOffered => postgres::config::SslMode::Prefer,
            Need::Always => postgres::config::SslMode::Require,
        });
        Ok(cfg)
    }

    /// These settings once per server they name, each with its own host and port (the
    /// port of the same place in the list, else the only one), tried in order as libpq
    /// does; TLS is decided per server.
    fn each_host(&self) -> Vec<ConnParams> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, host)| ConnParams {
                hosts: vec![host.clone()],
                ports: vec![
                    self.ports
                        .get(i)
                        .or(self.ports.first())
                        .copied()
                        .unwrap_or(5432),
                ],
                ..self.clone()
            })
            .collect()
    }

    /// What `connect` gives for the first server of these settings it reaches, each
    /// tried in order as libpq does; the last failure if none is reached.
    pub fn first_reachable<T>(&self, connect: impl Fn(&ConnParams) -> Result<T>) -> Result<T> {
        let mut failure = None;
        for one in self.each_host() {
            match connect(&one) {
                Ok(connected) => return Ok(connected),
                Err(e) => failure = Some(e),
            }
        }
        Err(failure.unwrap_or_else(|| anyhow::anyhow!("the connection settings name no host")))
    }

    /// `host:port` of the first server, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}:{}",
            self.hosts.join(","),
            self.ports.first().copied().unwrap_or(5432)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn keyword_value_with_quotes() {
        let m = parse("host=/tmp  port = 5433 dbname='my db' password='it\\'s'").unwrap();
        assert_eq!(m["host"], "/tmp");
        assert_eq!(m["port"], "5433");
        assert_eq!(m["dbname"], "my db");
        assert_eq!(m["password"], "it's");
        assert!(parse("host").is_err());
        assert!(
            parse("hots=x")
                .unwrap_err()
                .to_string()
                .contains("unknown connection keyword 'hots'")
        );
    }

    #[test]
    fn uri_forms() {
        let m =
            parse("postgresql://app:s%40cret@db1:5433,[::1]:5434/sales?sslmode=disable").unwrap();
        assert_eq!(m["user"], "app");
        assert_eq!(m["password"], "s@cret");
        assert_eq!(m["host"], "db1,::1");
        assert_eq!(m["port"], "5433,5434");
        assert_eq!(m["dbname"], "sales");
        assert_eq!(m["sslmode"], "disable");
        let m = parse("postgres://%2Fvar%2Frun%2Fpostgresql/db").unwrap();
        assert_eq!(m["host"], "/var/run/postgresql");
    }

    #[test]
    fn environment_fills_gaps_but_does_not_override() {
        let env = env_of(&[
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGHOST", "/sock"),
            ("USER", "os"),
        ]);
        let p = resolve_with("user=explicit", &env).unwrap();
        assert_eq!(p.user, "explicit");
        assert_eq!(p.dbname, "explicit");
        assert_eq!(p.ports, vec![6000]);
        assert_eq!(p.hosts, vec!["/sock"]);
    }

    #[test]
    fn pgpass_matching_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:no\ndb1:5433:*:app:pa\\:ss\n*:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let conninfo = format!("host=db1 port=5433 user=app passfile={}", file.display());
        assert_eq!(
            resolve_with(&conninfo, &env_of(&[]))
                .unwrap()
                .password
                .as_deref(),
            Some("pa:ss")
        );
        let conninfo = format!("host=db2 user=app passfile={}", file.display());
        assert_eq!(
            resolve_with(&conninfo, &env_of(&[]))
                .unwrap()
                .password
                .as_deref(),
            Some("fallback")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            resolve_with(&conninfo, &env_of(&[])).unwrap().password,
            None
        );
    }

    #[test]
    fn service_file_supplies_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(&file, "[other]\nport=1\n[prod]\nhost=/run/pg\nport=5499\n").unwrap();
        let env = env_of(&[("PGSERVICEFILE", file.to_str().unwrap())]);
        let p = resolve_with("service=prod user=u", &env).unwrap();
        assert_eq!(p.hosts, vec!["/run/pg"]);
        assert_eq!(p.ports, vec![5499]);
        assert!(resolve_with("service=missing", &env).is_err());
    }
}
