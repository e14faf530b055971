//! `egressc check`: validate only, no network.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Failure, FormatArg, load_policy};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file.
    policy: PathBuf,
    /// Check the limits of this output format too (e.g. iptables' 29-character log prefix).
    #[arg(long, value_enum, default_value_t)]
    format: FormatArg,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let loaded = load_policy(&args.policy, args.format.target())?;
    let p = &loaded.policy;
    eprintln!(
        "{}: ok: {} allow entries, {} hosts to resolve, {} pinned resolvers, default {}",
        loaded.file,
        p.allow.len(),
        p.hosts().len(),
        p.dns.resolvers.len(),
        match p.default {
            egressc::policy::model::DefaultAction::Deny => "deny",
            egressc::policy::model::DefaultAction::Audit => "audit",
        }
    );
    Ok(ExitCode::SUCCESS)
}
