//! The picture of a cluster's recoverability over time, as inline SVG: backups as
//! marks (filled: full, hollow: incremental), the newest proof of each below its mark
//! (green: passed, red: failed), the archived WAL as a band per timeline with its gaps
//! in red, and the recoverable window shaded behind.
//!
//! WAL is archived by LSN, not by time: a segment is placed at the time interpolated
//! between the moments whose LSN is known (each backup's start and stop, the end of the
//! recoverable window, each timeline's last archived segment).

use chrono::{DateTime, Utc};

use super::web::escape;
use crate::engine::info::InfoReport;
use crate::format::lsn::Lsn;
use crate::format::wal::WalFile;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;
const ROW: f64 = 28.0;

/// The horizontal scale: time to x.
struct Scale {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl Scale {
    fn x(&self, t: DateTime<Utc>) -> f64 {
        let span = (self.to - self.from).num_milliseconds().max(1) as f64;
        let at = (t - self.from).num_milliseconds() as f64;
        LEFT + (at / span).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }
}

/// LSN to time, piecewise linear between known points (clamped at the ends).
struct Clock(Vec<(u64, DateTime<Utc>)>);

impl Clock {
    fn of(info: &InfoReport) -> Clock {
        let mut points: Vec<(u64, DateTime<Utc>)> = info
            .backups
            .iter()
            .flat_map(|b| [(b.start_lsn.0, b.start_time), (b.stop_lsn.0, b.stop_time)])
            .collect();
        for t in &info.wal {
            if let Some(end) = segment_end(info, &t.last_segment) {
                points.push((end.0, t.last_archived));
            }
        }
        points.sort();
        Clock(points)
    }

    fn time(&self, lsn: Lsn) -> Option<DateTime<Utc>> {
        let i = self.0.partition_point(|p| p.0 < lsn.0);
        let (after, before) = (self.0.get(i), i.checked_sub(1).and_then(|j| self.0.get(j)));
        match (before, after) {
            (Some(&(l0, t0)), Some(&(l1, t1))) if l1 > l0 => {
                let share = (lsn.0 - l0) as f64 / (l1 - l0) as f64;
                let ms = ((t1 - t0).num_milliseconds() as f64 * share) as i64;
                Some(t0 + chrono::TimeDelta::milliseconds(ms))
            }
            (_, Some(&(_, t))) | (Some(&(_, t)), None) => Some(t),
            (None, None) => None,
        }
    }
}

fn segment_start(info: &InfoReport, name: &str) -> Option<Lsn> {
    let WalFile::Segment { log, seg, .. } = WalFile::parse(name)? else {
        return None;
    };
    let size = info.segment_size;
    Some(size.start_lsn(size.segno_of(log, seg)))
}

fn segment_end(info: &InfoReport, name: &str) -> Option<Lsn> {
    segment_start(info, name).map(|l| Lsn(l.0 + info.segment_size.0))
}

/// The SVG of `info` as of `now`.
pub fn recoverability(info: &InfoReport, now: DateTime<Utc>) -> String {
    let earliest = (info.backups.iter().map(|b| b.start_time))
        .chain(info.recoverable.iter().map(|w| w.from_time))
        .min()
        .unwrap_or(now - chrono::TimeDelta::days(1));
    let margin = (now - earliest) / 50;
    let scale = Scale {
        from: earliest - margin,
        to: now,
    };
    let clock = Clock::of(info);
    let height = ROW * (3 + info.wal.len()) as f64 + 24.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"recoverability\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\">\
         <title>Recoverability of cluster {}</title>",
        escape(&info.cluster)
    );
    if let Some(w) = &info.recoverable {
        let (x0, x1) = (scale.x(w.from_time), scale.x(w.to_time));
        svg.push_str(&format!(
            "<rect class=\"window\" x=\"{x0:.1}\" y=\"4\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#2da44e\" fill-opacity=\"0.12\"><title>recoverable from {} to {} UTC</title></rect>",
            (x1 - x0).max(1.0),
            height - 28.0,
            w.from_time.format("%Y-%m-%d %H:%M:%S"),
            w.to_time.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    row_label(&mut svg, 0, "backups");
    row_label(&mut svg, 1, "proofs");
    for b in &info.backups {
        let x = scale.x(b.stop_time);
        let fill = if b.parent.is_none() {
            "#0969da"
        } else {
            "white"
        };
        svg.push_str(&format!(
            "<g class=\"backup\"><title>{} ({}), finished {} UTC</title>\
             <line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"8\" y2=\"{:.1}\" stroke=\"#0969da\" stroke-opacity=\"0.35\"/>\
             <circle cx=\"{x:.1}\" cy=\"{:.1}\" r=\"6\" fill=\"{fill}\" stroke=\"#0969da\" stroke-width=\"2\"/></g>",
            escape(&b.label),
            if b.parent.is_none() { "full" } else { "incremental" },
            b.stop_time.format("%Y-%m-%d %H:%M:%S"),
            height - 24.0,
            row_y(0)
        ));
        if let Some(p) = &b.proof {
            let (class, color) = if p.passed {
                ("proof passed", "#1a7f37")
            } else {
                ("proof failed", "#cf222e")
            };
            svg.push_str(&format!(
                "<circle class=\"{class}\" cx=\"{x:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{color}\"><title>proof of {} {}: {}</title></circle>",
                row_y(1),
                escape(&b.label),
                if p.passed { "passed" } else { "FAILED" },
                escape(p.failure.as_deref().unwrap_or(&p.target))
            ));
        }
    }
    for (i, t) in info.wal.iter().enumerate() {
        let row = 2 + i;
        row_label(&mut svg, row, &format!("WAL TL {}", t.timeline));
        let y = row_y(row) - 7.0;
        let start = segment_start(info, &t.first_segment).and_then(|l| clock.time(l));
        let x0 = scale.x(start.unwrap_or(scale.from));
        let x1 = scale.x(t.last_archived);
        svg.push_str(&format!(
            "<rect class=\"wal\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"14\" fill=\"#8c959f\"><title>timeline {}: {} to {}, {} segments</title></rect>",
            (x1 - x0).max(1.0),
            t.timeline,
            t.first_segment,
            t.last_segment,
            t.segments
        ));
        for [first, last] in &t.gaps {
            let from = segment_start(info, first).and_then(|l| clock.time(l));
            let to = segment_end(info, last).and_then(|l| clock.time(l));
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            let (g0, g1) = (scale.x(from), scale.x(to));
            svg.push_str(&format!(
                "<rect class=\"gap\" x=\"{g0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"14\" fill=\"#cf222e\"><title>missing {first} to {last}</title></rect>",
                (g1 - g0).max(3.0)
            ));
        }
    }
    axis(&mut svg, &scale, height);
    svg.push_str("</svg>");
    svg
}

fn row_y(row: usize) -> f64 {
    20.0 + ROW * row as f64
}

fn row_label(svg: &mut String, row: usize, text: &str) {
    svg.push_str(&format!(
        "<text x=\"4\" y=\"{:.1}\" font-size=\"12\" fill=\"#57606a\">{}</text>",
        row_y(row) + 4.0,
        escape(text)
    ));
}

/// Five time ticks under the rows.
fn axis(svg: &mut String, scale: &Scale, height: f64) {
    let y = height - 8.0;
    for i in 0..5 {
        let t = scale.from + (scale.to - scale.from) * i / 4;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        svg.push_str(&format!(
            "<text class=\"tick\" x=\"{:.1}\" y=\"{y:.1}\" font-size=\"11\" fill=\"#57606a\" text-anchor=\"{anchor}\">{}</text>",
            scale.x(t),
            t.format("%m-%d %H:%M")
        ));
    }
}
