//! The read-only web view: server-rendered HTML from the last snapshot.

use axum::extract::State;
use axum::response::Html;

use super::http::App;
use crate::engine::operations::status::{Level, duration};

/// Every cluster in every repository at a glance, with its state and findings.
pub(super) async fn overview(State(app): State<App>) -> Html<String> {
    let shared = app.shared();
    let mut rows = String::new();
    for view in &shared.snapshot.views {
        let findings = match &view.report {
            Ok(r) => r
                .findings
                .iter()
                .filter(|f| f.level != Level::Ok)
                .map(|f| format!("<li>{}</li>", escape(&f.message)))
                .collect::<String>(),
            Err(e) => format!("<li>{}</li>", escape(e)),
        };
        let newest = match &view.report {
            Ok(r) => r.newest_backup.as_ref().map_or("none".to_string(), |b| {
                format!("{} ({} ago)", escape(&b.label), duration(b.age_seconds))
            }),
            Err(_) => String::new(),
        };
        rows.push_str(&format!(
            "<tr class=\"{level}\"><td>{cluster}</td><td>{repo}</td><td class=\"level\">{level}</td><td>{newest}</td><td><ul>{findings}</ul></td></tr>\n",
            level = view.level().name(),
            cluster = escape(&view.cluster),
            repo = escape(&view.repository),
        ));
    }
    let taken = shared.snapshot.taken.map_or("not yet".to_string(), |t| {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    });
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>pgkeep</title><style>{STYLE}</style></head>\
         <body><h1>pgkeep</h1><p>Status as of {taken}.</p>\
         <table><tr><th>cluster</th><th>repository</th><th>state</th><th>newest backup</th><th>needs attention</th></tr>\n{rows}</table></body></html>\n"
    ))
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
td,th{padding:.4em .8em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
tr.OK .level{color:#1a7f37}tr.WARNING .level{color:#9a6700}tr.CRITICAL .level,tr.UNKNOWN .level{color:#cf222e}\
ul{margin:0;padding-left:1em}";

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
