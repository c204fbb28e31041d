//! The read-only web view: server-rendered HTML from the last snapshot. The overview
//! shows every cluster at a glance; a cluster's page shows its recoverability picture,
//! findings, backups, dumps, receive-wal and the jobs `serve` ran, each with its log.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::http::{App, TokenQuery};
use super::picture;
use super::watch::View;
use crate::engine::human_bytes;
use crate::engine::operations::status::{Level, duration};

/// `?token=...` for links, when the page was opened with one.
fn carry(query: &TokenQuery) -> String {
    query
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("?token={}", percent_encoded(t)))
}

/// `text` safe in a URL's query (and so in an HTML attribute).
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        escape(title)
    ))
}

/// The findings that need attention, as a list.
fn attention(view: &View) -> String {
    match &view.report {
        Ok(r) => r
            .findings
            .iter()
            .filter(|f| f.level != Level::Ok)
            .map(|f| {
                format!(
                    "<li class=\"{}\">{}</li>",
                    f.level.name(),
                    escape(&f.message)
                )
            })
            .collect(),
        Err(e) => format!("<li class=\"UNKNOWN\">{}</li>", escape(e)),
    }
}

/// Every cluster in every repository at a glance, with its state and findings.
pub(super) async fn overview(
    State(app): State<App>,
    Query(query): Query<TokenQuery>,
) -> Html<String> {
    let shared = app.shared();
    let mut rows = String::new();
    for view in &shared.snapshot.views {
        let newest = match &view.report {
            Ok(r) => r.newest_backup.as_ref().map_or("none".to_string(), |b| {
                format!("{} ({} ago)", escape(&b.label), duration(b.age_seconds))
            }),
            Err(_) => String::new(),
        };
        let _ = writeln!(
            rows,
            "<tr class=\"{level}\"><td><a href=\"/cluster/{cluster}{token}\">{cluster}</a></td><td>{repo}</td><td class=\"level\">{level}</td><td>{newest}</td><td class=\"text\"><ul>{findings}</ul></td></tr>",
            level = view.level().name(),
            cluster = escape(&view.cluster),
            token = carry(&query),
            repo = escape(&view.repository),
            findings = attention(view),
        );
    }
    let taken = shared
        .snapshot
        .taken
        .map_or("not yet".to_string(), |t| format!("{} UTC", stamp(t)));
    page(
        "pgkeep",
        &format!(
            "<h1>pgkeep</h1><p>Status as of {taken}.</p>\
             <table class=\"overview\"><tr><th>cluster</th><th>repository</th><th>state</th><th>newest backup</th><th>needs attention</th></tr>\n{rows}</table>"
        ),
    )
}

/// One cluster: per repository its picture, findings, backups, dumps and receivers;
/// then its jobs.
pub(super) async fn cluster(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let shared = app.shared();
    let views: Vec<&View> = (shared.snapshot.views.iter())
        .filter(|v| v.cluster == name)
        .collect();
    if views.is_empty() {
        return (StatusCode::NOT_FOUND, "no such cluster\n").into_response();
    }
    let now = Utc::now();
    let mut body = format!(
        "<p><a href=\"/{}\">all clusters</a></p><h1>cluster {}</h1>",
        carry(&query),
        escape(&name)
    );
    for view in views {
        let _ = write!(
            body,
            "<section class=\"repository {level}\"><h2>repository {} <span class=\"level\">{level}</span></h2><ul class=\"findings\">{}</ul>",
            escape(&view.repository),
            attention(view),
            level = view.level().name()
        );
        if let Ok(report) = &view.report {
            body.push_str(&picture::recoverability(&report.info, now));
            body.push_str(&backups(&report.info));
            body.push_str(&dumps(&report.info));
            body.push_str(&receivers(&report.info));
        }
        body.push_str("</section>");
    }
    body.push_str(&jobs(&shared.recent, &name, &carry(&query)));
    page(&format!("pgkeep: {name}"), &body).into_response()
}

fn backups(info: &crate::engine::info::InfoReport) -> String {
    let mut rows = String::new();
    for b in info.backups.iter().rev() {
        let proof = match &b.proof {
            None => "none".to_string(),
            Some(p) if p.passed => format!(
                "passed {}{}",
                stamp(p.finished),
                p.rto_seconds
                    .map_or(String::new(), |s| format!(", RTO {}", duration(s)))
            ),
            Some(p) => format!(
                "<span class=\"CRITICAL\">FAILED</span> {}",
                escape(p.failure.as_deref().unwrap_or(""))
            ),
        };
        let _ = write!(
            rows,
            "<tr class=\"backup\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"text\">{proof}</td></tr>",
            escape(&b.label),
            if b.parent.is_none() {
                "full"
            } else {
                "incremental"
            },
            stamp(b.stop_time),
            b.timeline,
            human_bytes(b.size),
            human_bytes(b.stored_size),
        );
    }
    format!(
        "<h3>Backups</h3><table><tr><th>label</th><th>type</th><th>finished (UTC)</th><th>timeline</th><th>size</th><th>stored</th><th>newest proof</th></tr>{rows}</table>"
    )
}

fn dumps(info: &crate::engine::info::InfoReport) -> String {
    if info.dumps.is_empty() {
        return String::new();
    }
    let mut rows = String::new();
    for d in info.dumps.iter().rev() {
        let _ = write!(
            rows,
            "<tr class=\"dump\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&d.label),
            if d.globals {
                "(globals)".to_string()
            } else {
                escape(&d.database)
            },
            stamp(d.stop_time),
            human_bytes(d.stored_size)
        );
    }
    format!(
        "<h3>Dumps</h3><table><tr><th>label</th><th>database</th><th>finished (UTC)</th><th>stored</th></tr>{rows}</table>"
    )
}

fn receivers(info: &crate::engine::info::InfoReport) -> String {
    if info.receivers.is_empty() {
        return String::new();
    }
    let mut rows = String::new();
    for r in &info.receivers {
        let s = &r.status;
        let _ = write!(
            rows,
            "<tr class=\"receiver\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.slot),
            escape(&s.host),
            if s.connected {
                "streaming".to_string()
            } else {
                format!(
                    "<span class=\"CRITICAL\">not connected</span> {}",
                    escape(s.error.as_deref().unwrap_or(""))
                )
            },
            if s.synchronous {
                "synchronous"
            } else {
                "asynchronous"
            },
            human_bytes(r.behind),
            stamp(s.updated)
        );
    }
    format!(
        "<h3>receive-wal</h3><table><tr><th>slot</th><th>host</th><th>state</th><th>mode</th><th>behind</th><th>last report (UTC)</th></tr>{rows}</table>"
    )
}

fn jobs(
    recent: &std::collections::VecDeque<super::jobs::Finished>,
    cluster: &str,
    token: &str,
) -> String {
    let mut rows = String::new();
    for j in recent.iter().rev().filter(|j| j.cluster == cluster) {
        let log = (j.log.as_ref())
            .and_then(|l| l.file_name()?.to_str())
            .map_or(String::new(), |name| {
                format!(
                    "<a href=\"/cluster/{}/log/{}{token}\">log</a>",
                    escape(cluster),
                    escape(name)
                )
            });
        let _ = write!(
            rows,
            "<tr class=\"job {}\"><td>{}</td><td>{}</td><td class=\"level\">{}</td><td>{}</td><td class=\"text\">{}</td><td>{log}</td></tr>",
            if j.passed { "OK" } else { "CRITICAL" },
            stamp(j.started),
            j.job.name(),
            if j.passed { "ok" } else { "FAILED" },
            duration(j.seconds()),
            escape(j.error.as_deref().unwrap_or("")),
        );
    }
    format!(
        "<h3>Jobs run by serve</h3><table><tr><th>started (UTC)</th><th>job</th><th>result</th><th>took</th><th>error</th><th></th></tr>{rows}</table>"
    )
}

/// A job's log, as plain text.
pub(super) async fn log(
    State(app): State<App>,
    Path((cluster, file)): Path<(String, String)>,
) -> Response {
    let plain = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains('/');
    if !plain(&cluster) || !plain(&file) || !file.ends_with(".log") {
        return (StatusCode::NOT_FOUND, "no such log\n").into_response();
    }
    let path = app.shared().logs.join(&cluster).join(&file);
    let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
    match read {
        Ok(Ok(text)) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            text,
        )
            .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            "no such log (logs are kept for serve.log_days)\n",
        )
            .into_response(),
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#1f2328}table{border-collapse:collapse;margin-bottom:1em}\
td,th{padding:.3em .7em;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top;font-size:14px;white-space:nowrap}\
td.text{white-space:normal}\
.OK .level,li.OK{color:#1a7f37}.WARNING .level,li.WARNING{color:#9a6700}\
.CRITICAL .level,.UNKNOWN .level,li.CRITICAL,li.UNKNOWN,span.CRITICAL{color:#cf222e}\
ul{margin:0;padding-left:1em}svg.recoverability{display:block;margin:1em 0;border:1px solid #d0d7de}";

/// Text made safe inside HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
