//! `egressc watch`: keep an applied policy's set elements in step with DNS
//! until asked to stop.
//!
//! The caller has applied the policy (as `egressc apply` does) and hands over
//! what it recorded. From then on every host is re-resolved at its own TTL —
//! the smallest TTL of its answer, clamped to `[min_interval, max_interval]` —
//! and each round goes through [`refresh::update`]: the fresh answers are
//! merged with the addresses still in grace and only set elements change, in
//! one netlink batch, so rules, counters and established connections are
//! untouched. A round also runs when the earliest address held only for grace
//! runs out, so it stops being allowed at the end of its grace and not at some
//! later, unrelated lookup.
//!
//! # Failing closed, and never giving up
//!
//! A lookup that fails (timeout, SERVFAIL, NXDOMAIN, for a required host too)
//! is not fatal: the host keeps its known addresses until their grace ends and
//! is retried every `min_interval`. Names never seen are not allowed (nothing
//! to add), and when a host's last address runs out its entries allow nothing
//! ([`refresh::Lowering::AllowEmpty`]) while the rest of the policy stays
//! enforced. If the kernel's table is not what the record says (someone
//! deleted it), the whole table is loaded again rather than leaving egress
//! open.
//!
//! # Stopping
//!
//! [`Watcher::run`] returns when the [`Shutdown`] signal fires. The ruleset
//! stays in place: removing it would open egress, and a stopped watcher only
//! means addresses stop following DNS. A round that started changing the
//! kernel always finishes, record included (written atomically), before the
//! signal is honoured; a lookup in flight is simply abandoned, since nothing
//! was changed yet.
//!
//! # Running other tasks alongside
//!
//! The watcher is one task on a tokio runtime; blocking work (lookups, netlink,
//! the record) runs on the blocking pool so the runtime's workers stay free for
//! other tasks, such as the DNS proxy. Every task gets a clone of the same
//! [`Shutdown`] (see [`shutdown_channel`] and [`stop_on_signals`]).
//!
//! A task that learns addresses (the proxy) must hand them to the watcher
//! rather than write the sets itself: each round diffs from the ruleset the
//! watcher holds and reads changed sets back whole, so elements added behind
//! its back fail that read-back and make it reload the table. A learned answer
//! is what a round already merges (a host and its `HostAnswer`).
//!
//! # Sharing the state directory
//!
//! Each round first reads the record: if another egressc command rewrote it
//! for this same policy (a manual `refresh`, an `apply`), the watcher carries
//! on from it; if another policy was applied or the rules were removed, it
//! stops with [`WatchError::Superseded`] rather than fight over the table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::apply::refresh::{self, HostChange, Lowering};
use crate::apply::state::{self, Applied};
use crate::apply::{self, ApplyError, Backend};
use crate::backend::netlink;
use crate::ir::Ruleset;
use crate::policy::Policy;
use crate::policy::model::HostName;
use crate::resolve::dns::{self, FailureReason, ResolveOptions};
use crate::resolve::{HostAnswer, LOCK_FORMAT, Resolution};

/// The floor of a host's refresh interval when none is given: 30 s.
pub const DEFAULT_MIN_INTERVAL: u64 = 30;
/// The ceiling of a host's refresh interval when none is given: 1 hour.
pub const DEFAULT_MAX_INTERVAL: u64 = 3600;

/// How the watcher schedules and merges.
#[derive(Debug, Clone)]
pub struct Options {
    /// Keep an address that left the answers (or whose host stopped
    /// resolving) for the larger of its TTL and this many seconds.
    pub grace: u64,
    /// No host is asked more often than this (seconds, at least 1); a host
    /// whose lookup failed is retried after this long.
    pub min_interval: u64,
    /// Every host is asked at least this often (seconds), whatever its TTL.
    pub max_interval: u64,
    /// Transport, timeouts and concurrency of the lookups.
    pub resolve: ResolveOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            grace: refresh::DEFAULT_GRACE,
            min_interval: DEFAULT_MIN_INTERVAL,
            max_interval: DEFAULT_MAX_INTERVAL,
            resolve: ResolveOptions::default(),
        }
    }
}

/// Why the watcher stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Options(String),
    /// The record now describes something else than what this watcher
    /// applied (another policy, another backend, or nothing).
    #[error("{0}; watch stops (restart it to apply its policy again)")]
    Superseded(String),
    /// The table could neither be updated nor reloaded, or the record could
    /// not be written: the kernel and the record may disagree.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// The stop signal shared by every task of the daemon: stop once it holds
/// `true`, or once its sender is gone (nobody could ask any more).
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

/// A [`Shutdown`] and the sender that fires it (`send(true)`).
pub fn shutdown_channel() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
    tokio::sync::watch::channel(false)
}

/// Fires `stop` on the first SIGTERM or SIGINT. Call from inside the runtime.
pub fn stop_on_signals(stop: tokio::sync::watch::Sender<bool>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop.send(true);
        // Keep the sender: dropping it is a stop too, and this one already fired.
        std::future::pending::<()>().await;
    });
    Ok(())
}

/// Resolves once `shutdown` asks to stop.
pub async fn stopping(shutdown: &mut Shutdown) {
    // An error means the sender is gone: nobody could ask any more, so stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Why an address is held only for its grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptWhy {
    /// The host resolves, but not to this address any more.
    LeftTheAnswers,
    /// The host's lookups fail.
    LookupFailing,
    /// The host's lookup has not answered yet, and its last answer has
    /// outlived its TTL (a resolver that does not respond).
    NoAnswerYet,
}

/// One thing worth a log line. [`Event::is_verbose`] ones say nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The watcher took over the applied policy.
    Started {
        hosts: usize,
        min_interval: u64,
        max_interval: u64,
        grace: u64,
    },
    /// An address is allowed now.
    Added { host: HostName, addr: IpAddr },
    /// An address is no longer allowed (its grace ended).
    Removed { host: HostName, addr: IpAddr },
    /// An address left the answers, or its host stopped resolving; it stays
    /// allowed for `seconds` more.
    Kept {
        host: HostName,
        addr: IpAddr,
        seconds: u64,
        why: KeptWhy,
    },
    /// A host's lookup failed (logged when it starts failing or the reason
    /// changes, not at every retry).
    LookupFailed {
        host: HostName,
        reason: String,
        retry_in: u64,
    },
    /// A host's lookup has not answered yet and its last answer outlived its
    /// grace: the resolver does not respond (the failure comes when the lookup
    /// times out).
    Unanswered { host: HostName },
    /// A host that was failing resolves again.
    Resolves { host: HostName },
    /// A host has no address left: its entries allow nothing.
    Exhausted { host: HostName, required: bool },
    /// Another egressc command rewrote the record for this same policy (a
    /// manual `refresh`, an `apply`); the watcher continues from it.
    Adopted,
    /// The element update failed, or the table was gone, so the whole table
    /// was loaded again.
    Reloaded { why: String },
    /// A round ended (verbose: it says nothing changed by itself).
    Round {
        asked: usize,
        failed: usize,
        added: usize,
        deleted: usize,
        next_in: Duration,
    },
    /// The watcher stopped on request; the ruleset stays.
    Stopped,
}

impl Event {
    /// Whether the line is only for `-v`.
    pub fn is_verbose(&self) -> bool {
        matches!(self, Event::Round { .. })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started {
                hosts,
                min_interval,
                max_interval,
                grace,
            } => write!(
                f,
                "watching {hosts} host{}: each re-resolved at its TTL, every {min_interval} to {max_interval} s; addresses that leave the answers kept for max(TTL, {grace} s)",
                if *hosts == 1 { "" } else { "s" }
            ),
            Event::Added { host, addr } => write!(f, "{host}: + {addr}"),
            Event::Removed { host, addr } => write!(f, "{host}: - {addr}"),
            Event::Kept {
                host,
                addr,
                seconds,
                why,
            } => {
                let why = match why {
                    KeptWhy::LeftTheAnswers => "no longer answered",
                    KeptWhy::LookupFailing => "lookup failing",
                    KeptWhy::NoAnswerYet => "lookup not answered yet",
                };
                write!(f, "{host}: ~ {addr} ({why}; kept for {seconds} s)")
            }
            Event::LookupFailed {
                host,
                reason,
                retry_in,
            } => write!(
                f,
                "{host}: lookup failed: {reason}; known addresses kept until their grace ends, retrying every {retry_in} s"
            ),
            Event::Unanswered { host } => write!(
                f,
                "{host}: its lookup has not answered yet and its last answer outlived its grace"
            ),
            Event::Resolves { host } => write!(f, "{host}: resolves again"),
            Event::Exhausted {
                host,
                required: true,
            } => write!(
                f,
                "{host}: no address left; its entries allow nothing until it resolves again"
            ),
            Event::Exhausted {
                host,
                required: false,
            } => write!(
                f,
                "{host}: no address left; its optional entries are left out until it resolves again"
            ),
            Event::Adopted => f.write_str(
                "the record was rewritten by another egressc command for this policy; continuing from it",
            ),
            Event::Reloaded { why } => write!(
                f,
                "{why}; loaded the whole table again (its counters restart)"
            ),
            Event::Round {
                asked,
                failed,
                added,
                deleted,
                next_in,
            } => write!(
                f,
                "round: {asked} hosts asked ({failed} failed), {added} set elements added, {deleted} deleted; next in {:.1} s",
                next_in.as_secs_f64()
            ),
            Event::Stopped => f.write_str("stopped; the rules stay in place"),
        }
    }
}

/// When to ask each host next, and which are failing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Schedule {
    min_ms: u64,
    max_ms: u64,
    hosts: BTreeMap<HostName, HostState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostState {
    /// Unix milliseconds.
    due: u64,
    /// Why its last lookup failed; `None` while it resolves.
    failing: Option<String>,
}

impl Schedule {
    fn new(min_interval: u64, max_interval: u64) -> Schedule {
        Schedule {
            min_ms: min_interval.saturating_mul(1000),
            max_ms: max_interval.saturating_mul(1000),
            hosts: BTreeMap::new(),
        }
    }

    /// How long until a host whose lookup ended at `now` is asked again:
    /// its TTL within the bounds, or the floor after a failure (or TTL 0).
    fn interval(&self, ttl: Option<u32>) -> u64 {
        match ttl {
            Some(ttl) => (u64::from(ttl) * 1000).clamp(self.min_ms, self.max_ms),
            None => self.min_ms,
        }
    }

    /// Records what a lookup at `now` gave: the answer's smallest TTL, or
    /// why it failed. Returns the host's previous failure, if any.
    fn answered(
        &mut self,
        host: &HostName,
        now: u64,
        result: Result<u32, String>,
    ) -> Option<String> {
        let (ttl, failing) = match result {
            Ok(ttl) => (Some(ttl), None),
            Err(why) => (None, Some(why)),
        };
        let due = now.saturating_add(self.interval(ttl));
        let state = HostState { due, failing };
        self.hosts
            .insert(host.clone(), state)
            .and_then(|old| old.failing)
    }

    /// The hosts to ask in a round at `now`. Hosts due within a quarter of the
    /// floor join it: asking a little early costs nothing, and a policy with
    /// many hosts makes a few rounds (a record write each) instead of one per
    /// host.
    fn due(&self, now: u64) -> Vec<HostName> {
        let horizon = now.saturating_add(self.min_ms / 4);
        self.hosts
            .iter()
            .filter(|(_, s)| s.due <= horizon)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// [`Schedule::due`], and marks those hosts asked: not due again until
    /// their answer is in ([`Schedule::answered`]).
    fn take_due(&mut self, now: u64) -> Vec<HostName> {
        let due = self.due(now);
        for host in &due {
            if let Some(s) = self.hosts.get_mut(host) {
                s.due = u64::MAX;
            }
        }
        due
    }

    fn next_due(&self) -> Option<u64> {
        self.hosts.values().map(|s| s.due).min()
    }

    fn failing(&self) -> impl Iterator<Item = (&HostName, &String)> {
        self.hosts
            .iter()
            .filter_map(|(h, s)| s.failing.as_ref().map(|why| (h, why)))
    }
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The smallest TTL of an answer (how long all of it may be trusted).
fn min_ttl(answer: &HostAnswer) -> Option<u32> {
    answer.addresses.iter().map(|a| a.ttl).min()
}

/// What a round's update left in the kernel.
struct Updated {
    /// The record to write, and the ruleset it describes.
    record: Applied,
    ruleset: Ruleset,
    changes: Vec<HostChange>,
    /// Set elements added and deleted.
    added: usize,
    deleted: usize,
}

/// A batch of lookups on the blocking pool: each host asked, with its answer.
type Lookup = tokio::task::JoinHandle<Vec<(HostName, Result<HostAnswer, FailureReason>)>>;

/// The answers of the lookup in flight once it finishes; never, if there is
/// none.
async fn finished(
    lookup: &mut Option<Lookup>,
) -> Vec<(HostName, Result<HostAnswer, FailureReason>)> {
    let Some(handle) = lookup.as_mut() else {
        return std::future::pending().await;
    };
    let answers = handle
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    *lookup = None;
    answers
}

/// A policy applied through netlink, kept in step with DNS by [`Watcher::run`].
pub struct Watcher {
    policy: Policy,
    servers: Vec<SocketAddr>,
    options: Options,
    /// What the kernel holds, as last written to the state directory.
    record: Applied,
    /// The ruleset `record` describes (kept, not rebuilt every round).
    ruleset: Ruleset,
    schedule: Schedule,
    /// The earliest end of grace among the addresses held only for grace
    /// (unix seconds).
    grace_end: Option<u64>,
    /// Addresses held only for grace, so each is logged once as it enters.
    in_grace: BTreeSet<(HostName, IpAddr)>,
    /// The hosts of the lookup in flight. Their last answers stand until
    /// they outlive their grace; a resolver that does not respond must not
    /// keep them allowed for as long as its timeouts take.
    in_flight: BTreeSet<HostName>,
}

impl Watcher {
    /// Takes over `record`, which `policy` was just applied as (through
    /// netlink or nft), and `ruleset`, the ruleset that record describes.
    /// Every host is first due at its TTL from now; an optional host that did
    /// not resolve is retried at the floor.
    pub fn new(
        policy: Policy,
        record: Applied,
        ruleset: Ruleset,
        options: Options,
    ) -> Result<Watcher, WatchError> {
        if options.min_interval == 0 {
            return Err(WatchError::Options(
                "the minimum interval must be at least 1 s".into(),
            ));
        }
        if options.max_interval < options.min_interval {
            return Err(WatchError::Options(format!(
                "the maximum interval ({} s) is below the minimum ({} s)",
                options.max_interval, options.min_interval
            )));
        }
        if record.policy_sha256 != policy.source_hash || record.backend == Backend::Iptables {
            return Err(WatchError::Superseded(
                "the record is not this policy applied through nftables".into(),
            ));
        }
        let servers = dns::servers(&policy, &options.resolve);
        let mut schedule = Schedule::new(options.min_interval, options.max_interval);
        let now = now_ms();
        for host in policy.hosts() {
            let answer = record.resolution.hosts.get(host);
            let result = match answer.and_then(min_ttl) {
                Some(ttl) => Ok(ttl),
                None => Err(answer
                    .and_then(|a| a.unresolved.clone())
                    .unwrap_or_else(|| "no addresses".into())),
            };
            schedule.answered(host, now, result);
        }
        Ok(Watcher {
            policy,
            servers,
            options,
            record,
            ruleset,
            schedule,
            grace_end: None,
            in_grace: BTreeSet::new(),
            in_flight: BTreeSet::new(),
        })
    }

    /// When the next round is due (unix milliseconds): the next host due,
    /// or the next end of grace, whichever comes first. While a lookup is in
    /// flight only the ends of grace count: the hosts that fall due meanwhile
    /// wait for it to finish.
    fn next_round(&self, lookup_in_flight: bool) -> Option<u64> {
        let due = if lookup_in_flight {
            None
        } else {
            self.schedule.next_due()
        };
        [due, self.grace_wake()].into_iter().flatten().min()
    }

    /// When the earliest grace ends (unix milliseconds): of an address held
    /// only for grace, or of the last answer of a host whose lookup is in
    /// flight. A little after that second, since an address is kept while
    /// `until > now` in whole seconds.
    fn grace_wake(&self) -> Option<u64> {
        let pending = self
            .in_flight
            .iter()
            .filter_map(|h| self.answer_ends(h))
            .min();
        [self.grace_end, pending]
            .into_iter()
            .flatten()
            .min()
            .map(|s| s.saturating_mul(1000) + 20)
    }

    /// When the first of `host`'s addresses outlives its grace if no answer
    /// comes (unix seconds).
    fn answer_ends(&self, host: &HostName) -> Option<u64> {
        let grace = self.options.grace;
        self.record
            .seen
            .get(host)?
            .values()
            .map(|s| s.last_seen.saturating_add(u64::from(s.ttl).max(grace)))
            .min()
    }

    /// How long to sleep from `now`; never longer than the ceiling, so a
    /// wall clock set back does not stall the watcher.
    /// How long to sleep: until the next host is due or grace ends, and at
    /// most the floor, so a housekeeping round (is the record still ours, is
    /// the table still there?) runs at least that often even when no host is
    /// due — with a proxy-mode policy of wildcards only, none ever is.
    fn wait(&self, now: u64, lookup_in_flight: bool) -> Duration {
        let tick = self.schedule.min_ms;
        let until = self
            .next_round(lookup_in_flight)
            .unwrap_or(now.saturating_add(tick));
        Duration::from_millis(until.saturating_sub(now).min(tick))
    }

    /// Runs until `shutdown` fires (then returns `Ok`, leaving the ruleset in
    /// place) or the kernel and the record can no longer be kept in step.
    /// `on_event` gets one [`Event`] per log-worthy change.
    ///
    /// Lookups run in the background, one batch at a time: while a batch
    /// waits on a resolver that is down, the ends of grace are still kept on
    /// time.
    pub async fn run(
        self,
        mut shutdown: Shutdown,
        mut on_event: impl FnMut(Event) + Send,
    ) -> Result<(), WatchError> {
        let mut watcher = self;
        on_event(Event::Started {
            hosts: watcher.schedule.hosts.len(),
            min_interval: watcher.options.min_interval,
            max_interval: watcher.options.max_interval,
            grace: watcher.options.grace,
        });
        let mut lookup: Option<Lookup> = None;
        loop {
            if lookup.is_none() {
                let due = watcher.schedule.take_due(now_ms());
                if !due.is_empty() {
                    lookup = Some(watcher.start_lookup(due));
                }
            }
            let wait = watcher.wait(now_ms(), lookup.is_some());
            let answers = tokio::select! {
                biased;
                // A lookup in flight is abandoned: nothing has changed yet.
                _ = stopping(&mut shutdown) => break,
                answers = finished(&mut lookup) => answers,
                _ = tokio::time::sleep(wait) => {
                    let now = now_ms();
                    let grace_over = watcher.grace_wake().is_some_and(|at| at <= now);
                    let host_due = lookup.is_none()
                        && watcher.schedule.next_due().is_some_and(|at| at <= now);
                    if !grace_over && host_due {
                        continue; // the loop starts the due host's lookup
                    }
                    // The end of a grace, or a housekeeping tick: a round
                    // without lookups, which checks the record and the table.
                    Vec::new()
                }
            };
            // Not cancellable: once the kernel changes, the record follows.
            let (back, events) = tokio::task::spawn_blocking(move || {
                let events = watcher.round(answers);
                (watcher, events)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            watcher = back;
            for event in events? {
                on_event(event);
            }
        }
        on_event(Event::Stopped);
        Ok(())
    }

    /// Asks the resolvers about `hosts` on the blocking pool
    /// (`resolve_names` runs its own small runtime).
    fn start_lookup(&mut self, hosts: Vec<HostName>) -> Lookup {
        self.in_flight = hosts.iter().cloned().collect();
        let (servers, options) = (self.servers.clone(), self.options.resolve.clone());
        tokio::task::spawn_blocking(move || {
            let results = match dns::resolve_names(&hosts, &servers, &options) {
                Ok(results) => results,
                Err(e) => vec![Err(FailureReason::Failure(e.to_string())); hosts.len()],
            };
            hosts.into_iter().zip(results).collect()
        })
    }

    /// One round: merge `answers` (the hosts asked) into what is applied,
    /// update the kernel's elements, write the record. Blocking.
    fn round(
        &mut self,
        answers: Vec<(HostName, Result<HostAnswer, FailureReason>)>,
    ) -> Result<Vec<Event>, WatchError> {
        let mut events = self.check_record()?;
        let asked = answers.len();
        let now = state::now();
        let ms = now_ms();
        let mut fresh = Resolution {
            lock_format: LOCK_FORMAT,
            policy_sha256: self.policy.source_hash.clone(),
            resolved_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            resolvers: self.policy.dns.resolvers.clone(),
            port: self.policy.dns.port,
            hosts: BTreeMap::new(),
        };
        let mut failed = 0;
        for (host, _) in &answers {
            self.in_flight.remove(host);
        }
        for (host, result) in answers {
            match result {
                Ok(answer) => {
                    let ttl = min_ttl(&answer).unwrap_or(0);
                    if self.schedule.answered(&host, ms, Ok(ttl)).is_some() {
                        events.push(Event::Resolves { host: host.clone() });
                    }
                    fresh.hosts.insert(host, answer);
                }
                Err(reason) => {
                    failed += 1;
                    let why = reason.to_string();
                    let before = self.schedule.answered(&host, ms, Err(why.clone()));
                    if before.as_ref() != Some(&why) {
                        events.push(Event::LookupFailed {
                            host: host.clone(),
                            reason: why,
                            retry_in: self.options.min_interval,
                        });
                    }
                }
            }
        }
        // A failing host, asked now or not, holds only what is in grace; so
        // does a host whose lookup has not answered yet once its last answer
        // has outlived its grace (a grace round while the lookup hangs).
        // Before that, its last answer simply stands.
        let failing = self.schedule.failing().map(|(h, why)| (h, why.as_str()));
        let pending = self
            .in_flight
            .iter()
            .filter(|h| self.answer_ends(h).is_some_and(|end| end <= now))
            .map(|h| (h, "no answer yet"));
        for (host, why) in failing.chain(pending) {
            fresh
                .hosts
                .entry(host.clone())
                .or_insert_with(|| HostAnswer {
                    unresolved: Some(why.to_string()),
                    ..HostAnswer::default()
                });
        }

        let Updated {
            record,
            ruleset,
            changes,
            added,
            deleted,
        } = self.update(&fresh, now, &mut events)?;

        for change in &changes {
            // A failing host being retried is still failing, not just slow.
            let why = if self
                .schedule
                .hosts
                .get(&change.host)
                .is_some_and(|s| s.failing.is_some())
            {
                KeptWhy::LookupFailing
            } else if self.in_flight.contains(&change.host) {
                KeptWhy::NoAnswerYet
            } else {
                KeptWhy::LeftTheAnswers
            };
            for addr in &change.added {
                events.push(Event::Added {
                    host: change.host.clone(),
                    addr: *addr,
                });
            }
            if why == KeptWhy::NoAnswerYet && !change.removed.is_empty() {
                events.push(Event::Unanswered {
                    host: change.host.clone(),
                });
            }
            for addr in &change.removed {
                events.push(Event::Removed {
                    host: change.host.clone(),
                    addr: *addr,
                });
            }
            for (addr, until) in &change.in_grace {
                if !self.in_grace.contains(&(change.host.clone(), *addr)) {
                    events.push(Event::Kept {
                        host: change.host.clone(),
                        addr: *addr,
                        seconds: until.saturating_sub(now),
                        why,
                    });
                }
            }
        }
        for host in self.policy.hosts() {
            let had = !self
                .record
                .resolution
                .addresses(host)
                .unwrap_or_default()
                .is_empty();
            let has = !record
                .resolution
                .addresses(host)
                .unwrap_or_default()
                .is_empty();
            if had && !has {
                events.push(Event::Exhausted {
                    host: host.clone(),
                    required: !self.policy.host_is_optional(host),
                });
            }
        }
        self.in_grace = changes
            .iter()
            .flat_map(|c| c.in_grace.iter().map(|(a, _)| (c.host.clone(), *a)))
            .collect();
        self.grace_end = refresh::next_grace_end(&changes);
        if record != self.record {
            state::write_applied(Some(&record))?;
            self.record = record;
        }
        self.ruleset = ruleset;
        events.push(Event::Round {
            asked,
            failed,
            added,
            deleted,
            next_in: self.wait(now_ms(), false),
        });
        Ok(events)
    }

    /// Updates the kernel's elements to `fresh` merged with what is applied.
    /// If that fails, or nothing changed but the table is gone (deleted
    /// behind egressc's back), loads the whole table again: fail closed.
    fn update(
        &self,
        fresh: &Resolution,
        now: u64,
        events: &mut Vec<Event>,
    ) -> Result<Updated, WatchError> {
        let grace = self.options.grace;
        let updated = refresh::update(
            &self.record,
            &self.ruleset,
            &self.policy,
            fresh,
            now,
            grace,
            Lowering::AllowEmpty,
        )
        .map_err(|e| format!("updating set elements failed: {e}"))
        .and_then(|done| {
            // A batch that was sent was read back; one that was not proves
            // nothing, so look: one netlink request a round.
            if done.update.messages == 0 && !netlink::table_exists().unwrap_or(true) {
                return Err("table inet egressc is gone".to_string());
            }
            Ok(done)
        });
        match updated {
            Ok(done) => Ok(Updated {
                added: done.update.added(),
                deleted: done.update.deleted(),
                record: done.record,
                ruleset: done.ruleset,
                changes: done.changes,
            }),
            Err(why) => {
                // `egressc remove` deletes the table, then the record: a table
                // gone with the record about to follow is not to be reloaded.
                // (Commands do not lock each other out; this narrows the race.)
                if state::read_applied()?.as_ref() != Some(&self.record) {
                    return Err(WatchError::Superseded(format!(
                        "{why}, and the record changed meanwhile"
                    )));
                }
                let eff = refresh::effective(&self.record, fresh, now, grace);
                let ruleset = refresh::lower(&self.policy, &eff.resolution, Lowering::AllowEmpty)?;
                let before = apply::snapshot(Backend::Netlink, Some(&self.record))?;
                apply::apply(Backend::Netlink, &ruleset, &before)?;
                events.push(Event::Reloaded { why });
                let mut record = self.record.clone();
                record.backend = Backend::Netlink;
                record.applied_at =
                    humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
                record.resolution = eff.resolution;
                record.seen = eff.seen;
                Ok(Updated {
                    added: ruleset.sets.iter().map(|s| s.elements.len()).sum(),
                    deleted: 0,
                    record,
                    ruleset,
                    changes: eff.changes,
                })
            }
        }
    }

    /// Whether the record on disk is still the one this watcher wrote. A
    /// record of this same policy written by another egressc command (a
    /// manual `refresh`, an `apply`) is adopted; anything else stops watch.
    fn check_record(&mut self) -> Result<Vec<Event>, WatchError> {
        let on_disk = state::read_applied()?;
        if on_disk.as_ref() == Some(&self.record) {
            return Ok(Vec::new());
        }
        let Some(other) = on_disk else {
            return Err(WatchError::Superseded(
                "egressc's rules were removed (no record in the state directory)".into(),
            ));
        };
        if other.policy_sha256 != self.policy.source_hash {
            return Err(WatchError::Superseded(format!(
                "another policy was applied ({})",
                other.policy_path
            )));
        }
        if other.backend == Backend::Iptables {
            return Err(WatchError::Superseded(
                "the policy was applied again through iptables".into(),
            ));
        }
        self.ruleset = other.ruleset()?;
        self.record = other;
        Ok(vec![Event::Adopted])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostName {
        HostName::parse(name).unwrap()
    }

    #[test]
    fn a_host_is_due_at_its_ttl_within_the_floor_and_the_ceiling() {
        let mut s = Schedule::new(30, 3600);
        s.answered(&host("a.test"), 0, Ok(300));
        s.answered(&host("short.test"), 0, Ok(1));
        s.answered(&host("long.test"), 0, Ok(86_400));
        s.answered(&host("zero.test"), 0, Ok(0));
        let due = |h: &str| s.hosts[&host(h)].due;
        assert_eq!(due("a.test"), 300_000);
        assert_eq!(due("short.test"), 30_000, "the floor");
        assert_eq!(due("zero.test"), 30_000, "TTL 0 too");
        assert_eq!(due("long.test"), 3_600_000, "the ceiling");
        assert_eq!(s.next_due(), Some(30_000));
    }

    #[test]
    fn only_due_hosts_are_asked_and_those_nearly_due_join_them() {
        let mut s = Schedule::new(40, 3600);
        s.answered(&host("a.test"), 0, Ok(40));
        s.answered(&host("b.test"), 0, Ok(45));
        s.answered(&host("c.test"), 0, Ok(60));
        // A host due within a quarter of the floor (10 s) is asked now.
        assert!(s.due(29_999).is_empty());
        assert_eq!(s.due(30_000), [host("a.test")]);
        assert_eq!(s.due(40_000), [host("a.test"), host("b.test")]);
        assert_eq!(s.due(50_000).len(), 3);
        // Taken hosts are not due again until answered.
        assert_eq!(s.take_due(40_000).len(), 2);
        assert_eq!(s.due(40_000), Vec::<HostName>::new());
        assert_eq!(s.next_due(), Some(60_000));
    }

    #[test]
    fn a_failed_host_is_retried_at_the_floor_and_reports_its_failure_once() {
        let mut s = Schedule::new(5, 3600);
        assert_eq!(s.answered(&host("a.test"), 0, Ok(600)), None);
        assert_eq!(
            s.answered(&host("a.test"), 1000, Err("timeout".into())),
            None
        );
        assert_eq!(s.hosts[&host("a.test")].due, 6000);
        assert_eq!(s.failing().count(), 1);
        // The caller compares with the previous failure to log it once.
        assert_eq!(
            s.answered(&host("a.test"), 6000, Err("timeout".into())),
            Some("timeout".into())
        );
        assert_eq!(
            s.answered(&host("a.test"), 11_000, Ok(600)),
            Some("timeout".into())
        );
        assert_eq!(s.failing().count(), 0);
        assert_eq!(s.hosts[&host("a.test")].due, 611_000);
    }

    #[test]
    fn events_read_as_one_line_each() {
        let lines = [
            Event::Added {
                host: host("a.test"),
                addr: "10.0.0.3".parse().unwrap(),
            },
            Event::Removed {
                host: host("a.test"),
                addr: "10.0.0.2".parse().unwrap(),
            },
            Event::Kept {
                host: host("a.test"),
                addr: "10.0.0.2".parse().unwrap(),
                seconds: 7,
                why: KeptWhy::LeftTheAnswers,
            },
        ]
        .map(|e| e.to_string());
        assert_eq!(
            lines,
            [
                "a.test: + 10.0.0.3",
                "a.test: - 10.0.0.2",
                "a.test: ~ 10.0.0.2 (no longer answered; kept for 7 s)"
            ]
        );
        assert!(!Event::Stopped.to_string().contains('\n'));
        assert!(
            Event::Round {
                asked: 0,
                failed: 0,
                added: 0,
                deleted: 0,
                next_in: Duration::ZERO
            }
            .is_verbose()
        );
    }
}
