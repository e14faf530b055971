//! `egressc render`: resolve (or read the lock), compile, print the rules.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{Failure, FormatArg, SourceArgs, compile, write_atomically};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file.
    policy: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    format: FormatArg,
    /// Write to this file (atomically) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    source: SourceArgs,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let ruleset = compile(&args.policy, args.format.target(), &args.source)?.ruleset;
    // Rendered in full before anything is written: a failure prints nothing.
    let text =
        egressc::backend::render(&ruleset, args.format.format()).map_err(Failure::operational)?;
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes())?,
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(Failure::operational)?,
    }
    Ok(ExitCode::SUCCESS)
}
