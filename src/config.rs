//! The TOML configuration file. Unknown keys are errors: a typo must never silently
//! turn a setting off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

pub mod serve;
pub use serve::{JobTable, NotifyConfig, ServeConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[repository]`, or `[[repository]]` repeated: every backup and WAL file goes to
    /// each; readers use the first that has what they need.
    #[serde(rename = "repository", deserialize_with = "one_or_many")]
    pub repositories: Vec<RepositoryConfig>,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub archive: ArchiveConfig,
    #[serde(default)]
    pub receive: ReceiveConfig,
    #[serde(default)]
    pub status: StatusConfig,
    #[serde(default)]
    pub serve: ServeConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub cluster: BTreeMap<String, ClusterConfig>,
    /// Absolute path of the file this came from, for `archive_command` and
    /// `restore_command` lines.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Where the repository is: a local directory or an object-storage URL.
    pub path: Location,
    /// Settings of the object-storage client (endpoint, region, credentials, ...), by
    /// the `object_store` crate's key names; unknown keys are errors.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Seconds a failing object-storage request is retried (with backoff) before the
    /// command gives up.
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout: u64,
    /// zstd level for data and WAL (0 stores uncompressed).
    #[serde(default = "default_compress_level")]
    pub compress_level: i32,
    /// Client-side encryption, chosen when the repository is created.
    #[serde(default)]
    pub encryption: Encryption,
    /// The secret that opens an encrypted repository: one of these, or the environment
    /// variable `PGKEEP_PASSPHRASE`.
    pub passphrase: Option<String>,
    /// A file whose contents (without a trailing newline) are the passphrase.
    pub passphrase_file: Option<PathBuf>,
    /// A shell command that prints the secret (from a KMS or a vault).
    pub key_command: Option<String>,
    /// Where pack indexes of an object-storage repository are cached (default
    /// `$XDG_CACHE_HOME/pgkeep`, else `~/.cache/pgkeep`).
    pub cache_path: Option<PathBuf>,
}

/// A `[repository]` table or an array of them. (Not an untagged enum: its error would
/// hide which key was wrong.)
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RepositoryConfig>, D::Error> {
    use serde::de::Error;
    match toml::Value::deserialize(d)? {
        toml::Value::Array(list) if list.is_empty() => {
            Err(D::Error::custom("at least one [[repository]] is needed"))
        }
        list @ toml::Value::Array(_) => list.try_into().map_err(D::Error::custom),
        one => Ok(vec![one.try_into().map_err(D::Error::custom)?]),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Encryption {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

/// Where a repository is: `path` in the config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Location {
    /// An absolute local (or mounted) directory.
    Local(PathBuf),
    /// `s3://bucket/prefix`, `az://container/prefix` or `gs://bucket/prefix`.
    Object(ObjectUrl),
}

/// An object-storage location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectUrl {
    pub service: ObjectService,
    /// The bucket (S3, GCS) or container (Azure).
    pub bucket: String,
    /// Key prefix inside the bucket, without slashes at either end; may be empty.
    pub prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectService {
    S3,
    Azure,
    Gcs,
}

impl ObjectService {
    pub fn scheme(self) -> &'static str {
        match self {
            ObjectService::S3 => "s3",
            ObjectService::Azure => "az",
            ObjectService::Gcs => "gs",
        }
    }
}

impl std::fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.service.scheme(), self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Object(u) => write!(f, "{u}"),
        }
    }
}

impl TryFrom<String> for Location {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Location, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            let path = PathBuf::from(&text);
            if !path.is_absolute() {
                return Err(format!(
                    "repository.path must be an absolute path or an s3://, az:// or gs:// URL, not '{text}'"
                ));
            }
            return Ok(Location::Local(path));
        };
        let service = match scheme {
            "s3" => ObjectService::S3,
            "az" => ObjectService::Azure,
            "gs" => ObjectService::Gcs,
            _ => {
                return Err(format!(
                    "repository.path '{text}': unknown scheme {scheme}://; use s3://, az:// or gs:// (or an absolute local path)"
                ));
            }
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        let plain = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !s.is_empty()
                && s != "."
                && s != ".."
        };
        if !plain(bucket) || !(prefix.is_empty() || prefix.split('/').all(plain)) {
            return Err(format!(
                "repository.path '{text}' must be {scheme}://BUCKET/PREFIX, with letters, digits, '-', '_' and '.' between the slashes"
            ));
        }
        Ok(Location::Object(ObjectUrl {
            service,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Parallel workers; 0 means one per core.
    #[serde(default)]
    pub jobs: usize,
    /// Seconds a backup waits for its last WAL segment to reach the archive.
    #[serde(default = "default_archive_timeout")]
    pub archive_timeout: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            jobs: 0,
            archive_timeout: default_archive_timeout(),
        }
    }
}

/// `[archive]`: how archive-push and archive-get work with PostgreSQL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// archive-push answers from a background pusher that stores the segments marked
    /// ready ahead of PostgreSQL's calls, and archive-get from segments fetched ahead.
    #[serde(default, rename = "async")]
    pub asynchronous: bool,
    /// Local directory for the pusher's status files and prefetched segments (one
    /// subdirectory per cluster); must be writable by the user running PostgreSQL.
    #[serde(default = "default_spool_path")]
    pub spool_path: PathBuf,
    /// Segments the background pusher stores at once.
    #[serde(default = "default_push_jobs")]
    pub push_jobs: usize,
    /// Seconds an asynchronous archive-push waits for its segment before failing (and
    /// PostgreSQL trying again).
    #[serde(default = "default_push_timeout")]
    pub push_timeout: u64,
    /// Segments archive-get fetches ahead of recovery when `async` is on.
    #[serde(default = "default_get_ahead")]
    pub get_ahead: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            asynchronous: false,
            spool_path: default_spool_path(),
            push_jobs: default_push_jobs(),
            push_timeout: default_push_timeout(),
            get_ahead: default_get_ahead(),
        }
    }
}

fn default_spool_path() -> PathBuf {
    PathBuf::from("/var/spool/pgkeep")
}

/// Four uploads in flight hide object storage's per-request latency without
/// outrunning a server's WAL rate on two cores.
fn default_push_jobs() -> usize {
    4
}

fn default_push_timeout() -> u64 {
    60
}

fn default_get_ahead() -> usize {
    8
}

/// `[receive]`: how `receive-wal` streams WAL from the server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveConfig {
    /// The physical replication slot (created if missing); unset, `pgkeep_CLUSTER`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Local directory for the segment being streamed and those not yet stored; unset,
    /// `SPOOL_PATH/CLUSTER/receive`.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// Confirm each flush at once, so that the receiver can be a synchronous standby
    /// (named in `synchronous_standby_names` by its `application_name`).
    #[serde(default)]
    pub synchronous: bool,
    /// MiB of WAL held for the slot on the server above which receive-wal and `info`
    /// raise the alarm (the server's disk matters more than the backup).
    #[serde(default = "default_warn_slot_wal_mb")]
    pub warn_slot_wal_mb: u64,
}

impl Default for ReceiveConfig {
    fn default() -> Self {
        ReceiveConfig {
            slot: None,
            directory: None,
            synchronous: false,
            warn_slot_wal_mb: default_warn_slot_wal_mb(),
        }
    }
}

/// `[status]`: where `status` turns WARNING and CRITICAL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Age of the newest backup (defaults suit a daily backup).
    #[serde(default = "default_backup_age_warning")]
    pub backup_age_warning_hours: f64,
    #[serde(default = "default_backup_age_critical")]
    pub backup_age_critical_hours: f64,
    /// Seconds of WAL not yet durable in the repository.
    #[serde(default = "default_rpo_warning")]
    pub rpo_warning_seconds: f64,
    #[serde(default = "default_rpo_critical")]
    pub rpo_critical_seconds: f64,
    /// Age of the newest restore proof (defaults suit a weekly `prove`).
    #[serde(default = "default_proof_age_warning")]
    pub proof_age_warning_days: f64,
    #[serde(default = "default_proof_age_critical")]
    pub proof_age_critical_days: f64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            backup_age_warning_hours: default_backup_age_warning(),
            backup_age_critical_hours: default_backup_age_critical(),
            rpo_warning_seconds: default_rpo_warning(),
            rpo_critical_seconds: default_rpo_critical(),
            proof_age_warning_days: default_proof_age_warning(),
            proof_age_critical_days: default_proof_age_critical(),
        }
    }
}

fn default_backup_age_warning() -> f64 {
    26.0
}
fn default_backup_age_critical() -> f64 {
    50.0
}
fn default_rpo_warning() -> f64 {
    300.0
}
fn default_rpo_critical() -> f64 {
    900.0
}
fn default_proof_age_warning() -> f64 {
    8.0
}
fn default_proof_age_critical() -> f64 {
    32.0
}

/// 16 GiB: a thousand segments, hours of a busy server's WAL.
fn default_warn_slot_wal_mb() -> u64 {
    16 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The data directory, where pgkeep runs on the database host; without it the
    /// cluster is backed up over a replication connection.
    #[serde(default)]
    pub pgdata: Option<PathBuf>,
    /// libpq-style connection string or URI.
    #[serde(default)]
    pub connection: String,
    /// Where PostgreSQL's client programs (pg_dump, pg_restore, psql) are; unset, the
    /// oldest installed one new enough for the server is used.
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
    /// Where `backup` reads the cluster's files; see [`ClusterConfig::backup_source`].
    #[serde(default, rename = "backup_source")]
    backup_source_setting: Option<BackupSource>,
    /// Queries `prove` runs on the recovered copy, each of which must return true.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// A cron expression per job that `serve` runs (`[cluster.NAME.schedule]`).
    #[serde(default)]
    pub schedule: JobTable<String>,
    /// The IANA time zone of `schedule`, such as `Europe/Berlin`.
    #[serde(default = "serve::default_time_zone")]
    pub time_zone: String,
    /// A healthchecks-style URL per job: `/start` is pinged when it starts, the URL
    /// itself when it succeeds, `/fail` when it fails (`[cluster.NAME.heartbeat]`).
    #[serde(default)]
    pub heartbeat: JobTable<String>,
}

/// A check of a recovered copy's contents: one query returning one boolean.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// The database it runs in.
    #[serde(default = "default_probe_database")]
    pub database: String,
    pub sql: String,
}

fn default_probe_database() -> String {
    "postgres".into()
}

impl ClusterConfig {
    /// Where `backup` reads the cluster's files: as set, or `pgdata` if the config has
    /// one, else a replication connection.
    pub fn backup_source(&self) -> BackupSource {
        self.backup_source_setting.unwrap_or(match self.pgdata {
            Some(_) => BackupSource::DataDirectory,
            None => BackupSource::Replication,
        })
    }
}

/// Where a physical backup's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupSource {
    /// `pgdata`, read by pgkeep on the database host.
    DataDirectory,
    /// A `BASE_BACKUP` stream over a replication connection: pgkeep may run elsewhere.
    Replication,
}

/// zstd level 1: on WAL it stores within 1% of level 3 at twice the speed, and on data
/// files it keeps a backup as fast as copying the files uncompressed.
fn default_compress_level() -> i32 {
    1
}

fn default_retry_timeout() -> u64 {
    120
}

fn default_archive_timeout() -> u64 {
    60
}

/// Where the config path came from, for the advice when it cannot be read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// The built-in default path.
    Default,
    /// `--config` or `PGKEEP_CONFIG`.
    Given,
}

/// Why the config file at `path` cannot be read, and what to do.
fn unreadable(path: &Path, source: ConfigSource, err: &std::io::Error) -> anyhow::Error {
    let path = path.display();
    match (err.kind(), source) {
        (std::io::ErrorKind::NotFound, ConfigSource::Default) => anyhow::anyhow!(
            "config file {path} does not exist; write it (see the README's Set up) or name another with --config FILE or PGKEEP_CONFIG"
        ),
        (std::io::ErrorKind::NotFound, ConfigSource::Given) => anyhow::anyhow!(
            "config file {path} does not exist; check the path given with --config or PGKEEP_CONFIG"
        ),
        (std::io::ErrorKind::PermissionDenied, _) => anyhow::anyhow!(
            "config file {path} cannot be read by this user (permission denied); run pgkeep as the user that owns the repository (e.g. `sudo -u postgres pgkeep ...`) or let that user read the file"
        ),
        _ => anyhow::anyhow!("cannot read config file {path}: {err}"),
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl RepositoryConfig {
    /// What one repository's settings must satisfy; `n` is its place in the config.
    fn check(&self, n: usize) -> Result<()> {
        if matches!(self.path, Location::Local(_)) && !self.options.is_empty() {
            bail!(
                "repository {n} sets options of an object-storage client, but its path is a local directory; remove them or give an s3://, az:// or gs:// URL"
            );
        }
        let sources = [
            self.passphrase.is_some(),
            self.passphrase_file.is_some(),
            self.key_command.is_some(),
        ];
        if sources.iter().filter(|&&s| s).count() > 1 {
            bail!(
                "repository {n} sets more than one of passphrase, passphrase_file and key_command; keep one"
            );
        }
        if !(0..=22).contains(&self.compress_level) {
            bail!(
                "repository {n}: compress_level must be between 0 and 22 (zstd levels), not {}",
                self.compress_level
            );
        }
        Ok(())
    }
}

impl Config {
    pub fn load(path: &Path, source: ConfigSource) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, source, &e))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(&text, s.start));
            anyhow::anyhow!(
                "config file {} line {line}: {}",
                path.display(),
                e.message().trim()
            )
        })?;
        config.path = std::path::absolute(path)?;
        // archive_command runs in the data directory: a relative path would mean another place.
        for (key, p) in config
            .cluster
            .iter()
            .filter_map(|(n, c)| Some((format!("cluster.{n}.pgdata"), c.pgdata.as_ref()?)))
            .chain([("archive.spool_path".to_string(), &config.archive.spool_path)])
            .chain(
                config
                    .repositories
                    .iter()
                    .filter_map(|r| r.cache_path.as_ref())
                    .map(|p| ("repository.cache_path".to_string(), p)),
            )
        {
            if !p.is_absolute() {
                bail!(
                    "{key} in {} must be an absolute path, not '{}'",
                    path.display(),
                    p.display()
                );
            }
        }
        if config.archive.push_jobs == 0 || config.archive.push_timeout == 0 {
            bail!(
                "archive.push_jobs and archive.push_timeout in {} must be at least 1",
                path.display()
            );
        }
        for name in config.cluster.keys() {
            let ok = !name.is_empty()
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !ok {
                bail!(
                    "cluster name '{name}' in {} may use only letters, digits, '_', '-' and '.'",
                    path.display()
                );
            }
        }
        for (n, r) in config.repositories.iter().enumerate() {
            r.check(n + 1)
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        }
        let repos = &config.repositories;
        if let Some(dup) =
            (1..repos.len()).find(|&i| repos[..i].iter().any(|r| r.path == repos[i].path))
        {
            let dup = &repos[dup];
            bail!(
                "config file {}: repository {} is named twice; give each [[repository]] its own path",
                path.display(),
                dup.path
            );
        }
        Ok(config)
    }

    /// The cluster to work on: the one named, or the only one configured.
    pub fn select_cluster(&self, name: Option<&str>) -> Result<(&str, &ClusterConfig)> {
        match name {
            Some(n) => self
                .cluster
                .get_key_value(n)
                .map(|(k, v)| (k.as_str(), v))
                .with_context(|| {
                    format!(
                        "cluster '{n}' is not in {}; add a [cluster.{n}] section",
                        self.path.display()
                    )
                }),
            None => match self.cluster.len() {
                1 => Ok(self
                    .cluster
                    .iter()
                    .next()
                    .map(|(k, v)| (k.as_str(), v))
                    .unwrap()),
                0 => bail!(
                    "{} defines no cluster; add a [cluster.NAME] section",
                    self.path.display()
                ),
                _ => bail!(
                    "{} defines several clusters ({}); choose one with --cluster",
                    self.path.display(),
                    self.cluster.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            },
        }
    }

    pub fn jobs(&self) -> usize {
        if self.backup.jobs > 0 {
            self.backup.jobs
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgkeep.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, ConfigSource::Given)
    }

    #[test]
    fn minimal_config_and_selection() {
        let c =
            load("[repository]\npath='/r'\n[cluster.main]\npgdata='/d'\nconnection='port=5432'\n")
                .unwrap();
        assert_eq!(c.select_cluster(None).unwrap().0, "main");
        assert_eq!(c.repositories[0].compress_level, 1);
        assert!(c.select_cluster(Some("other")).is_err());
    }

    #[test]
    fn paths_must_be_absolute() {
        let err = load("[repository]\npath='repo'\n").unwrap_err().to_string();
        assert!(
            err.contains("repository.path") && err.contains("absolute"),
            "{err}"
        );
        let err = load("[repository]\npath='/r'\n[cluster.main]\npgdata='data'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.main.pgdata"), "{err}");
    }

    #[test]
    fn repository_locations() {
        let at = |path: &str| {
            load(&format!("[repository]\npath='{path}'\n")).map(|c| c.repositories[0].path.clone())
        };
        assert_eq!(at("/r").unwrap(), Location::Local("/r".into()));
        let Location::Object(url) = at("s3://bucket/some/prefix/").unwrap() else {
            panic!("not an object location")
        };
        assert_eq!(
            (url.service, url.bucket.as_str()),
            (ObjectService::S3, "bucket")
        );
        assert_eq!(url.prefix, "some/prefix");
        assert_eq!(url.to_string(), "s3://bucket/some/prefix");
        assert_eq!(at("gs://b").unwrap().to_string(), "gs://b");
        for bad in ["ftp://b/p", "s3://", "s3://b/../x", "az://b/a b"] {
            let err = at(bad).unwrap_err().to_string();
            assert!(err.contains("repository.path"), "{bad}: {err}");
        }
        let err = load("[repository]\npath='/r'\noptions={region='x'}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("local directory"), "{err}");
    }

    #[test]
    fn several_repositories() {
        let c = load("[[repository]]\npath='/r'\n[[repository]]\npath='s3://b/p'\nencryption='aes-256-gcm'\n").unwrap();
        assert_eq!(c.repositories.len(), 2);
        assert_eq!(c.repositories[1].encryption, Encryption::Aes256Gcm);
        let err = load("[[repository]]\npath='/r'\n[[repository]]\npath='/r/'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("named twice"), "{err}");
        let err = load("repository=[]\n").unwrap_err().to_string();
        assert!(err.contains("at least one"), "{err}");
        let err = load("[[repository]]\npath='/r'\n[[repository]]\npath='/q'\ncompres_level=3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("compres_level"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load("[repository]\npath='/r'\ncompres_level=3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("compres_level"), "{err}");
        let err = load("[repository]\npath='/r'\n[cluster.main]\npgdata='/d'\nconection='x'\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("conection") && err.contains("line 5:"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_files_get_advice_that_fits() {
        let missing = Path::new("/nonexistent/pgkeep.toml");
        let err = Config::load(missing, ConfigSource::Default)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("--config"),
            "{err}"
        );
        let err = Config::load(missing, ConfigSource::Given)
            .unwrap_err()
            .to_string();
        assert!(err.contains("check the path given"), "{err}");
    }
}

/// `[retention]` in the config. Every part is optional; parts combine as a union.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest N backups.
    pub keep_last: Option<usize>,
    /// Any moment in the last D days stays restorable.
    pub recovery_window_days: Option<u32>,
    /// Keep the newest backup of each of the N most recent days (weeks, months, years)
    /// that have a backup. Days are UTC; weeks are ISO weeks.
    #[serde(default)]
    pub daily: usize,
    #[serde(default)]
    pub weekly: usize,
    #[serde(default)]
    pub monthly: usize,
    #[serde(default)]
    pub yearly: usize,
    /// Keep WAL for point-in-time recovery only over the last D days; older surviving
    /// backups stay restorable to their own consistency point. Never shorter than the
    /// recovery window.
    pub wal_window_days: Option<u32>,
    /// Run `expire` after every successful backup (default: yes).
    #[serde(default = "yes")]
    pub expire_after_backup: bool,
    /// `[retention.dumps]`: how many logical backups to keep, counted per database.
    #[serde(default)]
    pub dumps: DumpRetention,
}

/// `[retention.dumps]`: the rules of `[retention]` that apply to logical backups, each
/// counted per database. Without a rule no dump is removed; the newest dump of each
/// database and pinned dumps are always kept.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DumpRetention {
    pub keep_last: Option<usize>,
    #[serde(default)]
    pub daily: usize,
    #[serde(default)]
    pub weekly: usize,
    #[serde(default)]
    pub monthly: usize,
    #[serde(default)]
    pub yearly: usize,
}

impl DumpRetention {
    pub fn has_rules(&self) -> bool {
        self.as_policy().has_rules()
    }

    /// The same rules as a backup policy (no recovery or WAL window: dumps have no WAL).
    pub fn as_policy(&self) -> Retention {
        Retention {
            keep_last: self.keep_last,
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
            yearly: self.yearly,
            ..Retention::default()
        }
    }
}

fn yes() -> bool {
    true
}

impl Retention {
    pub fn has_rules(&self) -> bool {
        self.keep_last.is_some()
            || self.recovery_window_days.is_some()
            || self.daily + self.weekly + self.monthly + self.yearly > 0
    }
}
