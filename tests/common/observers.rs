//! What watches `pgkeep serve` in the tests: an HTTP receiver for webhooks and
//! heartbeats, a mail server (aiosmtpd, `support/smtp_sink.py`) and Prometheus.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::objects::free_port;

/// One request an [`HttpSink`] received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// An HTTP server that answers 200 to everything and keeps what it got.
pub struct HttpSink {
    pub port: u16,
    got: Arc<Mutex<Vec<Request>>>,
}

impl HttpSink {
    pub fn start() -> HttpSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let keep = keep.clone();
                std::thread::spawn(move || answer(stream, &keep));
            }
        });
        HttpSink { port, got }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }

    /// Waits up to `seconds` for a request that `matches`.
    pub fn wait_for(&self, seconds: u64, matches: impl Fn(&Request) -> bool) -> Request {
        super::eventually(
            seconds,
            || self.requests().into_iter().find(&matches),
            || format!("no such request came; got {:#?}", self.requests()),
        )
    }
}

/// Serves the requests of one connection (keep-alive) until it closes.
fn answer(stream: TcpStream, keep: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        keep.lock().unwrap().push(Request {
            method,
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK")
            .is_err()
        {
            return;
        }
    }
}

/// aiosmtpd requiring STARTTLS and a login; each mail it accepts is a file.
pub struct SmtpSink {
    pub port: u16,
    pub ca: PathBuf,
    dir: PathBuf,
    child: Child,
}

pub const SMTP_USER: &str = "alerts";
pub const SMTP_PASSWORD: &str = "s3cret mail";

impl SmtpSink {
    /// Starts it with a certificate for `localhost` from a CA made under `dir` (`ca`).
    pub fn start(dir: &Path) -> SmtpSink {
        let dir = dir.join("smtp");
        std::fs::create_dir_all(dir.join("mail")).unwrap();
        super::certs::make_ca(&dir, "ca");
        super::certs::make_cert(&dir, "ca", "server", "localhost", Some("DNS:localhost"));
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/smtp_sink.py"
            ))
            .arg(port.to_string())
            .arg(dir.join("mail"))
            .arg(dir.join("server.crt"))
            .arg(dir.join("server.key"))
            .args([SMTP_USER, SMTP_PASSWORD])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start aiosmtpd ({e}); run scripts/test, which installs it")
            });
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "aiosmtpd did not start");
        SmtpSink {
            port,
            ca: dir.join("ca.crt"),
            dir,
            child,
        }
    }

    /// The mails received so far, oldest first.
    pub fn mails(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.join("mail"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str()?.parse::<u32>().ok())
                .unwrap_or(0)
        });
        // Unfolded headers, and quoted-printable soft line breaks joined: searchable text.
        names
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .replace("\r\n", "\n")
                    .replace("=\n", "")
                    .replace("\n ", " ")
                    .replace("=3D", "=")
            })
            .collect()
    }

    /// Waits up to `seconds` for a mail containing `text`.
    pub fn wait_for(&self, seconds: u64, text: &str) -> String {
        super::eventually(
            seconds,
            || self.mails().into_iter().find(|m| m.contains(text)),
            || format!("no mail with '{text}' came; got {:#?}", self.mails()),
        )
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server scraping one target every second.
pub struct Prometheus {
    pub port: u16,
    child: Child,
}

impl Prometheus {
    pub fn start(dir: &Path, target_port: u16, token: &str) -> Prometheus {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pgkeep\n    authorization:\n      credentials: \"{token}\"\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus ({e}); run scripts/test, which installs it")
            });
        Prometheus { port, child }
    }

    /// Waits up to `seconds` for the instant query `query` to return a sample; its value.
    pub fn wait_value(&self, seconds: u64, query: &str) -> f64 {
        super::eventually(
            seconds,
            || self.value(query),
            || format!("Prometheus has no value for {query}"),
        )
    }

    /// The value of the instant query `query`, through Prometheus' HTTP API.
    pub fn value(&self, query: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sf", "--get", "--data-urlencode"])
            .arg(format!("query={query}"))
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium (Debian's) on `url`, with `args` (`--dump-dom`, `--screenshot=`).
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot start chromium ({e}); run scripts/test, which installs it")
        });
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM Chromium builds from the page at `url`.
pub fn rendered_dom(url: &str) -> String {
    chromium(url, &["--dump-dom"])
}

/// A screenshot of the page at `url`, `width` by `height`, written to `png`.
pub fn screenshot(url: &str, png: &Path, width: u32, height: u32) {
    chromium(
        url,
        &[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={width},{height}"),
        ],
    );
}
