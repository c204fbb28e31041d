//! Notices: a failed (or, with `on_success`, a finished) job, a skipped job, a
//! threshold crossed and cleared; sent to each webhook, by mail and to a command hook.
//! Heartbeat URLs are pinged as jobs start and end, so that a silent `serve` alerts
//! by itself.
//!
//! Notices go out one at a time, in order, from one task: a "cleared" never overtakes
//! the alert it clears. A channel that fails is logged and the others still get it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use super::jobs::Job;
use crate::config::serve::{Email, SmtpSecurity, WebhookFormat, read_secret};
use crate::config::{JobTable, NotifyConfig};
use crate::engine::operations::status::Level;

/// How long one webhook, heartbeat or mail may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    JobFailed,
    JobSucceeded,
    JobSkipped,
    /// Stopped because serve stopped, or not run before it did.
    JobStopped,
    Alert,
    Cleared,
}

/// One notice, as webhooks receive it (JSON) and as the command hook reads it.
#[derive(Serialize, Clone, Debug)]
pub struct Notice {
    pub event: Event,
    pub cluster: String,
    /// The job, for job events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The repository and the `status` check, for alerts and clears.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    pub level: Level,
    pub message: String,
    pub time: DateTime<Utc>,
    pub host: String,
}

impl Notice {
    /// One line for a chat message or a mail subject.
    pub fn headline(&self) -> String {
        let what = match (self.event, &self.job, &self.check) {
            (Event::JobFailed, Some(job), _) => format!("{job} FAILED"),
            (Event::JobSucceeded, Some(job), _) => format!("{job} succeeded"),
            (Event::JobSkipped, Some(job), _) => format!("{job} skipped"),
            (Event::JobStopped, Some(job), _) => format!("{job} stopped with serve"),
            (Event::Cleared, _, Some(check)) => format!("{check} back to OK"),
            (_, _, Some(check)) => format!("{check} {}", self.level.name()),
            _ => self.level.name().to_string(),
        };
        format!("pgkeep {}: cluster {}: {what}", self.host, self.cluster)
    }
}

/// The phase of a job a heartbeat tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    Start,
    Success,
    Fail,
}

enum Message {
    Notice(Notice),
    Beat {
        url: String,
        beat: Beat,
        body: String,
    },
}

/// The sending side: cheap to call from the scheduler, never blocks it.
pub struct Notifier {
    queue: mpsc::UnboundedSender<Message>,
    on_success: bool,
}

impl Notifier {
    /// Starts the sender task on `runtime`; its handle ends once the notifier is dropped
    /// and everything queued went out.
    pub fn start(
        config: &NotifyConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(Notifier, tokio::task::JoinHandle<()>)> {
        let channels = Channels::of(config)?;
        let (queue, mut inbox) = mpsc::unbounded_channel();
        let sender = runtime.spawn(async move {
            while let Some(message) = inbox.recv().await {
                channels.send(message).await;
            }
        });
        Ok((
            Notifier {
                queue,
                on_success: config.on_success,
            },
            sender,
        ))
    }

    pub fn notify(&self, notice: Notice) {
        if notice.event == Event::JobSucceeded && !self.on_success {
            return;
        }
        tracing::info!("notice: {}: {}", notice.headline(), notice.message);
        let _ = self.queue.send(Message::Notice(notice));
    }

    /// Pings the heartbeat URL of `job` in `heartbeats`, if it has one.
    pub fn beat(&self, heartbeats: &JobTable<String>, job: Job, beat: Beat, body: String) {
        if let Some(url) = heartbeats.get(job.name()) {
            let _ = self.queue.send(Message::Beat {
                url: url.clone(),
                beat,
                body,
            });
        }
    }
}

/// Where notices go, ready to send.
struct Channels {
    http: reqwest::Client,
    webhooks: Vec<(String, WebhookFormat)>,
    email: Option<Mailer>,
    command: Option<String>,
}

impl Channels {
    fn of(config: &NotifyConfig) -> Result<Channels> {
        // One process-wide TLS provider: ring, chosen at build time (see Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .build()
            .context("cannot set up the HTTP client for webhooks")?;
        Ok(Channels {
            http,
            webhooks: (config.webhook.iter())
                .map(|w| (w.url.clone(), w.format))
                .collect(),
            email: config.email.as_ref().map(Mailer::of).transpose()?,
            command: config.command.clone(),
        })
    }

    async fn send(&self, message: Message) {
        match message {
            Message::Beat { url, beat, body } => {
                let suffix = match beat {
                    Beat::Start => Some("start"),
                    Beat::Success => None,
                    Beat::Fail => Some("fail"),
                };
                let sent = match with_path_suffix(&url, suffix) {
                    Ok(url) => self.post(url.as_str(), body).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    tracing::warn!("heartbeat to {} failed: {e:#}", site(&url));
                }
            }
            Message::Notice(notice) => self.send_notice(notice).await,
        }
    }

    async fn send_notice(&self, notice: Notice) {
        for (url, format) in &self.webhooks {
            let body = match format {
                WebhookFormat::Json => serde_json::to_string(&notice),
                WebhookFormat::Slack => serde_json::to_string(&serde_json::json!({
                    "text": format!("{}\n{}", notice.headline(), notice.message)
                })),
            };
            let sent = match body {
                Ok(body) => self.post(url, body).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = sent {
                tracing::warn!("webhook to {} failed: {e:#}", site(url));
            }
        }
        if let Some(mailer) = &self.email {
            let (mailer, notice) = (mailer.clone(), notice.clone());
            match tokio::task::spawn_blocking(move || mailer.send(&notice)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("mail failed: {e:#}"),
                Err(e) => tracing::warn!("mail failed: {e}"),
            }
        }
        if let Some(command) = &self.command {
            let (command, notice) = (command.clone(), notice.clone());
            match tokio::task::spawn_blocking(move || run_hook(&command, &notice)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("notify command failed: {e:#}"),
                Err(e) => tracing::warn!("notify command failed: {e}"),
            }
        }
    }

    async fn post(&self, url: &str, body: String) -> Result<()> {
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("answered {}", response.status());
        }
        Ok(())
    }
}

/// `url` with `/suffix` added to its path (before any query), as healthchecks-style
/// services take `/start` and `/fail`.
fn with_path_suffix(url: &str, suffix: Option<&str>) -> Result<reqwest::Url> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| {
        anyhow!(
            "heartbeat URL '{}' is not a URL ({e}); correct it",
            site(url)
        )
    })?;
    if let Some(suffix) = suffix {
        parsed
            .path_segments_mut()
            .map_err(|()| anyhow!("heartbeat URL {} cannot take a path; correct it", site(url)))?
            .pop_if_empty()
            .push(suffix);
    }
    Ok(parsed)
}

/// Scheme and host of `url`, for logs: the rest of a webhook URL is often its secret.
fn site(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "(not a URL)".into(),
    }
}

/// How long the notify command may run before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The command hook: the notice as JSON on standard input, the main fields in the
/// environment; killed after `HOOK_TIMEOUT`.
fn run_hook(command: &str, notice: &Notice) -> Result<()> {
    let json = serde_json::to_vec(notice)?;
    let event = serde_json::to_value(notice.event)?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("PGKEEP_EVENT", event.as_str().unwrap_or_default())
        .env("PGKEEP_CLUSTER", &notice.cluster)
        .env("PGKEEP_LEVEL", notice.level.name())
        .env("PGKEEP_MESSAGE", &notice.message)
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start the notify command")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its input is not a failure.
        let _ = stdin.write_all(&json);
    }
    let deadline = std::time::Instant::now() + HOOK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{command}` ran longer than {} s and was killed",
                HOOK_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        bail!("`{command}` ended with {status}");
    }
    Ok(())
}

/// Mail over SMTP, set up once.
#[derive(Clone)]
struct Mailer {
    transport: lettre::SmtpTransport,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

impl Mailer {
    fn of(email: &Email) -> Result<Mailer> {
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        let tls = || -> Result<TlsParameters> {
            let mut params = TlsParameters::builder(email.server.clone());
            if let Some(ca) = &email.ca_file {
                let pem = std::fs::read(ca).with_context(|| {
                    format!("cannot read notify.email.ca_file {}", ca.display())
                })?;
                params = params.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| {
                    anyhow!(
                        "notify.email.ca_file {} is not a PEM certificate: {e}",
                        ca.display()
                    )
                })?);
            }
            Ok(params.build_rustls()?)
        };
        let (security, port) = match email.security {
            SmtpSecurity::Tls => (Tls::Wrapper(tls()?), 465),
            SmtpSecurity::Starttls => (Tls::Required(tls()?), 587),
            SmtpSecurity::None => (Tls::None, 25),
        };
        let mut builder = lettre::SmtpTransport::builder_dangerous(&email.server)
            .port(email.port.unwrap_or(port))
            .tls(security)
            .timeout(Some(SEND_TIMEOUT));
        let password = match (&email.password, &email.password_file) {
            (Some(p), None) => Some(p.clone()),
            (None, Some(file)) => Some(read_secret(file, "notify.email.password_file")?),
            (None, None) => None,
            (Some(_), Some(_)) => {
                bail!("notify.email sets both password and password_file; keep one")
            }
        };
        match (&email.user, password) {
            (Some(user), Some(password)) => {
                builder =
                    builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
                        user.clone(),
                        password,
                    ));
            }
            (None, None) => {}
            _ => bail!("notify.email needs both user and a password to log in, or neither"),
        }
        let mailbox = |address: &str, key: &str| {
            address
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| anyhow!("notify.email.{key} '{address}' is not a mail address: {e}"))
        };
        if email.to.is_empty() {
            bail!("notify.email.to is empty; give at least one address");
        }
        Ok(Mailer {
            transport: builder.build(),
            from: mailbox(&email.from, "from")?,
            to: (email.to.iter())
                .map(|a| mailbox(a, "to"))
                .collect::<Result<_>>()?,
        })
    }

    fn send(&self, notice: &Notice) -> Result<()> {
        use lettre::Transport;
        let mut message = lettre::Message::builder()
            .from(self.from.clone())
            .subject(notice.headline());
        for to in &self.to {
            message = message.to(to.clone());
        }
        let body = format!(
            "{}\n\n{}\n\nlevel: {}\ntime: {}\nhost: {}\n",
            notice.headline(),
            notice.message,
            notice.level.name(),
            notice.time.format("%Y-%m-%d %H:%M:%S UTC"),
            notice.host
        );
        self.transport.send(&message.body(body)?)?;
        Ok(())
    }
}
