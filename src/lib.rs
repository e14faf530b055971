//! egressc compiles a declarative egress policy into the kernel's firewall.
//!
//! ```text
//! policy.yaml ──load──▶ RawPolicy ──validate──▶ Policy ──resolve──▶ Resolution ──lower──▶ Ruleset (IR)
//!                                                                                          │
//!                         ┌──────────────────┬─────────────────────┬──────────┴──────────┐
//!                         ▼                  ▼                     ▼                     ▼
//!                    nft script       iptables-restore      netlink batch            explain
//!                                     (IPv4 and IPv6)    (apply, exec: one      (evaluates the IR)
//!                                                          atomic commit)
//! ```
//!
//! Each stage lives in its own module and knows nothing of the later ones:
//! [`policy`] (load and validate), [`resolve`] (pinned DNS and lock files), [`ir`]
//! (the ruleset, its lowering and its evaluation), [`backend`] (nft and iptables
//! text, and the netlink batch) and [`apply`] (loading into the kernel, read-back,
//! snapshots and rollback). [`privileges`] gives up the power to change the
//! firewall before `egressc exec` runs a workload.
//! [`text`] holds the character allowlists that keep policy strings from becoming
//! firewall syntax. [`watch`] keeps an applied policy's set elements in step
//! with DNS, each host at its own TTL (`egressc watch`).

pub mod apply;
pub mod backend;
pub mod ir;
pub mod policy;
pub mod privileges;
pub mod proxy;
pub mod resolve;
pub mod text;
#[cfg(feature = "netlink")]
pub mod watch;
