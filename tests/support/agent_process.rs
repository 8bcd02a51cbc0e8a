//! An agent started as its own process with `agent --listen ADDR`, for tests and benches that drive
//! the real executable over loopback (no network namespace).

#![allow(dead_code)] // Each user reads a different subset (the bench its start time).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The started agent; killed and reaped on drop.
pub struct AgentProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// From spawn to the agent's ready line.
    pub start_time: Duration,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProcess {
    /// Appends `agent --listen <addr>` to `cmd` (the program, maybe behind a wrapper such as
    /// `ip netns exec`), spawns it with the log level at `warn`, and returns once the agent printed
    /// its ready line. Other settings come from `cmd`'s environment and arguments.
    pub fn start(mut cmd: Command, addr: SocketAddr) -> AgentProcess {
        let started = Instant::now();
        let mut child = cmd
            .args(["agent", "--listen", &addr.to_string()])
            .env("MIRRORD_AGENT_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the agent");
        let mut line = String::new();
        // The ready line is the first thing the agent prints; a failed start closes stdout.
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the ready line");
        let agent = AgentProcess {
            child,
            addr,
            start_time: started.elapsed(),
        };
        assert!(
            line.starts_with("agent ready - version "),
            "unexpected first line {line:?}"
        );
        agent
    }
}
