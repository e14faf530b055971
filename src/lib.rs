//! egressc compiles a declarative egress policy into the kernel's firewall.
//!
//! ```text
//! policy.yaml ──load──▶ RawPolicy ──validate──▶ Policy ──resolve──▶ Resolution ──lower──▶ Ruleset (IR)
//!                                                                                          │
//!                                   ┌─────────────────────┬──────────────────────┬──────────┘
//!                                   ▼                     ▼                      ▼
//!                              nft script          iptables-restore          explain
//!                                                  (IPv4 and IPv6)        (evaluates the IR)
//! ```
//!
//! Each stage lives in its own module and knows nothing of the later ones:
//! [`policy`] (load and validate), [`resolve`] (pinned DNS and lock files), [`ir`]
//! (the ruleset, its lowering and its evaluation), [`backend`] (text output) and
//! [`apply`] (loading into the kernel, read-back, snapshots and rollback).
//! [`text`] holds the character allowlists that keep policy strings from becoming
//! firewall syntax.

pub mod apply;
pub mod backend;
pub mod ir;
pub mod policy;
pub mod privileges;
pub mod resolve;
pub mod text;
