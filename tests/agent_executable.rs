//! `mirrord-operator agent` replaces itself with the agent-only `mirrord-agent` installed next to
//! it, and runs the agent itself when that file is missing. Both paths must serve sessions with
//! the same arguments and environment. Loopback only; no root needed.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mirrord_operator::protocol::{ClientCodec, ClientMessage, DaemonMessage};
use tokio_util::codec::Framed;

#[path = "support/agent_process.rs"]
mod agent_process;

use agent_process::AgentProcess;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The started agent.
struct Agent(AgentProcess);

impl Agent {
    /// `program agent --listen <free loopback port>`, returned once it printed its ready line.
    fn start(program: &Path) -> Agent {
        let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("free loopback port");
        let mut cmd = Command::new(program);
        // Settings from the environment must reach the exec'd process too.
        cmd.env("MIRRORD_AGENT_REDIRECT", "off")
            .env("MIRRORD_AGENT_FS_MODE", "off");
        Agent(AgentProcess::start(cmd, addr))
    }

    fn pid(&self) -> u32 {
        self.0.child.id()
    }

    /// The file the process runs now (after any exec).
    fn exe(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/exe", self.pid())).expect("read /proc/PID/exe")
    }

    /// Ping and version negotiation over `--listen`.
    fn assert_serves(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(self.0.addr).await.unwrap();
            let mut framed = Framed::new(stream, ClientCodec::default());
            for (ask, expected) in [
                (ClientMessage::Ping, DaemonMessage::Pong),
                (
                    ClientMessage::SwitchProtocolVersion(semver::Version::new(1, 29, 0)),
                    DaemonMessage::SwitchProtocolVersionResponse(semver::Version::new(1, 29, 0)),
                ),
            ] {
                framed.send(ask).await.unwrap();
                let answer = tokio::time::timeout(TIMEOUT, framed.next())
                    .await
                    .expect("answered in time")
                    .expect("connection open")
                    .expect("valid message");
                assert_eq!(answer, expected);
            }
        });
    }
}

#[test]
fn agent_subcommand_execs_the_agent_executable_next_to_it() {
    let operator = Path::new(env!("CARGO_BIN_EXE_mirrord-operator"));
    let agent = Agent::start(operator);
    assert_eq!(
        agent.exe(),
        Path::new(env!("CARGO_BIN_EXE_mirrord-agent"))
            .canonicalize()
            .unwrap()
    );
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", agent.pid())).unwrap();
    assert_eq!(comm.trim(), "mirrord-agent");
    agent.assert_serves();
}

#[test]
fn agent_subcommand_runs_in_process_without_the_agent_executable() {
    // A directory holding only mirrord-operator (a hard link: the debug binary is large).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let alone = dir.path().join("mirrord-operator");
    std::fs::hard_link(env!("CARGO_BIN_EXE_mirrord-operator"), &alone).unwrap();
    let agent = Agent::start(&alone);
    assert_eq!(agent.exe(), alone.canonicalize().unwrap());
    agent.assert_serves();
}

#[test]
fn agent_executable_takes_the_agent_flags_directly() {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrord-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.starts_with("The sidecar the webhook injects"),
        "{help}"
    );
    for flag in ["--listen", "--coordinator-url", "--redirect", "--fs-mode"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    // A bad value is refused by the same parser as `mirrord-operator agent`.
    let out = Command::new(env!("CARGO_BIN_EXE_mirrord-agent"))
        .args(["--redirect", "sideways"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sideways"));
}
