//! Each cluster's status in each repository, recomputed on a timer and after each job,
//! and the alerts it raises and clears.
//!
//! Metrics and the web view read the last snapshot, so a scrape costs nothing however
//! large the repository; an alert is told when a check turns WARNING, CRITICAL or
//! UNKNOWN (or changes between them) and once more when a status that could be had
//! shows it OK again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::notify::{Event, Notice};
use crate::config::Config;
use crate::engine::Context;
use crate::engine::operations::status::{self, Level, StatusReport};
use crate::repo::OpenMode;

/// One cluster in one repository.
pub struct View {
    pub cluster: String,
    /// The repository's place in the config, from 1, and its location.
    pub repo_number: usize,
    pub repository: String,
    /// Why no status could be had, if none could.
    pub report: Result<StatusReport, String>,
}

impl View {
    pub fn level(&self) -> Level {
        self.report.as_ref().map_or(Level::Unknown, |r| r.level)
    }
}

/// Every cluster's views, as of `taken`.
#[derive(Default)]
pub struct Snapshot {
    pub taken: Option<DateTime<Utc>>,
    pub views: Vec<View>,
}

/// The status of each of `clusters` in every repository.
pub fn gather(config: &Config, clusters: &[String]) -> Vec<View> {
    let now = Utc::now();
    let mut views = Vec::new();
    for cluster in clusters {
        for (i, repo) in config.repositories.iter().enumerate() {
            let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Context::on_repository(config, Some(cluster), i + 1, OpenMode::Existing)
                    .and_then(|ctx| status::status(&ctx, now))
                    .map_err(|e| format!("{e:#}"))
            }));
            let report = judged.unwrap_or_else(|_| {
                Err("computing the status failed unexpectedly (a bug: see serve's log)".into())
            });
            views.push(View {
                cluster: cluster.clone(),
                repo_number: i + 1,
                repository: repo.path.to_string(),
                report,
            });
        }
    }
    views
}

/// Replaces the views of the clusters in `fresh`, keeping the others.
pub fn merge(snapshot: &mut Snapshot, fresh: Vec<View>) {
    snapshot
        .views
        .retain(|v| !fresh.iter().any(|f| f.cluster == v.cluster));
    snapshot.views.extend(fresh);
    snapshot
        .views
        .sort_by(|a, b| (&a.cluster, a.repo_number).cmp(&(&b.cluster, b.repo_number)));
    snapshot.taken = Some(Utc::now());
}

/// An alerting check: (cluster, repository, check) → level and message.
type Key = (String, String, String);

/// The checks that are alerting now.
#[derive(Default)]
pub struct Alerts {
    active: BTreeMap<Key, (Level, String)>,
}

impl Alerts {
    /// The notices `views` call for against what was alerting before.
    pub fn update(&mut self, views: &[View], host: &str) -> Vec<Notice> {
        let mut now: BTreeMap<Key, (Level, String)> = BTreeMap::new();
        let mut ok: BTreeMap<Key, String> = BTreeMap::new();
        for view in views {
            let key = |check: &str| {
                (
                    view.cluster.clone(),
                    view.repository.clone(),
                    check.to_string(),
                )
            };
            let findings = match &view.report {
                Ok(r) => r
                    .findings
                    .iter()
                    .map(|f| (f.check, f.level, f.message.clone()))
                    .collect(),
                Err(e) => vec![("status", Level::Unknown, e.clone())],
            };
            for (check, level, message) in findings {
                if level == Level::Ok {
                    ok.insert(key(check), message);
                    continue;
                }
                let entry = now.entry(key(check)).or_insert((level, String::new()));
                entry.0 = entry.0.max(level);
                if !entry.1.is_empty() {
                    entry.1.push_str("; ");
                }
                entry.1.push_str(&message);
            }
        }
        // Only a status that was had can clear an alert: when the repository or the
        // server cannot be reached, what was wrong before may still be.
        let judged = |k: &Key| {
            views
                .iter()
                .any(|v| v.cluster == k.0 && v.repository == k.1 && v.report.is_ok())
        };
        let mut notices = Vec::new();
        let notice = |(cluster, repository, check): &Key, event, level, message: String| Notice {
            event,
            cluster: cluster.clone(),
            job: None,
            repository: Some(repository.clone()),
            check: Some(check.clone()),
            level,
            message,
            time: Utc::now(),
            host: host.to_string(),
        };
        for (key, (level, message)) in &now {
            if self.active.get(key).map(|a| a.0) != Some(*level) {
                notices.push(notice(key, Event::Alert, *level, message.clone()));
            }
        }
        for key in self.active.keys() {
            if judged(key) && !now.contains_key(key) {
                let message = ok
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| format!("{} is no longer reported", key.2));
                notices.push(notice(key, Event::Cleared, Level::Ok, message));
            }
        }
        self.active
            .retain(|k, _| !judged(k) && !now.contains_key(k));
        self.active.extend(now);
        notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(cluster: &str) -> View {
        View {
            cluster: cluster.into(),
            repo_number: 1,
            repository: "/repo".into(),
            report: Err("cannot reach the repository".into()),
        }
    }

    #[test]
    fn losing_sight_of_a_cluster_raises_unknown_and_clears_nothing() {
        let mut alerts = Alerts::default();
        let key = |check: &str| ("main".to_string(), "/repo".to_string(), check.to_string());
        alerts
            .active
            .insert(key("archiver"), (Level::Critical, "failing".into()));
        let notices = alerts.update(&[unreachable("main")], "host");
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(notices[0].event, Event::Alert);
        assert_eq!(notices[0].check.as_deref(), Some("status"));
        assert!(alerts.active.contains_key(&key("archiver")));
        // Still unreachable: nothing new to tell.
        assert!(alerts.update(&[unreachable("main")], "host").is_empty());
    }
}
