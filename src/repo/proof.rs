//! Restore proofs: the record `prove` leaves of one test restore of a backup, kept
//! beside the backup (`CLUSTER/proofs/LABEL/STAMP.proof`) until the backup goes.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ClusterRepo, object};
use crate::format::lsn::Lsn;

/// One test restore: what was restored, how far it recovered, how long each phase
/// took, and what every check found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    pub backup: String,
    /// The recovery target, as `prove` was given it (`latest`, `immediate`, `time ...`).
    pub target: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Every check passed.
    pub passed: bool,
    /// The last WAL record replayed, if recovery got that far.
    pub lsn_reached: Option<Lsn>,
    pub restored_bytes: u64,
    /// WAL from the backup's start to where recovery ended.
    pub wal_replayed_bytes: Option<u64>,
    pub restore_seconds: f64,
    pub recovery_seconds: Option<f64>,
    pub check_seconds: Option<f64>,
    /// Each phase and check in order: restore, recovery, pg_amcheck, every probe.
    pub checks: Vec<Check>,
    /// The machine the proof ran on.
    pub host: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// Why it failed (empty when it passed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Proof {
    /// The measured recovery time objective: from the first byte restored until the
    /// server was open, or `None` if it never opened.
    pub fn rto_seconds(&self) -> Option<f64> {
        self.recovery_seconds.map(|r| r + self.restore_seconds)
    }

    /// The first failed check, as one line.
    pub fn failure(&self) -> Option<String> {
        self.checks
            .iter()
            .find(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.message))
    }
}

impl ClusterRepo {
    fn proofs_prefix(&self, label: &str) -> String {
        self.key(&format!("proofs/{label}"))
    }

    /// Stores a proof; proofs of one backup are told apart by when they finished.
    pub fn put_proof(&self, proof: &Proof) -> Result<()> {
        let key = format!(
            "{}/{}.proof",
            self.proofs_prefix(&proof.backup),
            proof.finished.format("%Y%m%dT%H%M%S%.6fZ")
        );
        self.storage
            .put(&key, &object::encode(&serde_json::to_vec(proof)?, 0)?)
    }

    /// Every proof's name (`LABEL/FINISHED`) with its size (a proof never changes once
    /// written), for the catalog.
    pub fn proof_sizes(&self) -> Result<Vec<(String, u64)>> {
        self.sized_in("proofs", ".proof")
    }

    /// The proof named `name` ([`ClusterRepo::proof_sizes`]); `None` if it went.
    pub fn load_proof(&self, name: &str) -> Result<Option<Proof>> {
        self.get_json(&self.key(&format!("proofs/{name}.proof")))
    }

    /// Removes the proofs of a backup that no longer exists.
    pub fn delete_proofs(&self, label: &str) -> Result<()> {
        for o in self.storage.list(&self.proofs_prefix(label))? {
            self.storage.delete(&o.key)?;
        }
        Ok(())
    }
}
