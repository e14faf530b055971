//! The `egressc` command: parse arguments, run the library, map errors to exit codes.
//! Everything that decides anything lives in the library (`src/lib.rs`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
