//! The change feed: what one consumer is served, as a sequence of events. The first event is
//! the consumer's view; then one event each time the version it is served changes (a flip, a
//! rollback, a canary move that moves it), with the keys added, modified and removed and the
//! change class of each. A canary move that leaves the consumer where it was sends nothing.
//!
//! Feeds keep no state of their own in the sidecar beyond their position: every routing the
//! sidecar applies goes into the namespace's change log ([`crate::namespace::Applied`]), and a
//! feed works out its consumer's version at each entry with the same [`route`] that reads use.
//! The keys that changed come from the namespace's diffs, worked out once per pair of versions
//! while both sets are held, whatever the number of feeds.
//!
//! An event's id is `EPOCH:VERSION`, the epoch of the routing and the version served from it.
//! A feed opened with a last event id resumes after it: from the change log when it still
//! reaches back to that epoch, so every change missed is sent in order; else with one event
//! from that version to the one served now. Either way nothing is missed and nothing is sent
//! twice: a feed that resumes at the version served now sends nothing until the next change.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use switchboard_contract::compat::{Class, item_changed};
use switchboard_contract::schema::Cursor;
use switchboard_proto::pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::namespace::{Applied, Namespace};
use crate::serve::ReadError;
use crate::snapshot::{LoadedSet, Route, route};

/// A key that changed, with its change class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    pub key: String,
    pub class: Class,
}

/// The keys that differ between two versions of a namespace's set.
#[derive(Debug)]
pub struct SetDiff {
    pub from: String,
    pub to: String,
    pub added: Vec<KeyChange>,
    pub modified: Vec<KeyChange>,
    pub removed: Vec<KeyChange>,
    /// The three lists as JSON object members, written once for every feed that sends them.
    members: OnceLock<String>,
}

impl SetDiff {
    /// `"added":[..],"modified":[..],"removed":[..]`.
    fn json_members(&self) -> &str {
        self.members.get_or_init(|| {
            let lists = serde_json::json!({
                "added": self.added,
                "modified": self.modified,
                "removed": self.removed,
            })
            .to_string();
            // The object's braces off: the members go into each event's object.
            lists[1..lists.len() - 1].to_string()
        })
    }
}

/// The keys that differ from `from` to `to`. An added key is additive and a removed one
/// destructive; a modified one has the class of its most dangerous field change, as `sbctl
/// plan` shows it (without a schema at hand, so a narrowed list of values counts as destructive).
pub fn diff_sets(from: &LoadedSet, to: &LoadedSet) -> SetDiff {
    let (mut added, mut modified, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    let mut old = from.items.iter().peekable();
    let mut new = to.items.iter().peekable();
    let change = |key: &String, class| KeyChange {
        key: key.clone(),
        class,
    };
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((key, _)), None) => {
                removed.push(change(key, Class::Destructive));
                old.next();
            }
            (None, Some((key, _))) => {
                added.push(change(key, Class::Additive));
                new.next();
            }
            (Some((old_key, old_value)), Some((new_key, new_value))) => {
                match old_key.cmp(new_key) {
                    std::cmp::Ordering::Less => {
                        removed.push(change(old_key, Class::Destructive));
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        added.push(change(new_key, Class::Additive));
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(old_value, new_value) && old_value[..] != new_value[..] {
                            let class = modified_class(old_key, old_value, new_value);
                            modified.push(change(old_key, class));
                        }
                        old.next();
                        new.next();
                    }
                }
            }
        }
    }
    SetDiff {
        from: from.version.clone(),
        to: to.version.clone(),
        added,
        modified,
        removed,
        members: OnceLock::new(),
    }
}

/// The class of an item's change from `old` to `new` (both verified JSON text).
fn modified_class(key: &str, old: &[u8], new: &[u8]) -> Class {
    match (
        serde_json::from_slice::<serde_json::Value>(old),
        serde_json::from_slice::<serde_json::Value>(new),
    ) {
        (Ok(old), Ok(new)) => item_changed(key, &old, &new, &Cursor::new(&[])).class,
        // Never for a verified set; a change nobody can read is not called harmless.
        _ => Class::Destructive,
    }
}

/// One event of a change feed.
#[derive(Clone, Debug)]
pub struct Change {
    pub namespace: String,
    pub consumer: String,
    pub epoch: u64,
    pub version: String,
    pub slot: switchboard_proto::Slot,
    pub canary: bool,
    /// The version served before; `None` on the first view.
    pub previous_version: Option<String>,
    pub initial: bool,
    /// The keys that changed could not be worked out: read everything again.
    pub reset: bool,
    pub applied_at_us: u64,
    pub diff: Option<Arc<SetDiff>>,
}

/// The envelope of an event's JSON; the key lists follow from the diff.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    namespace: &'a str,
    consumer: &'a str,
    epoch: u64,
    version: &'a str,
    slot: switchboard_proto::Slot,
    canary: bool,
    previous_version: Option<&'a str>,
    initial: bool,
    reset: bool,
    applied_at_us: u64,
}

impl Change {
    /// `EPOCH:VERSION`: where a feed resumes after this event.
    pub fn id(&self) -> String {
        format!("{}:{}", self.epoch, self.version)
    }

    /// The event as one line of JSON (an SSE event's data).
    pub fn to_json(&self) -> String {
        let mut json = Vec::new();
        self.write_json(&mut json, &self.id());
        // serde_json writes UTF-8, and the members are its output too.
        String::from_utf8(json).unwrap_or_default()
    }

    /// The event as a whole Server-Sent Event, `id: ID\ndata: JSON\n\n`, written into one
    /// buffer of the right size: a flip writes one on every feed at once.
    pub fn to_sse(&self) -> bytes::Bytes {
        let id = self.id();
        let members = self
            .diff
            .as_deref()
            .map_or(0, |diff| diff.json_members().len());
        let mut frame = Vec::with_capacity(id.len() + members + 512);
        crate::sse::write_id(&mut frame, &id);
        frame.extend_from_slice(b"data: ");
        // Compact JSON holds no line break (serde_json escapes them in strings), so the
        // event's data is this one line.
        self.write_json(&mut frame, &id);
        frame.extend_from_slice(b"\n\n");
        bytes::Bytes::from(frame)
    }

    /// Appends the event's JSON object, whose id is `id` ([`Self::id`]), to `out`.
    fn write_json(&self, out: &mut Vec<u8>, id: &str) {
        let envelope = Envelope {
            id,
            namespace: &self.namespace,
            consumer: &self.consumer,
            epoch: self.epoch,
            version: &self.version,
            slot: self.slot,
            canary: self.canary,
            previous_version: self.previous_version.as_deref(),
            initial: self.initial,
            reset: self.reset,
            applied_at_us: self.applied_at_us,
        };
        let start = out.len();
        if serde_json::to_writer(&mut *out, &envelope).is_err() {
            // Writing plain strings and numbers into memory does not fail; if it ever did,
            // the event is sent without its envelope rather than as broken JSON.
            out.truncate(start);
            out.push(b'{');
        } else {
            // The envelope's closing brace makes way for the key lists.
            out.pop();
            out.push(b',');
        }
        match &self.diff {
            Some(diff) => out.extend_from_slice(diff.json_members().as_bytes()),
            None => out.extend_from_slice(br#""added":[],"modified":[],"removed":[]"#),
        }
        out.push(b'}');
    }

    pub fn to_proto(&self) -> pb::Change {
        let changes = |list: Option<&Vec<KeyChange>>| {
            list.map(|list| {
                list.iter()
                    .map(|c| pb::KeyChange {
                        key: c.key.clone(),
                        class: c.class.as_str().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        let diff = self.diff.as_deref();
        pb::Change {
            id: self.id(),
            namespace: self.namespace.clone(),
            consumer: self.consumer.clone(),
            epoch: self.epoch,
            version: self.version.clone(),
            slot: self.slot.to_string(),
            canary: self.canary,
            previous_version: self.previous_version.clone().unwrap_or_default(),
            initial: self.initial,
            reset: self.reset,
            added: changes(diff.map(|d| &d.added)),
            modified: changes(diff.map(|d| &d.modified)),
            removed: changes(diff.map(|d| &d.removed)),
            applied_at_us: self.applied_at_us,
        }
    }
}

/// Where a feed resumes: the last event id it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastEventId {
    pub epoch: u64,
    pub version: String,
}

impl LastEventId {
    /// Reads `EPOCH:VERSION`; a clear error for anything else.
    pub fn parse(text: &str) -> Result<Self, ReadError> {
        let bad = || {
            ReadError::BadRequest(format!(
                "Last-Event-ID {:?} is not an event id of this feed (EPOCH:VERSION)",
                text.chars().take(80).collect::<String>()
            ))
        };
        let (epoch, version) = text.split_once(':').ok_or_else(bad)?;
        let epoch = epoch.parse().map_err(|_| bad())?;
        let valid = !version.is_empty()
            && version.len() <= crate::serve::MAX_VERSION_LEN
            && version.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(bad());
        }
        Ok(Self {
            epoch,
            version: version.to_string(),
        })
    }
}

/// One consumer's change feed on one namespace.
pub struct Feed {
    namespace: Arc<Namespace>,
    consumer: String,
    /// The last event id given, until the feed starts.
    resume: Option<LastEventId>,
    started: bool,
    /// The version the consumer was last told it is served.
    last_version: Option<String>,
    /// The change log's next entry to look at.
    next_seq: u64,
    pending: VecDeque<Change>,
    applied: watch::Receiver<u64>,
    shutdown: CancellationToken,
}

impl Feed {
    pub fn new(
        namespace: Arc<Namespace>,
        consumer: String,
        resume: Option<LastEventId>,
        shutdown: CancellationToken,
    ) -> Self {
        let applied = namespace.subscribe_changes();
        Self {
            namespace,
            consumer,
            resume,
            started: false,
            last_version: None,
            next_seq: 0,
            pending: VecDeque::new(),
            applied,
            shutdown,
        }
    }

    /// The next event; `None` once the sidecar shuts down.
    pub async fn next(&mut self) -> Option<Change> {
        loop {
            // Marked seen before the log is read, so a routing applied meanwhile wakes the
            // wait below instead of being missed.
            self.applied.borrow_and_update();
            self.catch_up();
            if let Some(change) = self.pending.pop_front() {
                return Some(change);
            }
            tokio::select! {
                changed = self.applied.changed() => changed.ok()?,
                () = self.shutdown.cancelled() => return None,
            }
        }
    }

    /// Queues the events of the routings applied since the feed last looked.
    fn catch_up(&mut self) {
        if !self.started {
            // Nothing is served before the first routing is applied: wait for it.
            let Some(last) = self.namespace.last_applied() else {
                return;
            };
            self.started = true;
            match self.resume.take() {
                None => {
                    let routed = route(&last.routing, &self.consumer);
                    self.last_version = Some(routed.version.to_string());
                    self.next_seq = last.seq + 1;
                    let change = self.change(&last, routed, None, None);
                    self.pending.push_back(change);
                    return;
                }
                Some(resume) => {
                    self.last_version = Some(resume.version);
                    match self.namespace.resume_after_epoch(resume.epoch) {
                        Some(seq) => self.next_seq = seq,
                        // The log no longer reaches back: only the latest routing counts.
                        None => self.next_seq = last.seq,
                    }
                }
            }
        }
        let (entries, lagged) = self.namespace.changes_since(self.next_seq);
        // A feed that fell behind the log compares the newest routing with what it was told.
        let skip = if lagged {
            entries.len().saturating_sub(1)
        } else {
            0
        };
        for entry in entries.into_iter().skip(skip) {
            self.next_seq = entry.seq + 1;
            let routed = route(&entry.routing, &self.consumer);
            if self.last_version.as_deref() == Some(routed.version) {
                continue;
            }
            let previous = self.last_version.replace(routed.version.to_string());
            let diff = previous
                .as_deref()
                .and_then(|from| self.namespace.diff(from, routed.version));
            let change = self.change(&entry, routed, previous, diff);
            self.pending.push_back(change);
        }
    }

    /// The event of `entry`, which routes the consumer as `routed`: the first view when there
    /// is no previous version.
    fn change(
        &self,
        entry: &Applied,
        routed: Route<'_>,
        previous_version: Option<String>,
        diff: Option<Arc<SetDiff>>,
    ) -> Change {
        let initial = previous_version.is_none();
        Change {
            namespace: self.namespace.name.clone(),
            consumer: self.consumer.clone(),
            epoch: entry.routing.epoch,
            version: routed.version.to_string(),
            slot: routed.slot,
            canary: routed.canary,
            reset: !initial && diff.is_none(),
            previous_version,
            initial,
            applied_at_us: entry.applied_at_us,
            diff,
        }
    }
}
