//! The agent-only executable: what `mirrord-operator agent` execs into (see `agent::exec_or_run`).
//! The system allocator, as for the agent inside `mirrord-operator` (src/allocator.rs).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "mirrord-agent",
    version,
    about = "The sidecar the webhook injects into target pods (mirrord-protocol 1.29); \
             `mirrord-operator agent` runs this"
)]
struct Cli {
    #[command(flatten)]
    agent: mirrord_operator::agent::AgentArgs,
}

fn main() -> std::process::ExitCode {
    mirrord_operator::agent::run(Cli::parse().agent)
}
