//! The firewall side of the DNS proxy: which names a policy lets the proxy
//! resolve, and adding the addresses it answered to the learned sets before
//! the answer goes back to the workload.
//!
//! Each answered address becomes one element per protocol and port of every
//! allow entry the name falls under (exact host or wildcard), with a kernel
//! timeout of TTL + grace: a client may use the answer for its TTL, and a
//! connection opened just before it ran out gets the grace on top, the same
//! rule `refresh` applies to addresses that leave an answer.
//!
//! The gate remembers when each element's timeout runs out. Re-adding an
//! element resets its timeout in the kernel (also to a shorter one), so an
//! element is only written when the new answer keeps it longer than it is
//! already kept: a busy name costs one netlink batch per TTL, not one per
//! query, and a later answer with a smaller TTL never cuts an earlier one short.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::netlink::LearnedElement;
use crate::backend::netlink::Learner;
use crate::backend::{CommentCache, fit_comment};
use crate::ir::{Origin, Ruleset};
use crate::policy::Policy;
use crate::policy::model::Protocol;
use crate::proxy::Gate;
use crate::resolve::ResolvedAddr;

use super::ApplyError;

type ElementKey = (IpAddr, Protocol, u16);

/// A [`Gate`] for an applied proxy-mode policy.
pub struct PolicyGate {
    policy: Policy,
    ruleset: Ruleset,
    grace: Duration,
    state: Mutex<GateState>,
}

struct GateState {
    learner: Learner,
    /// When the kernel drops each element this gate wrote, as last set.
    expiries: HashMap<ElementKey, Instant>,
}

/// What one answer adds: the elements and, for the log, how many were new to
/// the gate or extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Learned {
    pub written: usize,
    pub already_kept: usize,
}

impl PolicyGate {
    /// For `ruleset`, the lowering of `policy` that is applied (with its
    /// learned sets). `grace` is added to every answer's TTL.
    pub fn new(policy: Policy, ruleset: Ruleset, grace: Duration) -> Result<Self, ApplyError> {
        let learner = Learner::open(&ruleset)?;
        Ok(PolicyGate {
            policy,
            ruleset,
            grace,
            state: Mutex::new(GateState {
                learner,
                expiries: HashMap::new(),
            }),
        })
    }

    /// The table was loaded again. If the applied policy is still this one
    /// (watch reloaded it, or `apply` of the same file), start over with its
    /// empty learned sets; otherwise refuse: the proxy answers SERVFAIL until
    /// watch notices and stops.
    fn adopt_reloaded_table(&self, state: &mut GateState) -> Result<(), String> {
        let applied = super::state::read_applied().map_err(|e| e.to_string())?;
        if applied.is_none_or(|a| a.policy_sha256 != self.policy.source_hash) {
            return Err(
                "table inet egressc was replaced and this proxy's policy is no longer the applied one"
                    .into(),
            );
        }
        state.learner.adopt_table().map_err(|e| e.to_string())?;
        state.expiries.clear();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // A panic while holding the lock leaves nothing half-done that matters:
        // the expiries are only a cache of what the kernel holds.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The elements an answer for `name` allows, with their TTLs and origins.
    fn elements_for(
        &self,
        name: &str,
        addrs: &[ResolvedAddr],
    ) -> BTreeMap<ElementKey, (u32, BTreeSet<Origin>)> {
        let mut wanted: BTreeMap<ElementKey, (u32, BTreeSet<Origin>)> = BTreeMap::new();
        for entry in self.policy.entries_for_name(name) {
            for a in addrs {
                for range in &entry.ports {
                    for port in range.first..=range.last {
                        let slot = wanted
                            .entry((a.addr, entry.protocol, port))
                            .or_insert((a.ttl, BTreeSet::new()));
                        slot.0 = slot.0.min(a.ttl);
                        slot.1.insert(Origin::Entry(entry.index));
                    }
                }
            }
        }
        wanted
    }

    /// [`Gate::learn`] with the counts.
    pub fn learn_counted(&self, name: &str, addrs: &[ResolvedAddr]) -> Result<Learned, String> {
        let wanted = self.elements_for(name, addrs);
        let now = Instant::now();
        let mut state = self.lock();
        // Every answer first checks that the table is still the one whose
        // learned sets the gate remembers: after a reload they are empty, and
        // after an `apply` of another policy this gate must not open anything.
        if !state.learner.same_table().map_err(|e| e.to_string())? {
            self.adopt_reloaded_table(&mut state)?;
        }
        let mut comments = CommentCache::default();
        let origins: Vec<Vec<Origin>> = wanted
            .values()
            .map(|(_, o)| o.iter().copied().collect())
            .collect();
        let mut add = Vec::new();
        let mut until = Vec::new();
        let mut counts = Learned::default();
        for ((key, (ttl, _)), origins) in wanted.iter().zip(&origins) {
            let keep = Duration::from_secs(u64::from(*ttl)) + self.grace;
            let expiry = now + keep;
            // One second of slack: answers from a cache count their TTL down in
            // whole seconds, which must not cause a write per query.
            if state
                .expiries
                .get(key)
                .is_some_and(|kept| *kept + Duration::from_secs(1) >= expiry)
            {
                counts.already_kept += 1;
                continue;
            }
            add.push(LearnedElement {
                addr: key.0,
                protocol: key.1,
                port: key.2,
                timeout_ms: keep.as_millis() as u64,
                comment: fit_comment(&format!(
                    "proxy {name}: {}",
                    comments.get(&self.ruleset, origins)
                )),
            });
            until.push((*key, expiry));
        }
        state.learner.add(&add).map_err(|e| e.to_string())?;
        counts.written = add.len();
        for (key, expiry) in until {
            state.expiries.insert(key, expiry);
        }
        // Drop what the kernel has dropped, so the cache stays the size of the
        // learned sets; only when something was written (about once per TTL
        // per name), not on every query.
        if counts.written > 0 {
            state.expiries.retain(|_, e| *e > now);
        }
        Ok(counts)
    }
}

impl Gate for PolicyGate {
    fn allows(&self, name: &str) -> bool {
        self.policy.entries_for_name(name).next().is_some()
    }

    fn learn(&self, name: &str, addrs: &[ResolvedAddr]) -> Result<(), String> {
        self.learn_counted(name, addrs).map(|_| ())
    }
}
