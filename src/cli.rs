//! Command-line surface: one subcommand per component.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{certs, server::telemetry, webhook};

#[derive(Debug, Parser)]
#[command(
    name = "mirrord-operator",
    version,
    about = "mirrord for whole teams: pre-injected agents, one shared cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a development CA and serving certificate (ca.crt, tls.crt, tls.key) for --tls-mode files.
    Certs(certs::CertsArgs),
    /// Run the mutating admission webhook that injects the mirrord-agent sidecar.
    Webhook(Box<webhook::config::WebhookArgs>),
    /// The sidecar the webhook injects into target pods (mirrord-protocol 1.29).
    Agent(Box<crate::agent::AgentArgs>),
    /// Serve the operator.metalbear.co/v1 aggregated API the mirrord CLI uses (behind an APIService).
    Coordinator(Box<crate::coordinator::config::CoordinatorArgs>),
    /// Print the operator's version, license and sessions (what `mirrord operator status` prints).
    Status(crate::admin::StatusArgs),
    /// Run the mirrord CLI's session sequence against a target and print what happens as JSON lines.
    Probe(Box<crate::admin::probe::ProbeArgs>),
    /// The RegistryMirror controller (k8s.osp.tech/v1), or its node agent / CRD printer.
    RegistryMirror(Box<crate::registry_mirror::RegistryMirrorArgs>),
    /// Evaluates SQS jq filters for the coordinator, isolated from it (started by it).
    #[command(hide = true)]
    JqWorker,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "exiting");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> ExitCode {
    // One process-wide crypto provider: kube's client and our servers both use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Certs(args) => {
            telemetry::init(telemetry::LogFormat::Text, "info");
            report(
                certs::write_dev_certs(&args, time::OffsetDateTime::now_utc()).map(|paths| {
                    for path in paths {
                        println!("wrote {}", path.display());
                    }
                }),
            )
        }
        Command::Webhook(args) => {
            telemetry::init(args.server.log_format, "info");
            report(runtime().block_on(webhook::run(*args)))
        }
        Command::Agent(args) => crate::agent::exec_or_run(*args),
        Command::Coordinator(args) => {
            telemetry::init(args.server.log_format, "info");
            report(runtime().block_on(crate::coordinator::run::run(*args)))
        }
        Command::Status(args) => {
            telemetry::init(telemetry::LogFormat::Text, "warn");
            report(runtime().block_on(crate::admin::status(args)))
        }
        Command::Probe(args) => {
            telemetry::init(telemetry::LogFormat::Text, "warn");
            crate::admin::probe::main(*args, runtime())
        }
        Command::RegistryMirror(args) => crate::registry_mirror::main(*args),
        Command::JqWorker => report(crate::coordinator::queues::jq_worker::serve()),
    }
}
