//! `serve`: scheduled backups and proofs on a cluster under load, their runs in history
//! and their heartbeats; metrics scraped by a real Prometheus that agree with `info`;
//! archiving broken and fixed, told by webhook (JSON and Slack form), mail (STARTTLS
//! and login) and a command hook; a missed run caught up once at start; SIGTERM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::damage::{damage_table_undoably, flip};
use common::objects::free_port;
use common::observers::{
    HttpSink, Prometheus, SMTP_PASSWORD, SMTP_USER, SmtpSink, rendered_dom, screenshot,
};
use common::scratch::{entries, none_left_in, processes_in};
use common::{Env, Pg, Server, as_postgres, run_ok};

const TOKEN: &str = "serve-test-token";

/// A running `pgkeep serve`, its output in a file.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    /// Starts it; its jobs' scratch directories (TMPDIR) go to `scratch` in `env`.
    fn start(env: &Env, log_name: &str) -> Serve {
        let log = env.path(log_name);
        let out = std::fs::File::create(&log).unwrap();
        let scratch = env.path("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        common::chown_postgres(&scratch);
        let child = as_postgres(&env.pgkeep)
            .env("TMPDIR", &scratch)
            .arg("--config")
            .arg(&env.config)
            .arg("serve")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let serve = Serve { child, log };
        serve.wait_log(30, "metrics and web view on");
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, seconds: u64, text: &str) -> String {
        common::eventually(
            seconds,
            || Some(self.log()).filter(|log| log.contains(text)),
            || format!("serve never said '{text}':\n{}", self.log()),
        )
    }

    /// SIGTERM; it must stop within a minute, with success.
    fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "serve exited with {status}:\n{}",
                    self.log()
                );
                return self.log();
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn configure(env: &Env, server: &Server, schedule: &str, port: u16, sinks: &(HttpSink, SmtpSink)) {
    let (http, smtp) = sinks;
    env.write_config(
        server,
        &format!(
            r#"pg_bin = "{bin}"
{schedule}
heartbeat.backup = "{ping}"

[status]
rpo_warning_seconds = 5
rpo_critical_seconds = 10

[serve]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"
state_path = "{state}"
refresh_seconds = 2

[notify]
on_success = true
command = "cat > {hooks}/.partial-$$ && mv {hooks}/.partial-$$ {hooks}/$PGKEEP_EVENT-$(date +%s%N).json"

[[notify.webhook]]
url = "{json_hook}"

[[notify.webhook]]
url = "{slack_hook}"
format = "slack"

[notify.email]
server = "localhost"
port = {smtp_port}
security = "starttls"
ca_file = "{ca}"
user = "{SMTP_USER}"
password = "{SMTP_PASSWORD}"
from = "pgkeep <pgkeep@localhost>"
to = ["dba@localhost"]
"#,
            bin = env.pg.bin.display(),
            ping = http.url("/ping/backup"),
            state = env.path("state").display(),
            hooks = env.path("hooks").display(),
            json_hook = http.url("/hook/json"),
            slack_hook = http.url("/hook/slack"),
            smtp_port = smtp.port,
            ca = smtp.ca.display(),
        ),
    );
}

fn curl(url: &str, token: Option<&str>) -> (String, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = run_ok(c.arg(url));
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap();
    (body.to_string(), code.to_string())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Hook files of `event` the command hook wrote.
fn hooks(dir: &Path, event: &str) -> Vec<serde_json::Value> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{event}-"))
        })
        .map(|e| json(&std::fs::read_to_string(e.path()).unwrap()))
        .collect();
    found.sort_by_key(|v| v["time"].as_str().unwrap_or_default().to_string());
    found
}

fn serve(pg: Pg) {
    let env = Env::new(&format!("serve{}", pg.major), pg);
    let main = env.primary();
    main.pgbench_init(1);
    env.pgkeep_ok(&["init"]);
    env.backup();
    // Three segments after the first backup, the middle one to be lost later.
    let mut lost = String::new();
    for i in 0..3 {
        main.sql("INSERT INTO pgbench_history SELECT 1, 1, 1, 1, now()");
        if i == 1 {
            lost = main.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        }
        main.sql("SELECT pg_switch_wal()");
    }
    main.wait_archived();
    for dir in ["state", "hooks"] {
        std::fs::create_dir_all(env.path(dir)).unwrap();
        common::chown_postgres(&env.path(dir));
    }
    let sinks = (HttpSink::start(), SmtpSink::start(&env.dir));
    let port = free_port();
    refuses_bad_settings(&env, &main, port, &sinks);
    // Both due every minute: the proof waits for the backup, never overlapping it.
    configure(
        &env,
        &main,
        "schedule.backup = \"* * * * *\"\nschedule.prove = \"* * * * *\"",
        port,
        &sinks,
    );
    let prometheus = Prometheus::start(&env.dir, port, TOKEN);
    let load = main.pgbench_load(1);
    let serve = Serve::start(&env, "serve.log");
    let (http, smtp) = &sinks;

    // Scheduled runs: each in the history, pinged, told.
    http.wait_for(100, |r| r.path == "/ping/backup/start");
    http.wait_for(100, |r| {
        r.path == "/ping/backup" && r.body.contains("succeeded")
    });
    let proved = http.wait_for(200, |r| {
        r.path == "/hook/json" && r.body.contains("\"job\":\"prove\"")
    });
    assert!(
        proved.body.contains("\"event\":\"job_succeeded\""),
        "{proved:?}"
    );
    let runs = json(&env.pgkeep_ok(&["history", "--json"]));
    let runs = runs.as_array().unwrap();
    let (backups, proofs): (Vec<_>, Vec<_>) = runs
        .iter()
        .skip(1)
        .filter(|r| r["kind"] == "backup" || r["kind"] == "prove")
        .partition(|r| r["kind"] == "backup");
    assert!(!backups.is_empty() && !proofs.is_empty(), "{runs:?}");
    assert!(runs.iter().all(|r| r["passed"] == true), "{runs:?}");
    let time =
        |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    for pair in runs.windows(2) {
        assert!(
            time(&pair[1]["started"]) >= time(&pair[0]["finished"]),
            "runs overlap: {pair:?}"
        );
    }
    load.stop(&main);

    // The endpoints: a token is required, the metrics pass promtool, the page shows OK.
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(curl(&metrics_url, None).1, "401");
    assert_eq!(curl(&metrics_url, Some("wrong")).1, "401");
    let (text, code) = curl(&metrics_url, Some(TOKEN));
    assert_eq!(code, "200");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let (page, code) = curl(&format!("http://127.0.0.1:{port}/"), Some(TOKEN));
    assert_eq!(code, "200");
    assert!(page.contains(">main</a></td>"), "{page}");

    // Prometheus scraped them, and they agree with info.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = json(&env.pgkeep_ok(&["info", "--json"]));
        let count = info["backups"].as_array().unwrap().len() as f64;
        let scraped = prometheus.value("pgkeep_backups{cluster=\"main\"}");
        if scraped == Some(count) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics say {scraped:?} backups, info {count}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        prometheus.wait_value(30, "pgkeep_proof_newest_passed{cluster=\"main\"}"),
        1.0
    );
    assert!(prometheus.wait_value(30, "pgkeep_proof_rto_seconds") > 0.0);
    assert!(prometheus.wait_value(30, "pgkeep_job_runs{task=\"backup\",result=\"passed\"}") >= 1.0);
    assert!(prometheus.wait_value(30, "pgkeep_recoverable_window_seconds") > 0.0);

    // Archiving breaks: CRITICAL, told everywhere; a backup fails and its heartbeat says so.
    main.sql("ALTER SYSTEM SET archive_command = 'false'");
    main.sql("SELECT pg_reload_conf()");
    main.sql("CREATE TABLE more AS SELECT generate_series(1, 100000) g");
    main.sql("SELECT pg_switch_wal()");
    let alert = http.wait_for(90, |r| {
        r.path == "/hook/json" && r.body.contains("\"check\":\"archiver\"")
    });
    let alert = json(&alert.body);
    assert_eq!(alert["event"], "alert");
    assert_eq!(alert["level"], "CRITICAL");
    let slack = http.wait_for(10, |r| {
        r.path == "/hook/slack" && r.body.contains("archiver CRITICAL")
    });
    assert!(
        json(&slack.body)["text"]
            .as_str()
            .unwrap()
            .contains("archive_command is failing")
    );
    let mail = smtp.wait_for(30, "archiver CRITICAL");
    assert!(
        mail.contains("To: dba@localhost") && mail.contains("archive_command is failing"),
        "{mail}"
    );
    // The command hook runs after the mail, so it may still be running.
    common::eventually(
        10,
        || {
            hooks(&env.path("hooks"), "alert")
                .iter()
                .any(|h| h["check"] == "archiver")
                .then_some(())
        },
        || "the command hook was not run for the archiver alert".into(),
    );
    assert_eq!(
        prometheus.wait_value(30, "pgkeep_archiver_failing == 1"),
        1.0
    );
    assert_eq!(prometheus.wait_value(30, "pgkeep_status == 2"), 2.0);
    // RPO grows in the metrics as WAL is written that cannot be archived.
    let before = prometheus.wait_value(30, "pgkeep_rpo_bytes");
    main.sql("INSERT INTO more SELECT generate_series(1, 200000)");
    common::eventually(
        60,
        || {
            prometheus
                .value("pgkeep_rpo_bytes")
                .filter(|now| *now > before + 4e6)
        },
        || format!("RPO stayed near {before} bytes in Prometheus"),
    );
    let (overview, _) = curl(&format!("http://127.0.0.1:{port}/?token={TOKEN}"), None);
    assert!(overview.contains("<tr class=\"CRITICAL\">"), "{overview}");
    http.wait_for(150, |r| r.path == "/ping/backup/fail");

    // Fixed: the clear notice comes and status returns to OK.
    main.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        env.archive_command()
    ));
    main.sql("SELECT pg_reload_conf()");
    let cleared = http.wait_for(120, |r| {
        r.path == "/hook/json"
            && r.body.contains("\"event\":\"cleared\"")
            && r.body.contains("\"check\":\"archiver\"")
    });
    assert_eq!(json(&cleared.body)["level"], "OK");
    smtp.wait_for(30, "archiver back to OK");
    let log = serve.stop();
    assert!(log.contains("pgkeep serve: stopping"), "{log}");

    // From here on no proof is scheduled: one drawn before the web view's segment is
    // taken away would rightly fail on the gap, and the view is to show a passed one.
    missed_run_caught_up(&env, &main, port, &sinks, || {
        web_view(&env, port, &lost);
        damaged_backup_flagged(&env, &main, port, &prometheus);
    });
    stopped_during_a_proof(&env, &main, port, &sinks);
}

/// `pgkeep serve`, which must refuse to start (and is stopped if it does not); its
/// standard error.
fn serve_refused(env: &Env) -> String {
    let out = as_postgres("timeout")
        .args(["20"])
        .arg(&env.pgkeep)
        .arg("--config")
        .arg(&env.config)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "serve did not refuse: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Settings serve cannot work with are refused at start, each with its fix.
fn refuses_bad_settings(env: &Env, main: &Server, port: u16, sinks: &(HttpSink, SmtpSink)) {
    let schedule = "schedule.backup = \"* * * * *\"";
    for (setting, error) in [
        (
            "schedule.backup = \"61 * * * *\"",
            "cluster.main.schedule.backup '61 * * * *' is not a cron expression",
        ),
        (
            "schedule.backup = \"0 0 30 2 *\"",
            "cluster.main.schedule.backup '0 0 30 2 *' never falls due",
        ),
        (
            "time_zone = \"Mars/Olympus\"",
            "cluster.main.time_zone 'Mars/Olympus' is not a time zone",
        ),
    ] {
        configure(env, main, setting, port, sinks);
        let stderr = serve_refused(env);
        assert!(stderr.contains(error), "{stderr}");
    }
    configure(env, main, schedule, port, sinks);
    let config = std::fs::read_to_string(&env.config).unwrap();
    let open = config
        .replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:")
        .replace(&format!("token = \"{TOKEN}\"\n"), "");
    std::fs::write(&env.config, open).unwrap();
    let stderr = serve_refused(env);
    assert!(
        stderr.contains(
            "is not a loopback address, so the metrics and web view need a token; set serve.token"
        ),
        "{stderr}"
    );
}

/// The cluster's page as Chromium renders it: a mark per backup (as many as `info`
/// lists), a passed proof, the recoverable window, and the segment `lost` from the
/// repository as a red gap; a screenshot of it.
fn web_view(env: &Env, port: u16, lost: &str) {
    let segment = env.repo.join("main/wal/00000001").join(lost);
    let kept = env.path("lost-segment");
    std::fs::rename(&segment, &kept).unwrap();
    // Reports see WAL lost by other means than expire once verify has listed it.
    assert!(env.pgkeep_err(&["verify"]).contains(lost));
    let url = format!("http://127.0.0.1:{port}/cluster/main?token={TOKEN}");
    let dom = common::eventually(
        60,
        || {
            let dom = rendered_dom(&url);
            let info = json(&env.pgkeep_ok(&["info", "--json"]));
            let backups = info["backups"].as_array().unwrap().len();
            let marks = dom.matches("<g class=\"backup\">").count();
            let rows = dom.matches("<tr class=\"backup\">").count();
            Some(dom).filter(|d| marks == backups && rows == backups && d.contains("class=\"gap\""))
        },
        || {
            format!(
                "the page never showed every backup and the gap:\n{}",
                rendered_dom(&url)
            )
        },
    );
    assert!(dom.contains("<circle class=\"proof passed\""), "{dom}");
    assert!(dom.contains("<rect class=\"window\""), "{dom}");
    assert!(dom.contains(&format!("missing {lost}")), "{dom}");
    assert!(
        dom.contains("<tr class=\"job OK\">") && dom.contains(">log</a>"),
        "{dom}"
    );
    let overview = rendered_dom(&format!("http://127.0.0.1:{port}/?token={TOKEN}"));
    assert!(
        overview.contains("<tr class=\"WARNING\">") && overview.contains(lost),
        "{overview}"
    );
    let png = env.path("web-view.png");
    screenshot(&url, &png, 1100, 1300);
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} bytes",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("PGKEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    // Put back, for the scenarios after this one.
    std::fs::rename(&kept, &segment).unwrap();
    env.pgkeep_ok(&["verify"]);
}

/// A proof of a backup with a damaged chunk fails: metrics say CRITICAL, and the web
/// view marks the proof failed, naming the chunk.
fn damaged_backup_flagged(env: &Env, main: &Server, port: u16, prometheus: &Prometheus) {
    let label = env.labels().pop().unwrap();
    let (chunk, pack, offset) = damage_table_undoably(env, main, &label, "pgbench_accounts");
    let out = env.pgkeep(&["prove", "--backup", &label]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(prometheus.wait_value(30, "pgkeep_status == 2"), 2.0);
    let url = format!("http://127.0.0.1:{port}/cluster/main?token={TOKEN}");
    let dom = common::eventually(
        30,
        || Some(rendered_dom(&url)).filter(|d| d.contains("<circle class=\"proof failed\"")),
        || format!("no failed proof shown:\n{}", rendered_dom(&url)),
    );
    assert!(dom.contains(&format!("chunk {chunk}")), "{dom}");
    // Undone, for the scenarios after this one.
    flip(&pack, offset);
}

/// Writes the due times of schedules as if serve last ran three hours ago.
fn last_ran_hours_ago(env: &Env, keys: &[&str]) {
    let hours_ago = (chrono::Utc::now() - chrono::TimeDelta::hours(3)).to_rfc3339();
    let state: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| (k.to_string(), hours_ago.clone().into()))
        .collect();
    std::fs::write(
        env.path("state/schedule.json"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
}

/// SIGTERM while a proof runs: serve stops it, tells it as stopped (not failed), and
/// neither its scratch server nor its directory is left; no proof is recorded.
fn stopped_during_a_proof(env: &Env, main: &Server, port: u16, sinks: &(HttpSink, SmtpSink)) {
    configure(
        env,
        main,
        "schedule.prove = \"0 * * * *\"\nprobes = [{ sql = \"SELECT true FROM pg_sleep(60)\" }]",
        port,
        sinks,
    );
    last_ran_hours_ago(env, &["main/prove"]);
    let proofs = || {
        let runs = json(&env.pgkeep_ok(&["history", "--json"]));
        runs.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "prove")
            .count()
    };
    let before = proofs();
    let serve = Serve::start(env, "serve-stop.log");
    serve.wait_log(30, "main: prove started");
    let scratch = env.path("scratch");
    let scratch_arg = scratch.to_str().unwrap();
    // The scratch server is up and the probe sleeps in it.
    common::eventually(
        60,
        || {
            Some(()).filter(|()| {
                processes_in(scratch_arg)
                    .iter()
                    .any(|p| p.contains("postgres"))
            })
        },
        || format!("no scratch server came up:\n{}", serve.log()),
    );
    let log = serve.stop();
    assert!(log.contains("main: prove stopped after"), "{log}");
    none_left_in(scratch_arg);
    assert!(entries(&scratch).is_empty(), "{:?}", entries(&scratch));
    assert_eq!(proofs(), before, "a stopped proof was recorded");
    let http = &sinks.0;
    http.wait_for(10, |r| {
        r.path == "/hook/json" && r.body.contains("\"event\":\"job_stopped\"")
    });
}

/// A backup due while serve was down runs once at start, not once per missed time;
/// `while_up` runs while that serve is up.
fn missed_run_caught_up(
    env: &Env,
    main: &Server,
    port: u16,
    sinks: &(HttpSink, SmtpSink),
    while_up: impl FnOnce(),
) {
    // Daily, an hour ago: missed while down, and not due again for 23 hours.
    let an_hour_ago = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let daily = an_hour_ago
        .format("schedule.backup = \"%M %H * * *\"")
        .to_string();
    configure(env, main, &daily, port, sinks);
    let state = env.path("state/schedule.json");
    last_ran_hours_ago(env, &["main/backup", "main/prove"]);
    let before = env.labels().len();
    let started = chrono::Utc::now();
    let serve = Serve::start(env, "serve-again.log");
    serve.wait_log(60, "main: backup succeeded");
    while_up();
    std::thread::sleep(Duration::from_secs(5));
    let log = serve.stop();
    // Once: not once per missed hour (nor tried again and skipped as still running).
    assert_eq!(log.matches("main: backup started").count(), 1, "{log}");
    assert!(!log.contains("skipped"), "{log}");
    let recorded = json(&std::fs::read_to_string(&state).unwrap());
    let due =
        chrono::DateTime::parse_from_rfc3339(recorded["main/backup"].as_str().unwrap()).unwrap();
    assert!(
        due >= started,
        "the run was not recorded as done: {recorded}"
    );
    assert!(
        !log.contains("prove started"),
        "prove is no longer scheduled:\n{log}"
    );
    assert_eq!(env.labels().len(), before + 1);
}

on_each_version!(serve);
