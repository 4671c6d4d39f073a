//! The fleet's decisions as pure functions of what was listed and read (no I/O, unit-tested): which shards are
//! ready, where a newly claimed shard starts, and what a round claims or takes over.

use super::*;

/// A shard as listed.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// Shard id.
    pub id: String,
    /// Parent shard ids (split: one; merge: two).
    pub parents: Vec<String>,
    /// Closed (split or merged away): it has an ending sequence number and gets no new records.
    pub closed: bool,
}

/// The shards that may be read now: not ended, and every parent ended or gone from the stream.
pub fn ready_shards(shards: &[ShardInfo], positions: &HashMap<String, String>) -> Vec<String> {
    let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
    let ended = |id: &str| positions.get(id).is_some_and(|p| p == SHARD_END);
    shards
        .iter()
        .filter(|s| !ended(&s.id))
        .filter(|s| {
            s.parents
                .iter()
                .all(|p| !listed.contains(p.as_str()) || ended(p))
        })
        .map(|s| s.id.clone())
        .collect()
}

/// One round's lease decisions, from the lease rows alone (no I/O).
#[derive(Debug, PartialEq, Eq)]
pub struct Round {
    /// This worker's fair share: `ceil(ready shards / live workers)`.
    pub share: usize,
    /// How many more shards it should claim.
    pub wanted: usize,
    /// Ready shards free to claim (no owner, expired, or already this worker's), in order; claim until
    /// `wanted` succeed.
    pub free: Vec<String>,
    /// `(shard, owner)`: one lease to take from the busiest worker above its share, when claiming the free
    /// ones leaves this worker short.
    pub steal: Option<(String, String)>,
}

/// Plans a round: live workers are the owners of unexpired leases plus this one; a worker below its share
/// claims free ready shards (not the ones it runs or read until idle), and may take one lease from the
/// busiest worker above its share, so the fleet rebalances one lease per round.
pub fn plan_round<R>(
    me: &str,
    ready: &[String],
    leases: &HashMap<String, crate::sink::Lease>,
    running: &BTreeMap<String, R>,
    idle: &HashSet<String>,
) -> Round {
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for l in leases.values() {
        if !l.owner.is_empty() && !l.expired && l.owner != me {
            *load.entry(l.owner.as_str()).or_default() += 1;
        }
    }
    let live = load.len() + 1;
    let share = ready.len().div_ceil(live);
    let wanted = share.saturating_sub(running.len());
    let free: Vec<String> = ready
        .iter()
        .filter(|s| !running.contains_key(*s) && !idle.contains(*s))
        .filter(|s| {
            leases
                .get(*s)
                .is_none_or(|l| l.owner.is_empty() || l.expired || l.owner == me)
        })
        .cloned()
        .collect();
    // Short of the share by two or more even after the free shards: a worker at exactly the share gives one
    // too (as the KCL's lease taker does). Live workers are counted from lease owners, so a worker holding
    // nothing is not in the share yet: four shards held two and two with two workers idle give a share of two
    // to every worker, and no one is above it. Taking one from a worker at the share leaves it one short,
    // which never takes from a worker at the share again, so leases do not go back and forth.
    let short = wanted.saturating_sub(free.len());
    let steal = load
        .iter()
        .max_by_key(|(_, n)| **n)
        .filter(|(_, n)| **n > share || (short >= 2 && **n >= share))
        .and_then(|(victim, _)| {
            ready
                .iter()
                .find(|s| {
                    leases
                        .get(*s)
                        .is_some_and(|l| l.owner == *victim && !l.expired)
                        && !idle.contains(*s)
                })
                .map(|s| (s.clone(), victim.to_string()))
        });
    Round {
        share,
        wanted,
        free,
        steal,
    }
}

/// Where a newly claimed shard starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From its committed checkpoint (or its pinned start).
    Checkpoint,
    /// From the oldest record: a child of a split or merge, whatever `initial_position` says (as the KCL
    /// does: records written to it between the reshard and the claim must not be skipped).
    TrimHorizon,
    /// At `LATEST` now, with that moment (ms) written as its checkpoint first, so that later opens read from
    /// `AT_TIMESTAMP` ms instead of a later LATEST.
    Pin(i64),
}

/// Decides where a newly claimed shard starts (pure; `now_ms` for `latest`). Only `latest` on an open shard
/// moves with time and needs pinning: `at_timestamp` is the same instant on every start, and the end of a
/// closed shard does not move.
pub fn start_of(
    initial: &InitialPosition,
    has_parent: bool,
    closed: bool,
    committed: bool,
    now_ms: i64,
) -> Start {
    if committed {
        return Start::Checkpoint;
    }
    if has_parent {
        return Start::TrimHorizon;
    }
    match initial {
        InitialPosition::Latest if !closed => Start::Pin(now_ms),
        _ => Start::Checkpoint,
    }
}
