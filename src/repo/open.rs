//! Opening a repository: its marker (format version and encryption), and for an
//! encrypted one the key slots that give the master key.
//!
//! Invariant: a repository exists once its marker does. `init` of an encrypted
//! repository stores the key slot first and the marker after it, by a conditional
//! create, so a failed or concurrent `init` never leaves a marker without the slot
//! that opens it; the marker's check value names the one master key it belongs to.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::encryption::Keys;
use super::encryption::secret::SecretSource;
use super::encryption::slots::{self, Slot};
use super::pack::ChunkHasher;
use super::storage::{EncryptedStorage, Storage};
use super::{Backend, ClusterRepo, object};
use crate::config::{Encryption, RepositoryConfig};

/// Repository format version written by this pgkeep. Version 2 added encryption (the
/// marker's `encryption` and `key_check`, key slots); version 1 repositories are read
/// as unencrypted ones.
pub const FORMAT_VERSION: u32 = 2;
const MARKER_KEY: &str = "pgkeep.repo";
const AES_256_GCM: &str = "aes-256-gcm";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    format: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<String>,
    /// [`Keys::check_value`] of the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_check: Option<String>,
}

/// How [`open`] treats a location that is not a repository yet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// It must already be one.
    Existing,
    /// It may be empty (for `init`, which calls [`ClusterRepo::create`] once the server
    /// has been reached, so a failed `init` leaves nothing behind).
    MaybeNew,
}

/// The encryption of an opened repository.
#[derive(Clone)]
pub struct Crypt {
    pub keys: Arc<Keys>,
    /// The unencrypted storage, where the marker and the key slots are.
    pub raw: Arc<dyn Storage>,
    /// Where the secret came from.
    pub source: SecretSource,
    /// The slot the secret opened; for a repository not created yet, the slot `create`
    /// stores.
    pub slot: Slot,
    pub created: bool,
}

/// Opens the repository of `config` for `cluster`, checking its marker, and unlocking
/// it if it is encrypted.
pub fn open(config: &RepositoryConfig, cluster: &str, mode: OpenMode) -> Result<ClusterRepo> {
    let Backend {
        storage: raw,
        locks,
    } = Backend::open(config)?;
    let marker = read_marker(&*raw)?;
    let crypt = match &marker {
        None if mode == OpenMode::Existing => bail!(
            "{} is not a pgkeep repository yet; run `pgkeep init` first",
            raw.describe()
        ),
        None => match config.encryption {
            Encryption::None => None,
            Encryption::Aes256Gcm => Some(new_keys(config, &raw)?),
        },
        Some(m) => match (&m.encryption, config.encryption) {
            (None, Encryption::None) => None,
            (None, Encryption::Aes256Gcm) => bail!(
                "repository {} is not encrypted, but the config sets repository.encryption; encryption is chosen when a repository is created: remove the setting, or use a new repository",
                raw.describe()
            ),
            (Some(_), Encryption::None) => bail!(
                "repository {} is encrypted; set repository.encryption = \"{AES_256_GCM}\" and its key (passphrase, passphrase_file or key_command) in the config",
                raw.describe()
            ),
            (Some(e), Encryption::Aes256Gcm) if e == AES_256_GCM => Some(unlock(config, &raw, m)?),
            (Some(e), _) => bail!(
                "repository {} is encrypted with {e}, which this pgkeep does not know; upgrade pgkeep",
                raw.describe()
            ),
        },
    };
    let (storage, hasher): (Arc<dyn Storage>, _) = match &crypt {
        Some(c) => (
            Arc::new(EncryptedStorage::new(raw.clone(), c.keys.clone())),
            ChunkHasher::keyed(c.keys.chunk_id_key()),
        ),
        None => (raw.clone(), ChunkHasher::default()),
    };
    Ok(ClusterRepo {
        storage,
        locks,
        name: cluster.to_string(),
        crypt,
        hasher,
    })
}

fn read_marker(raw: &dyn Storage) -> Result<Option<Marker>> {
    let Some(bytes) = raw.get(MARKER_KEY)? else {
        return Ok(None);
    };
    let marker: Marker = object::decode(&bytes)
        .and_then(|p| Ok(serde_json::from_slice(&p)?))
        .with_context(|| {
            format!(
                "{} is not a pgkeep repository (bad {MARKER_KEY})",
                raw.describe()
            )
        })?;
    if marker.format > FORMAT_VERSION {
        bail!(
            "repository {} has format {} but this pgkeep reads up to {FORMAT_VERSION}; upgrade pgkeep",
            raw.describe(),
            marker.format
        );
    }
    Ok(Some(marker))
}

/// The secret source of `config`, which an encrypted repository needs.
fn source(config: &RepositoryConfig, raw: &dyn Storage) -> Result<SecretSource> {
    SecretSource::of(config).ok_or_else(|| {
        anyhow!(
            "repository {} is encrypted, and the config gives no key: set repository.passphrase, passphrase_file or key_command, or {}",
            raw.describe(),
            super::encryption::secret::ENV
        )
    })
}

/// New keys for a repository `init` will create, and the slot that will hold them.
fn new_keys(config: &RepositoryConfig, raw: &Arc<dyn Storage>) -> Result<Crypt> {
    let source = source(config, &**raw)?;
    let keys = Keys::generate()?;
    let slot = Slot::new(&keys, &source.read()?, source.kind())?;
    Ok(Crypt {
        keys: Arc::new(keys),
        raw: raw.clone(),
        source,
        slot,
        created: false,
    })
}

/// The keys of an existing encrypted repository, from the slot the secret opens.
fn unlock(config: &RepositoryConfig, raw: &Arc<dyn Storage>, marker: &Marker) -> Result<Crypt> {
    let source = source(config, &**raw)?;
    let secret = source.read()?;
    let check = marker.key_check.as_deref().unwrap_or_default();
    let slots = slots::list(&**raw)?;
    let Some((keys, slot)) = slots::unlock(&slots, &secret, check)? else {
        bail!(
            "{} opens none of the {} key slots of repository {}; check the key in the config (`pgkeep key list` shows the slots)",
            source.describe(),
            slots.len(),
            raw.describe()
        );
    };
    Ok(Crypt {
        keys: Arc::new(keys),
        raw: raw.clone(),
        slot: slot.clone(),
        source,
        created: true,
    })
}

impl ClusterRepo {
    /// Creates the repository if it does not exist yet: for an encrypted one, its key
    /// slot, then the marker.
    pub fn create(&self) -> Result<()> {
        let mut marker = Marker {
            format: FORMAT_VERSION,
            encryption: None,
            key_check: None,
        };
        let raw = match &self.crypt {
            Some(c) => {
                if c.created {
                    return Ok(());
                }
                slots::add(&*c.raw, &c.slot)?;
                marker.encryption = Some(AES_256_GCM.into());
                marker.key_check = Some(c.keys.check_value());
                c.raw.clone()
            }
            None => self.storage.clone(),
        };
        let bytes = object::encode(&serde_json::to_vec(&marker)?, 0)?;
        if !raw.put_new(MARKER_KEY, &bytes)?
            && let Some(crypt) = &self.crypt
        {
            slots::remove(&*raw, &crypt.slot.id)?;
            bail!(
                "another `pgkeep init` created repository {} at the same time; run init again",
                raw.describe()
            );
        }
        Ok(())
    }
}

/// A key slot as `key list` shows it.
pub struct SlotInfo {
    pub id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub source: String,
    /// Whether the configured secret opened the repository through it.
    pub in_use: bool,
}

impl ClusterRepo {
    fn crypt(&self) -> Result<&Crypt> {
        self.crypt.as_ref().ok_or_else(|| {
            anyhow!(
                "repository {} is not encrypted, so it has no keys; encryption is chosen when a repository is created",
                self.storage.describe()
            )
        })
    }

    /// The key slots, oldest first.
    pub fn key_slots(&self) -> Result<Vec<SlotInfo>> {
        let crypt = self.crypt()?;
        Ok(slots::list(&*crypt.raw)?
            .into_iter()
            .map(|s| SlotInfo {
                in_use: s.id == crypt.slot.id,
                id: s.id,
                created: s.created,
                source: s.source,
            })
            .collect())
    }

    /// Adds a slot holding the master key under the secret of `source`; returns its id.
    pub fn add_key_slot(&self, source: &SecretSource) -> Result<String> {
        let crypt = self.crypt()?;
        let slot = Slot::new(&crypt.keys, &source.read()?, source.kind())?;
        slots::add(&*crypt.raw, &slot)?;
        Ok(slot.id)
    }

    /// Removes slot `id`, never the one the configured secret opens (nor so the last).
    pub fn remove_key_slot(&self, id: &str) -> Result<()> {
        let crypt = self.crypt()?;
        if !slots::list(&*crypt.raw)?.iter().any(|s| s.id == id) {
            bail!(
                "repository {} has no key slot {id}; `pgkeep key list` shows them",
                self.storage.describe()
            );
        }
        if id == crypt.slot.id {
            bail!(
                "key slot {id} is the one {} opens; switch the config to another key first, so that the repository stays open to you",
                crypt.source.describe()
            );
        }
        slots::remove(&*crypt.raw, id)
    }
}
