//! The chunk part of `verify`: every stored copy of every chunk is decoded and checked,
//! corrupt copies are recorded beside their pack (so backups store that data again and
//! collection drops the copies), and each problem names the backups it breaks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::Problem;
use crate::repo::chunk_store::ChunkStore;
use crate::repo::encryption::Unauthentic;
use crate::repo::index::{ChunkLocation, CorruptCopy};
use crate::repo::logical::DumpManifest;
use crate::repo::manifest::Manifest;
use crate::repo::pack::ChunkId;

/// Which backups (and which file) use each chunk, to name what a bad chunk breaks.
type Users = BTreeMap<ChunkId, (BTreeSet<String>, String)>;

fn chunk_users(manifests: &[Manifest], dumps: &[DumpManifest]) -> Users {
    let mut users = Users::new();
    let mut add = |label: &str, what: &dyn Fn() -> String, id: &ChunkId| {
        let entry = users
            .entry(*id)
            .or_insert_with(|| (BTreeSet::new(), what()));
        entry.0.insert(label.to_string());
    };
    for m in manifests {
        for f in &m.files {
            for c in &f.chunks {
                add(&m.label, &|| f.path.clone(), c);
            }
        }
    }
    for d in dumps {
        for f in &d.files {
            for (c, _) in &f.chunks {
                add(
                    &d.label,
                    &|| format!("{} of the dump of database {}", f.name, d.database),
                    c,
                );
            }
        }
    }
    users
}

/// What one pack holds, as read now.
#[derive(Default)]
struct PackCheck {
    /// Copies that decode to their chunk.
    good: Vec<ChunkId>,
    /// Copies whose own bytes are damaged.
    corrupt: Vec<ChunkId>,
    /// Copies that cannot be read for another reason (a base, the pack itself), why.
    unreadable: Vec<(ChunkId, String)>,
    /// A problem with the pack as a whole.
    problem: Option<String>,
    /// Whether every copy could be judged (the pack was read).
    judged: bool,
}

/// Decodes every copy in one pack from its bytes, read once.
fn check_pack(store: &ChunkStore, pack: u32, copies: &[(ChunkId, ChunkLocation)]) -> PackCheck {
    let key = store.pack_key(pack);
    let name = store.index.pack_name(pack);
    let mut check = PackCheck::default();
    let bytes = match store.pack_bytes(pack) {
        Ok(Some(b)) => b,
        Ok(None) => {
            let why = format!("pack {key} is missing");
            check.unreadable = copies.iter().map(|(id, _)| (*id, why.clone())).collect();
            return check;
        }
        // Encrypted and damaged: each copy is read (and judged) by itself, through the
        // blocks it lies in.
        Err(e) if e.downcast_ref::<Unauthentic>().is_some() => {
            return check_copies_alone(store, copies, name, &key);
        }
        Err(e) => {
            check.problem = Some(format!("pack {key} is unreadable: {e:#}"));
            return check;
        }
    };
    check.judged = true;
    for (id, loc) in copies {
        let payload = bytes.get(loc.offset as usize..(loc.offset + loc.stored_len as u64) as usize);
        let Some(payload) = payload else {
            check.corrupt.push(*id);
            continue;
        };
        match store.check_copy(id, loc, payload) {
            Ok(_) => check.good.push(*id),
            Err(e) if is_corrupt_here(&e, id, name) => check.corrupt.push(*id),
            Err(e) => check.unreadable.push((*id, format!("{e:#}"))),
        }
    }
    if check.corrupt.is_empty() && store.index.hasher.pack_name(&bytes) != name {
        check.problem = Some(format!(
            "pack {key} is corrupt outside its chunk data (its chunks are intact)"
        ));
    }
    check
}

/// Judges each copy of pack `name` from its own range of the pack.
fn check_copies_alone(
    store: &ChunkStore,
    copies: &[(ChunkId, ChunkLocation)],
    name: &str,
    key: &str,
) -> PackCheck {
    let mut check = PackCheck {
        judged: true,
        ..PackCheck::default()
    };
    for (id, loc) in copies {
        match store.read_copy(id, loc) {
            Ok(_) => check.good.push(*id),
            Err(e) if is_corrupt_here(&e, id, name) => check.corrupt.push(*id),
            Err(e) => check.unreadable.push((*id, format!("{e:#}"))),
        }
    }
    if check.corrupt.is_empty() {
        check.problem = Some(format!(
            "pack {key} is corrupt outside its chunk data (its chunks are intact)"
        ));
    }
    check
}

/// Whether `e` says the copy of `id` in pack `name` is corrupt.
fn is_corrupt_here(e: &anyhow::Error, id: &ChunkId, name: &str) -> bool {
    e.downcast_ref::<CorruptCopy>()
        .is_some_and(|c| c.id == *id && c.pack == name)
}

/// Checks every pack on `jobs` threads.
fn check_packs(store: &ChunkStore, jobs: usize) -> Vec<PackCheck> {
    let packs = store.index.all_copies_by_pack();
    let mut checks: Vec<(usize, PackCheck)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|worker| {
                let packs = &packs;
                scope.spawn(move || {
                    (worker..packs.len())
                        .step_by(jobs)
                        .map(|p| (p, check_pack(store, p as u32, &packs[p])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verify worker panicked"))
            .collect()
    });
    checks.sort_by_key(|(p, _)| *p);
    checks.into_iter().map(|(_, c)| c).collect()
}

/// Replaces each judged pack's damage record with what this run found. A record that
/// cannot be written (a read-only repository) is a problem of its own, not the end of
/// the report.
fn record_damage(store: &ChunkStore, checks: &[PackCheck]) -> Vec<Problem> {
    let index = &store.index;
    let mut problems = Vec::new();
    for (pack, check) in checks.iter().enumerate().filter(|(_, c)| c.judged) {
        let name = index.pack_name(pack as u32);
        let found: BTreeSet<ChunkId> = check.corrupt.iter().copied().collect();
        let recorded = index.damage_records.get(name).cloned().unwrap_or_default();
        if found == recorded {
            continue;
        }
        if let Err(e) = store.set_damage(name, &found) {
            let consequence = match found.is_empty() {
                true => "so its copies, found good now, are still read only as a last resort",
                false => "so backups may still reuse them",
            };
            problems.push(Problem {
                what: format!(
                    "cannot record the corrupt chunk copies of pack {name} ({e:#}), {consequence}; run verify where it can write to the repository"
                ),
                breaks: Vec::new(),
            });
        }
    }
    problems
}

/// Checks every chunk copy and reports; returns how many chunks were checked and
/// whether any backup lost data the database may still hold (so a full backup heals).
pub fn check_chunks(
    store: &ChunkStore,
    jobs: usize,
    manifests: &[Manifest],
    dumps: &[DumpManifest],
    problems: &mut Vec<Problem>,
) -> (usize, bool) {
    let index = &store.index;
    let users = chunk_users(manifests, dumps);
    let checks = check_packs(store, jobs);
    problems.extend(record_damage(store, &checks));
    let good: HashSet<ChunkId> = checks.iter().flat_map(|c| c.good.iter().copied()).collect();
    let mut corrupt: HashMap<ChunkId, Vec<String>> = HashMap::new();
    let mut unreadable: HashMap<ChunkId, String> = HashMap::new();
    for (pack, check) in checks.iter().enumerate() {
        problems.extend(check.problem.iter().map(|what| Problem {
            what: what.clone(),
            breaks: Vec::new(),
        }));
        for id in &check.corrupt {
            corrupt
                .entry(*id)
                .or_default()
                .push(store.pack_key(pack as u32));
        }
        for (id, why) in &check.unreadable {
            unreadable.entry(*id).or_insert_with(|| why.clone());
        }
    }
    let mut lost_data = false;
    for (id, keys) in &corrupt {
        let referenced = users.get(id).filter(|_| !good.contains(id));
        for key in keys {
            let what = format!(
                "chunk {id} in pack {key} is corrupt: its content does not match its checksum"
            );
            problems.push(match referenced {
                Some((labels, path)) => {
                    lost_data = true;
                    Problem {
                        what: format!("{what} (data of {path})"),
                        breaks: labels.iter().cloned().collect(),
                    }
                }
                None => Problem {
                    what: format!(
                        "{what}; no backup needs this copy (a good copy is stored, or none refers to it): `pgkeep expire` removes it"
                    ),
                    breaks: Vec::new(),
                },
            });
        }
    }
    for (id, (labels, path)) in &users {
        if good.contains(id) || corrupt.contains_key(id) {
            continue;
        }
        lost_data = true;
        let what = match unreadable.get(id) {
            Some(why) => format!("chunk {id} of {path} cannot be read: {why}"),
            None => format!("chunk {id} of {path} is referenced but missing from the repository"),
        };
        problems.push(Problem {
            what,
            breaks: labels.iter().cloned().collect(),
        });
    }
    for (name, ids) in &index.packs_missing {
        if ids
            .iter()
            .any(|id| users.contains_key(id) && !good.contains(id))
        {
            problems.push(Problem {
                what: format!(
                    "pack {name}: its index is there but the pack itself is missing, so its chunks are lost: put back a good copy of the pack if you have one"
                ),
                breaks: Vec::new(),
            });
        }
    }
    for (pack, why) in &index.index_from_pack {
        let chunks = &checks[*pack as usize].good;
        if chunks.iter().any(|id| users.contains_key(id)) {
            problems.push(Problem {
                what: format!(
                    "pack {}: {why}; its chunks are read through the copy of the index inside it, \
                     and the next backup or `pgkeep expire` writes the file again",
                    store.pack_key(*pack)
                ),
                breaks: Vec::new(),
            });
        }
    }
    (good.len(), lost_data)
}
