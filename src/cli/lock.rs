//! `egressc lock`: resolve through the pinned resolvers and write `<policy>.lock`.

use std::path::PathBuf;
use std::process::ExitCode;

use egressc::policy::TargetFormat;
use egressc::resolve::lock as lockfile;

use super::{Failure, SourceArgs, load_policy, resolution};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file.
    policy: PathBuf,
    /// Where to write the lock (default: the policy path with `.lock` appended).
    #[arg(long, value_name = "PATH")]
    lock_file: Option<PathBuf>,
    /// Ask the pinned resolvers over TCP only.
    #[arg(long)]
    dns_tcp: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let loaded = load_policy(&args.policy, TargetFormat::Nft)?;
    let source = SourceArgs {
        locked: false,
        lock_file: None,
        dns_tcp: args.dns_tcp,
    };
    let resolution = resolution(&args.policy, &loaded, &source)?;
    let path = args
        .lock_file
        .unwrap_or_else(|| lockfile::lock_path(&args.policy));
    lockfile::write(&path, &resolution).map_err(Failure::operational)?;
    let addresses: usize = resolution.hosts.values().map(|h| h.addresses.len()).sum();
    eprintln!(
        "wrote {}: {} hosts, {} addresses",
        path.display(),
        resolution.hosts.len(),
        addresses
    );
    Ok(ExitCode::SUCCESS)
}
