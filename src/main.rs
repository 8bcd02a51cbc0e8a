use clap::Parser;

fn main() -> std::process::ExitCode {
    mirrord_operator::cli::run(mirrord_operator::cli::Cli::parse())
}
