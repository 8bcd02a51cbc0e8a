//! Agent process numbers for docs/benchmarks.md ("Agent"): start time (spawn → the "agent ready"
//! line), idle RSS, and RSS with 100 open sessions. `cargo bench --bench agent_process`.
//! `mirrord-operator agent` execs the `mirrord-agent` next to it; the idle RSS of the agent run
//! inside `mirrord-operator` (no `mirrord-agent` installed) is printed too.
//! The traffic numbers (through-agent vs direct, filter matching) are in the incoming benches.
//! The iptables row needs root: it runs the agent in a network namespace it creates.
//! `AGENT_BIN=/path/to/mirrord-operator` measures another build (e.g. a release binary while this
//! harness itself runs from `cargo test --bench agent_process`).

#[path = "../tests/support/agent_process.rs"]
mod agent_process;
#[path = "../tests/support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use agent_process::AgentProcess;

use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::{ClientMessage, DaemonMessage};

const RUNS: usize = 30;
const SESSIONS: usize = 100;

fn agent_bin() -> String {
    std::env::var("AGENT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mirrord-operator").to_owned())
}

/// `program` as the agent on loopback `port`, redirect and file access off.
fn start_program(program: &str, port: u16) -> AgentProcess {
    let mut cmd = Command::new(program);
    cmd.env("MIRRORD_AGENT_REDIRECT", "off")
        .env("MIRRORD_AGENT_FS_MODE", "off");
    AgentProcess::start(cmd, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

fn start(port: u16) -> AgentProcess {
    start_program(&agent_bin(), port)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Opens a session and completes ping + negotiation, like the intproxy does.
fn session(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = encode_to_vec(&ClientMessage::Ping).unwrap();
    out.extend(
        encode_to_vec(&ClientMessage::SwitchProtocolVersion(semver::Version::new(
            1, 29, 0,
        )))
        .unwrap(),
    );
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut got = 0;
    while got < 2 {
        let mut chunk = [0u8; 256];
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "agent closed the session");
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Decoded::Message(_msg, used)) = decode_from_slice::<DaemonMessage>(&buf) {
            buf.drain(..used);
            got += 1;
        }
    }
    s
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!("measuring {}", agent_bin());
    let base_port = 47_000 + (std::process::id() % 1000) as u16;
    let mut starts = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        starts.push(start(base_port + i as u16).start_time);
    }
    starts.sort();
    println!(
        "agent start (spawn -> ready line), redirect=off, {RUNS} runs: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        percentile(&starts, 0.5).as_secs_f64() * 1e3,
        percentile(&starts, 0.9).as_secs_f64() * 1e3,
        starts.last().unwrap().as_secs_f64() * 1e3,
    );

    // iptables mode includes the stale-chain cleanup at start (iptables calls); `ip netns exec`
    // adds its own few milliseconds.
    let ns = netns::NetNs::new("bench");
    let mut ipt = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut cmd = ns.command(&agent_bin());
        cmd.env("MIRRORD_AGENT_REDIRECT", "iptables")
            .env("MIRRORD_AGENT_CHAIN_PREFIX", "BENCH")
            .env("MIRRORD_AGENT_FS_MODE", "off");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 61337));
        ipt.push(AgentProcess::start(cmd, addr).start_time);
    }
    ipt.sort();
    println!(
        "agent start with redirect=iptables in a netns, {RUNS} runs: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        percentile(&ipt, 0.5).as_secs_f64() * 1e3,
        percentile(&ipt, 0.9).as_secs_f64() * 1e3,
        ipt.last().unwrap().as_secs_f64() * 1e3,
    );
    drop(ns);

    let agent = start(base_port + RUNS as u16);
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(agent.child.id());
    let mib = |kib: u64| kib as f64 / 1024.0;
    let exe = std::fs::read_link(format!("/proc/{}/exe", agent.child.id())).unwrap();
    println!(
        "agent RSS idle: {:.2} MiB (running {})",
        mib(idle),
        exe.display()
    );
    {
        // Only mirrord-operator in a directory (a hard link), so it runs the agent itself.
        let bin = std::path::Path::new(&agent_bin()).canonicalize().unwrap();
        let dir = tempfile::tempdir_in(bin.parent().unwrap()).unwrap();
        let alone = dir.path().join("mirrord-operator");
        std::fs::hard_link(&bin, &alone).unwrap();
        let inside = start_program(alone.to_str().unwrap(), base_port + RUNS as u16 + 1);
        std::thread::sleep(Duration::from_millis(500));
        println!(
            "agent RSS idle inside mirrord-operator (no mirrord-agent next to it): {:.2} MiB",
            mib(rss_kib(inside.child.id()))
        );
    }
    // Three rounds of 100 sessions: a leak would show as growth from round to round.
    for round in 1..=3 {
        let sessions: Vec<TcpStream> = (0..SESSIONS).map(|_| session(agent.addr)).collect();
        std::thread::sleep(Duration::from_millis(500));
        let busy = rss_kib(agent.child.id());
        drop(sessions);
        std::thread::sleep(Duration::from_millis(500));
        let after = rss_kib(agent.child.id());
        println!(
            "agent RSS round {round}: {SESSIONS} open sessions {:.2} MiB, after they closed {:.2} MiB",
            mib(busy),
            mib(after),
        );
    }
}
