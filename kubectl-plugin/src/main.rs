//! `kubectl hookline`: Hookline's `Webhook`s from a terminal. kubectl runs this binary
//! (`kubectl-hookline` on the PATH) with the words after `kubectl hookline`; each subcommand
//! is a module that reads its flags, talks to the cluster as the kubeconfig's user (or to the
//! tenant API with a bearer token), prints its result and returns an [`error::Error`] whose
//! exit code says how it ended (see `error`).

mod annotation;
mod cluster;
mod error;
mod output;
mod progress;
mod replay;
mod rotate;
mod status;
mod tail;
mod test_send;
mod timespec;
mod verify;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Hookline from kubectl: the status of Webhooks, test sends, key rotation, replays, the
/// delivery log and signature checks.
#[derive(Debug, Parser)]
#[command(name = "kubectl-hookline", bin_name = "kubectl hookline", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a Webhook's readiness, counts, circuit, last success, failure and test (without a name: all)
    Status(status::StatusArgs),
    /// Send a signed webhook.test event to a Webhook's URL and print the receiver's answer
    Test(test_send::TestArgs),
    /// Rotate a Webhook's generated signing key and print the window both keys sign in
    Rotate(rotate::RotateArgs),
    /// Re-deliver a Webhook's dead letters or the events of a time range, and follow the replay
    Replay(replay::ReplayArgs),
    /// Print the delivery log from the tenant API, oldest first; -f follows it
    Tail(tail::TailArgs),
    /// Check a captured webhook request (stdin) against a whsec_ signing key
    Verify(verify::VerifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Status(a) => status::run(a).await,
            Command::Test(a) => test_send::run(a).await,
            Command::Rotate(a) => rotate::run(a).await,
            Command::Replay(a) => replay::run(a).await,
            Command::Tail(a) => tail::run(a).await,
            Command::Verify(a) => verify::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_subcommand_with_one_line() {
        let help = Cli::command().render_help().to_string();
        for name in ["status", "test", "rotate", "replay", "tail", "verify"] {
            assert!(
                help.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{name} "))),
                "{name} missing from\n{help}"
            );
        }
    }
}
