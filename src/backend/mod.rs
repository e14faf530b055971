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

use crate::ir::{Family, Origin, Ruleset};

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
