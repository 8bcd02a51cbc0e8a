use clap::Parser;

#[global_allocator]
static ALLOCATOR: mirrord_operator::allocator::ByRole = mirrord_operator::allocator::ByRole;

fn main() -> std::process::ExitCode {
    mirrord_operator::cli::run(mirrord_operator::cli::Cli::parse())
}
