//! Command-line surface: one subcommand per component.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mirrord-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The sidecar the webhook injects into target pods (mirrord-protocol 1.29).
    Agent(Box<crate::agent::AgentArgs>),
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Agent(args) => crate::agent::run(*args),
    }
}
