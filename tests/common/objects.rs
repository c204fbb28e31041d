//! Object-storage servers for tests: moto (S3), Azurite (Azure Blob Storage) and
//! fake-gcs-server (Google Cloud Storage, behind `support/gcs_front.py`), started on a
//! free loopback port and stopped when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::run_ok;

/// The development account of Azurite, the same in every installation.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    S3,
    Azure,
    Gcs,
}

/// A running object-storage server.
pub struct ObjectServer {
    pub service: Service,
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ObjectServer {
    /// Starts a server of `service`, keeping its files (Azurite's) under `dir`.
    pub fn start(service: Service, dir: &Path) -> ObjectServer {
        let server = ObjectServer {
            service,
            port: free_port(),
            dir: dir.to_path_buf(),
            child: Mutex::new(None),
        };
        server.run();
        server
    }

    /// Starts the server process (again, after [`ObjectServer::kill`]) and waits until it
    /// answers.
    pub fn run(&self) {
        let port = self.port.to_string();
        let mut cmd = match self.service {
            Service::S3 => {
                let mut c = Command::new("moto_server");
                c.args(["-H", "127.0.0.1", "-p", &port]);
                c
            }
            Service::Azure => {
                let location = self.dir.join("azurite");
                std::fs::create_dir_all(&location).unwrap();
                let mut c = Command::new("azurite-blob");
                c.args(["--blobHost", "127.0.0.1", "--blobPort", &port, "--silent"])
                    .args(["--skipApiVersionCheck", "--location"])
                    .arg(location);
                c
            }
            Service::Gcs => {
                let mut c = Command::new("python3");
                c.arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/support/gcs_front.py"
                ))
                .arg(&port);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {:?} ({e}); run scripts/test, which installs it",
                    self.service
                )
            });
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{:?} did not start",
                self.service
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server at once, as a crash would.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates bucket (container) `name`.
    pub fn create_bucket(&self, name: &str) {
        let port = self.port.to_string();
        match self.service {
            Service::S3 => {
                run_ok(
                    Command::new("curl")
                        .args(["-sf", "-X", "PUT"])
                        .arg(format!("http://127.0.0.1:{port}/{name}")),
                );
            }
            Service::Azure => {
                let script = concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/support/azure_container.py"
                );
                run_ok(Command::new("python3").args([script, &port, name]));
            }
            Service::Gcs => {
                run_ok(
                    Command::new("curl")
                        .args(["-sf", "-X", "POST", "-H", "Content-Type: application/json"])
                        .arg("--data")
                        .arg(format!("{{\"name\": \"{name}\"}}"))
                        .arg(format!("http://127.0.0.1:{port}/storage/v1/b")),
                );
            }
        }
    }

    /// The `[repository]` section for bucket `bucket` under `prefix`, reached at `port`
    /// (the server's, or a proxy's in front of it). Requests are retried for 15 s, so a
    /// test of an outage does not wait the default two minutes.
    pub fn repository_toml(&self, bucket: &str, prefix: &str, port: u16) -> String {
        let retry = "retry_timeout = 15\n";
        let section = match self.service {
            Service::S3 => format!(
                "[repository]\npath = \"s3://{bucket}/{prefix}\"\noptions = {{ endpoint = \"http://127.0.0.1:{port}\", region = \"us-east-1\", \
                 access_key_id = \"test\", secret_access_key = \"test\", allow_http = \"true\" }}\n"
            ),
            Service::Azure => format!(
                "[repository]\npath = \"az://{bucket}/{prefix}\"\noptions = {{ account_name = \"{AZURITE_ACCOUNT}\", access_key = \"{AZURITE_KEY}\", \
                 endpoint = \"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}\", allow_http = \"true\" }}\n"
            ),
            Service::Gcs => format!(
                "[repository]\npath = \"gs://{bucket}/{prefix}\"\noptions = {{ base_url = \"http://127.0.0.1:{port}\", bearer_token = \"test\", \
                 allow_http = \"true\" }}\n"
            ),
        };
        section + retry
    }
}

impl Drop for ObjectServer {
    fn drop(&mut self) {
        self.kill();
    }
}
