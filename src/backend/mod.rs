//! Stage 4: formatting a [`Ruleset`] as text a firewall tool loads.
//!
//! Every backend has the same shape: a `render(&Ruleset) -> Result<String, Error>`
//! over the IR, no policy logic of its own, templates embedded in the binary
//! (`templates/`), and every printed value checked against the output allowlist
//! by [`template`].

pub mod iptables;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod nft;
pub mod template;

use crate::ir::{Family, Origin, Ruleset, SetKind};

/// The text formats egressc renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One nft script replacing `table inet egressc` (IPv4 and IPv6).
    Nft,
    /// iptables-restore text (IPv4).
    Iptables,
    /// ip6tables-restore text (IPv6).
    Ip6tables,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A template refused a value (the output allowlist) or failed to render.
    #[error("cannot render the {format} output")]
    Template {
        format: &'static str,
        #[source]
        source: minijinja::Error,
    },
    /// Something in the ruleset that the format cannot express.
    #[error("the {format} output cannot express this: {what}")]
    Unsupported { format: &'static str, what: String },
}

/// Renders `ruleset` in `format`.
pub fn render(ruleset: &Ruleset, format: Format) -> Result<String, BackendError> {
    match format {
        Format::Nft => nft::render(ruleset),
        Format::Iptables => iptables::render(ruleset, Family::V4),
        Format::Ip6tables => iptables::render(ruleset, Family::V6),
    }
}

/// nft limits comments to 128 bytes; iptables to 256. Comments are ASCII (they are
/// built from allowlisted text), so cutting at a byte is cutting at a character.
const COMMENT_MAX: usize = 120;

/// Shortens a comment to fit every backend.
pub fn fit_comment(text: &str) -> String {
    if text.len() <= COMMENT_MAX {
        text.to_string()
    } else {
        let mut cut = text[..COMMENT_MAX - 3].to_string();
        cut.push_str("...");
        cut
    }
}

/// The fewest elements a sized set is declared for (see [`set_size`]).
pub const SET_SIZE_MIN: u32 = 1024;

/// The `size` a named set is declared with (`size N;` in the nft script,
/// NFTA_SET_DESC_SIZE over netlink; both backends must agree, since the kernel
/// lists it), or `None` for a set declared without one.
///
/// Why declare one: without a size the kernel gives a hash set a resizable
/// table (rhashtable) that starts tiny and grows while the batch inserts, and
/// the inserts take its slow path. With a size it picks a hash table of fixed
/// size allocated up front, and loading 100,000 elements costs a fraction of
/// the time (measured in BENCHMARKS.md).
///
/// Why twice the elements, at least 1,024, rounded up to a power of two: the
/// size is also a cap (the kernel refuses an element beyond it with ENFILE),
/// and `egressc refresh` adds elements to the applied sets later, when answers
/// change and old addresses stay for their grace period. Twice the count
/// leaves room for every address of every host to change once before an
/// `apply` re-sizes the set; 1,024 keeps small sets from filling up after a few
/// new addresses; the power of two makes the declaration change only when the
/// element count crosses one (renders stay stable while counts move a little),
/// and the kernel rounds its bucket count to one anyway. A function of the
/// element count alone, so a render from a lock is byte-stable.
///
/// Only sets of single addresses (hash sets) get one. Interval sets (pipapo)
/// load no faster with a size, so the cap would buy nothing; learned sets
/// (`flags timeout`) are filled by the DNS proxy at run time, without a count
/// known in advance, and must never refuse an answer.
pub fn set_size(set: &crate::ir::Set) -> Option<u32> {
    match set.kind {
        SetKind::Addresses => {
            let twice = u32::try_from(set.elements.len())
                .unwrap_or(u32::MAX)
                .saturating_mul(2);
            Some(
                twice
                    .max(SET_SIZE_MIN)
                    .checked_next_power_of_two()
                    .unwrap_or(u32::MAX),
            )
        }
        SetKind::Networks | SetKind::Learned => None,
    }
}

/// Comment text per distinct list of origins: a host with 1,000 addresses has
/// 1,000 elements with the same origins, and the label is built once.
#[derive(Default)]
pub struct CommentCache<'r> {
    cache: std::collections::HashMap<&'r [Origin], String>,
}

impl<'r> CommentCache<'r> {
    pub fn get(&mut self, ruleset: &Ruleset, origins: &'r [Origin]) -> &str {
        self.cache
            .entry(origins)
            .or_insert_with(|| origins_comment(ruleset, origins))
    }
}

/// Names the policy entries behind a set element, e.g. `allow[2] host api.github.com`
/// or `allow[0,3,7]`, shortened when many entries share one element.
pub fn origins_comment(ruleset: &Ruleset, origins: &[Origin]) -> String {
    const SHOWN: usize = 8;
    let text = match origins {
        [one] => ruleset.origin_label(*one),
        many => {
            let entries: Vec<String> = many
                .iter()
                .filter_map(|o| match o {
                    Origin::Entry(i) => Some(i.to_string()),
                    _ => None,
                })
                .collect();
            let mut text = format!("allow[{}", entries[..entries.len().min(SHOWN)].join(","));
            if entries.len() > SHOWN {
                text.push_str(&format!(" +{} more", entries.len() - SHOWN));
            }
            text.push(']');
            text
        }
    };
    fit_comment(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Element, Set, SetPurpose};
    use crate::policy::model::{PortRange, Protocol};

    fn set(kind: SetKind, n: usize) -> Set {
        let element = Element {
            net: "192.0.2.1/32".parse().unwrap(),
            protocol: Protocol::Tcp,
            ports: PortRange::single(443),
            origins: vec![Origin::Entry(0)],
        };
        Set {
            name: "s",
            family: Family::V4,
            kind,
            purpose: SetPurpose::Allow,
            elements: vec![element; n],
        }
    }

    #[test]
    fn hash_sets_are_sized_for_twice_their_elements_as_a_power_of_two() {
        let size = |n| set_size(&set(SetKind::Addresses, n));
        // Small and empty sets get the floor.
        assert_eq!(size(0), Some(1024));
        assert_eq!(size(1), Some(1024));
        assert_eq!(size(512), Some(1024));
        assert_eq!(size(513), Some(2048));
        assert_eq!(size(1_000), Some(2048));
        assert_eq!(size(10_000), Some(32_768));
        assert_eq!(size(100_000), Some(262_144));
        // Always at least twice the elements: room for refresh to add as many.
        for n in [0, 1, 511, 512, 513, 4_097, 99_999, 100_000, 131_072] {
            let s = size(n).unwrap() as usize;
            assert!(s >= 2 * n && s >= 1024 && s.is_power_of_two(), "{n}: {s}");
        }
    }

    #[test]
    fn interval_and_learned_sets_have_no_size() {
        assert_eq!(set_size(&set(SetKind::Networks, 10)), None);
        assert_eq!(set_size(&set(SetKind::Learned, 0)), None);
    }
}
