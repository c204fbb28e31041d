//! The run history: one record per backup, dump, expire, verify and proof run, failed
//! ones included (`CLUSTER/history/YYYY-MM/STAMP-KIND.run`), for `pgkeep history`.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ClusterRepo, object};
use crate::format::lsn::Lsn;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// `backup`, `dump`, `expire`, `verify` or `prove`.
    pub kind: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub passed: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backup or dump it made or proved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Bytes it covered (a backup's or dump's size, what a proof restored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes it added to the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<u64>,
    /// Bytes it removed from the repository (expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_lsn: Option<Lsn>,
    /// One line on what it did.
    #[serde(default)]
    pub summary: String,
    pub host: String,
}

impl Run {
    pub fn seconds(&self) -> f64 {
        (self.finished - self.started).num_milliseconds() as f64 / 1000.0
    }
}

impl ClusterRepo {
    /// Records a run; runs of one kind are told apart by when they started.
    pub fn put_run(&self, run: &Run) -> Result<()> {
        let key = self.key(&format!(
            "history/{}/{}-{}.run",
            run.started.format("%Y-%m"),
            run.started.format("%Y%m%dT%H%M%S%.6fZ"),
            run.kind
        ));
        self.storage
            .put(&key, &object::encode(&serde_json::to_vec(run)?, 0)?)
    }

    /// The run and proof records that do not read, with why (`verify` names them; the
    /// readers skip them).
    pub fn damaged_records(&self) -> Result<Vec<(String, anyhow::Error)>> {
        let mut out = Vec::new();
        for o in self.storage.list(&self.key("history"))? {
            if let Err(e) = self.get_json::<Run>(&o.key) {
                out.push((o.key, e));
            }
        }
        for o in self.storage.list(&self.key("proofs"))? {
            if let Err(e) = self.get_json::<super::proof::Proof>(&o.key) {
                out.push((o.key, e));
            }
        }
        Ok(out)
    }

    /// Every recorded run, oldest first; a record that does not read is skipped with a
    /// warning.
    pub fn runs(&self) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        for o in self.storage.list(&self.key("history"))? {
            match self.get_json::<Run>(&o.key) {
                Ok(Some(run)) => out.push(run),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping history record {}: {e:#}", o.key),
            }
        }
        out.sort_by_key(|r| r.started);
        Ok(out)
    }
}
