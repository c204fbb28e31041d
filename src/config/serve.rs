//! The settings of `pgkeep serve`: `[serve]` (endpoints and state), `[notify]` (where
//! notices go), and per cluster `schedule` and `heartbeat`.

use std::path::PathBuf;

use serde::Deserialize;

/// `[serve]`: where the long-running process listens and keeps its state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address of `/metrics` and the web view; anything but loopback needs a token.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token (or `?token=`) the endpoints require; required off loopback.
    pub token: Option<String>,
    /// A file whose contents (without a trailing newline) are the token.
    pub token_file: Option<PathBuf>,
    /// Where the last run time of each schedule and each job's log are kept.
    #[serde(default = "default_state_path")]
    pub state_path: PathBuf,
    /// Seconds between recomputations of each cluster's status (metrics, web view and
    /// threshold notices read the last one).
    #[serde(default = "default_refresh_seconds")]
    pub refresh_seconds: u64,
    /// Days a job's log is kept.
    #[serde(default = "default_log_days")]
    pub log_days: u64,
    /// Seconds a job is given to stop after SIGTERM before it is killed.
    #[serde(default = "default_stop_seconds")]
    pub stop_seconds: u64,
}

impl ServeConfig {
    /// What serve's settings must satisfy.
    pub fn check(&self) -> anyhow::Result<()> {
        for (key, value, range) in [
            ("refresh_seconds", self.refresh_seconds, 1..=86_400),
            ("log_days", self.log_days, 1..=36_500),
            ("stop_seconds", self.stop_seconds, 0..=86_400),
        ] {
            if !range.contains(&value) {
                anyhow::bail!(
                    "serve.{key} = {value} is out of range; give {} to {}",
                    range.start(),
                    range.end()
                );
            }
        }
        Ok(())
    }

    /// The token the endpoints require, if any.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.token_file) {
            (Some(t), None) => Ok(Some(t.clone())),
            (None, Some(file)) => read_secret(file, "serve.token_file").map(Some),
            (None, None) => Ok(None),
            (Some(_), Some(_)) => anyhow::bail!("serve sets both token and token_file; keep one"),
        }
    }
}

/// The contents of a secret's file without its line ending; `key` names the setting.
pub fn read_secret(file: &std::path::Path, key: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read {key} {}; make it readable by the user pgkeep runs as, or fix the path",
            file.display()
        )
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: default_listen(),
            token: None,
            token_file: None,
            state_path: default_state_path(),
            refresh_seconds: default_refresh_seconds(),
            log_days: default_log_days(),
            stop_seconds: default_stop_seconds(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9860".into()
}
fn default_state_path() -> PathBuf {
    PathBuf::from("/var/lib/pgkeep")
}
fn default_refresh_seconds() -> u64 {
    60
}
fn default_log_days() -> u64 {
    30
}
fn default_stop_seconds() -> u64 {
    60
}

/// `[notify]`: where failed jobs and crossed thresholds are told.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Also tell of jobs that succeeded.
    #[serde(default)]
    pub on_success: bool,
    #[serde(default)]
    pub webhook: Vec<Webhook>,
    pub email: Option<Email>,
    /// A shell command run per notice, with the notice as JSON on standard input and
    /// `PGKEEP_EVENT`, `PGKEEP_CLUSTER`, `PGKEEP_LEVEL` and `PGKEEP_MESSAGE` set.
    pub command: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
}

/// The body a webhook receives.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The notice as a JSON object.
    #[default]
    Json,
    /// `{"text": "..."}`, what Slack (and Mattermost, Rocket.Chat) incoming webhooks take.
    Slack,
}

/// Mail over SMTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Email {
    pub server: String,
    /// Default 465 with `tls`, 587 with `starttls`, 25 with `none`.
    pub port: Option<u16>,
    #[serde(default)]
    pub security: SmtpSecurity,
    /// CA certificate (PEM) to trust besides the system's, for a private mail server.
    pub ca_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587).
    #[default]
    Starttls,
    /// No encryption: only for a relay on the same host or network.
    None,
}

/// The jobs `serve` runs, by name: `backup`, `full` (a full backup), `dump` (`dump
/// --all`), `expire`, `verify` and `prove` (`prove --target random`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobTable<T> {
    pub backup: Option<T>,
    pub full: Option<T>,
    pub dump: Option<T>,
    pub expire: Option<T>,
    pub verify: Option<T>,
    pub prove: Option<T>,
}

impl<T> JobTable<T> {
    /// The setting of the job named `name`.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.entries()
            .into_iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v)
    }

    /// Each job's name and setting, in the order above.
    pub fn entries(&self) -> [(&'static str, Option<&T>); 6] {
        [
            ("backup", self.backup.as_ref()),
            ("full", self.full.as_ref()),
            ("dump", self.dump.as_ref()),
            ("expire", self.expire.as_ref()),
            ("verify", self.verify.as_ref()),
            ("prove", self.prove.as_ref()),
        ]
    }
}

/// The time zone of a cluster's schedule when it names none.
pub fn default_time_zone() -> String {
    "UTC".into()
}
