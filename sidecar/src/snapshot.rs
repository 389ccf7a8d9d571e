//! What a sidecar serves: per namespace, an immutable snapshot of routing and the verified
//! sets it names, replaced whole on every change. A reader takes one snapshot per request, so
//! one answer never mixes two versions.

use std::sync::Arc;

use switchboard_proto::bucket::on_canary;
use switchboard_proto::{ItemSet, Routing, Slot, SlotVersion};

/// A set loaded from etcd and verified against its manifest (invariant 1).
#[derive(Debug)]
pub struct LoadedSet {
    pub manifest_hash: String,
    pub version: String,
    pub checksum: String,
    pub items: ItemSet,
}

/// Routing and every set it needs, all loaded.
#[derive(Debug)]
pub struct Snapshot {
    pub routing: Routing,
    pub active: Arc<LoadedSet>,
    /// The canary's set while its weight is above zero.
    pub canary: Option<Arc<LoadedSet>>,
    /// The previous set while the bake time after a flip runs (`Routing::baking`), held loaded
    /// and verified so that a flip back is served at once. No consumer is ever served it from
    /// this snapshot: `choose` and `served_sets` ignore it. `None` when routing names no bake,
    /// or when the set could not be loaded (it is then loaded on the flip back, if one comes).
    pub previous: Option<Arc<LoadedSet>>,
}

/// Where routing sends one consumer: to the canary's set or to the active one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<'r> {
    pub slot: Slot,
    pub version: &'r str,
    pub canary: bool,
}

/// Where `routing` sends `consumer`: the sticky, monotonic canary assignment (invariant 4).
/// Reads ([`Snapshot::choose`]) and the change feed both decide by it.
pub fn route<'r>(routing: &'r Routing, consumer: &str) -> Route<'r> {
    if let Some(canary) = routing.live_canary()
        && on_canary(consumer, canary.seed, canary.weight_bp)
    {
        return Route {
            slot: canary.slot,
            version: &canary.version,
            canary: true,
        };
    }
    Route {
        slot: routing.active.slot,
        version: &routing.active.version,
        canary: false,
    }
}

/// The set one consumer is served, and where it came from (invariant 6).
pub struct Choice<'a> {
    pub slot: Slot,
    pub epoch: u64,
    pub set: &'a Arc<LoadedSet>,
    /// Whether the set is the canary's.
    pub canary: bool,
}

impl Snapshot {
    /// The set `consumer` is served: by [`route`] (a snapshot holds the canary's set whenever
    /// routing names a live canary).
    pub fn choose(&self, consumer: &str) -> Choice<'_> {
        let routed = route(&self.routing, consumer);
        if routed.canary
            && let Some(set) = &self.canary
        {
            return Choice {
                slot: routed.slot,
                epoch: self.routing.epoch,
                set,
                canary: true,
            };
        }
        Choice {
            slot: self.routing.active.slot,
            epoch: self.routing.epoch,
            set: &self.active,
            canary: false,
        }
    }

    /// The sets this snapshot holds: those served, and the one held for the bake time.
    pub fn held_sets(&self) -> Vec<(Slot, &Arc<LoadedSet>)> {
        let mut sets = self.served_sets();
        if let Some((previous, _, Some(set))) = self.baking() {
            sets.push((previous.slot, set));
        }
        sets
    }

    /// The set of `version` if this snapshot holds it, with its slot.
    pub fn held(&self, version: &str) -> Option<(Slot, &Arc<LoadedSet>)> {
        self.held_sets()
            .into_iter()
            .find(|(_, set)| set.version == version)
    }

    /// The previous set routing keeps hot during the bake time, with the end of the bake and
    /// the set if it is held.
    pub fn baking(&self) -> Option<(&SlotVersion, u64, Option<&Arc<LoadedSet>>)> {
        let previous = self.routing.baking()?;
        let until_ms = self.routing.bake_until_ms.unwrap_or(0);
        let held = self
            .previous
            .as_ref()
            .filter(|set| set.manifest_hash == previous.manifest);
        Some((previous, until_ms, held))
    }

    /// The sets served, with their slots.
    pub fn served_sets(&self) -> Vec<(Slot, &Arc<LoadedSet>)> {
        let mut sets = vec![(self.routing.active.slot, &self.active)];
        if let (Some(canary), Some(set)) = (self.routing.live_canary(), &self.canary) {
            sets.push((canary.slot, set));
        }
        sets
    }
}
