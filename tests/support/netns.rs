//! Network-namespace harness for tests that need real iptables and real processes.
//!
//! `NetNs::new` creates a uniquely named namespace with loopback up; `with_caller` adds a second
//! namespace (the "caller" host) joined by a veth pair, so traffic from the caller enters the main
//! namespace through `PREROUTING` like traffic from another pod. Everything the harness created —
//! namespaces, the processes it started, and any process still living in its namespaces — is
//! removed on `Drop`, also when the test panics. Nothing outside the created namespaces is touched
//! (the veth ends are created directly inside them). `with_caller_v6` adds IPv6 ULA addresses to the
//! same link. A test process killed before its `Drop` ran leaves its namespaces behind; the first
//! `NetNs::new` of every later process removes those whose creating process is gone.
#![allow(dead_code)] // Each test binary uses a different subset of the harness.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex, Once,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Address of the main namespace on the veth link (the "pod IP").
pub const POD_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Address of the caller namespace on the veth link (the "other pod").
pub const CALLER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// IPv6 (ULA) address of the main namespace on the veth link (`with_caller_v6`).
pub const POD_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
/// IPv6 (ULA) address of the caller namespace on the veth link (`with_caller_v6`).
pub const CALLER_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    name: String,
    caller: Option<String>,
    children: Mutex<Vec<Child>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the `mo-<tag>-<pid>-<n>` namespaces whose `<pid>` no longer runs: left by a test
/// process that was killed (a timeout, ^C) before it could clean up.
fn remove_orphaned_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        // A caller namespace is `<main>-c`: without stripping that, its counter would be read
        // as the pid and a live test's namespace deleted.
        let main = name.strip_suffix("-c").unwrap_or(&name);
        let creator = main
            .strip_prefix("mo-")
            .and_then(|rest| rest.rsplit('-').nth(1))
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = creator
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl NetNs {
    /// A fresh namespace named `mo-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> NetNs {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(remove_orphaned_namespaces);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("mo-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        // Construct the guard first so a failure below still removes the namespace.
        let ns = NetNs {
            name,
            caller: None,
            children: Mutex::new(Vec::new()),
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Like `new`, plus a caller namespace linked by veth (`POD_ADDR` <-> `CALLER_ADDR`, /24).
    pub fn with_caller(tag: &str) -> NetNs {
        let mut ns = NetNs::new(tag);
        let caller = format!("{}-c", ns.name);
        ip(&["netns", "add", &caller]);
        ns.caller = Some(caller.clone());
        ip(&["-n", &caller, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", "name", "vpod", "netns", &ns.name, "type", "veth", "peer", "name",
            "vcaller", "netns", &caller,
        ]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{POD_ADDR}/24"),
            "dev",
            "vpod",
        ]);
        ip(&[
            "-n",
            &caller,
            "addr",
            "add",
            &format!("{CALLER_ADDR}/24"),
            "dev",
            "vcaller",
        ]);
        ip(&["-n", &ns.name, "link", "set", "vpod", "up"]);
        ip(&["-n", &caller, "link", "set", "vcaller", "up"]);
        ns
    }

    /// Like `with_caller`, plus `POD_ADDR6` <-> `CALLER_ADDR6` (/64) on the same veth pair.
    /// `nodad`: the addresses are usable at once instead of after duplicate address detection.
    pub fn with_caller_v6(tag: &str) -> NetNs {
        let ns = NetNs::with_caller(tag);
        let caller = ns.caller.clone().expect("caller namespace");
        for (name, dev, addr) in [
            (ns.name.as_str(), "vpod", POD_ADDR6),
            (caller.as_str(), "vcaller", CALLER_ADDR6),
        ] {
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn caller_name(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    /// A command that runs `program` inside the main namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// A command that runs `program` inside the caller namespace.
    pub fn caller_command(&self, program: &str) -> Command {
        let caller = self
            .caller
            .as_deref()
            .expect("namespace created with_caller");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", caller, program]);
        cmd
    }

    /// Starts a process; it is killed when the harness is dropped. Returns its pid.
    pub fn spawn(&self, mut cmd: Command) -> u32 {
        let child = cmd.spawn().expect("spawn process in netns");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Like `spawn`, with the process's stdout piped back to the caller.
    pub fn spawn_piped(&self, mut cmd: Command) -> (u32, std::process::ChildStdout) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn process in netns");
        let stdout = child.stdout.take().expect("piped stdout");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        (pid, stdout)
    }

    /// SIGKILLs one process started with `spawn` and reaps it.
    pub fn kill(&self, pid: u32) {
        let mut children = self.children.lock().unwrap();
        if let Some(pos) = children.iter().position(|c| c.id() == pid) {
            let mut child = children.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `f` on a new thread whose network namespace is the main namespace. Sockets, child
    /// processes and threads created by `f` (e.g. a tokio runtime built inside it) live there.
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        Self::run_in_named(&self.name, f)
    }

    /// Same as `run_in`, for the caller namespace.
    pub fn run_in_caller<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        Self::run_in_named(self.caller.as_deref().expect("with_caller"), f)
    }

    /// Runs `f` on a new thread inside the namespace called `name`.
    pub fn run_in_named<F, R>(name: &str, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(format!("/var/run/netns/{name}")).expect("open netns file");
        thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: plain syscall on a valid fd; it changes only this thread's namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Output of a command run inside the main namespace (panics if it cannot start).
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run command in netns")
    }

    /// `iptables-save -t nat` inside the main namespace.
    pub fn iptables_save(&self) -> String {
        let out = self.output("iptables-save", &["-t", "nat"]);
        assert!(out.status.success(), "iptables-save failed");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Lines of `iptables-save -t nat` mentioning `needle`, without the counters and comments.
    pub fn nat_rules_with(&self, needle: &str) -> Vec<String> {
        rules_with(&self.iptables_save(), needle)
    }

    /// `nat_rules_with` for IPv6 (`ip6tables-save -t nat`).
    pub fn nat6_rules_with(&self, needle: &str) -> Vec<String> {
        let out = self.output("ip6tables-save", &["-t", "nat"]);
        assert!(out.status.success(), "ip6tables-save failed");
        rules_with(&String::from_utf8(out.stdout).expect("utf-8"), needle)
    }

    /// A real HTTP app in the pod namespace: python3's http.server on `port` serving `hello.txt`
    /// with `body`. Returns once it accepts connections; the directory lives as long as the guard.
    pub fn serve_hello(&self, port: u16, body: &str, timeout: Duration) -> tempfile::TempDir {
        let site = tempfile::tempdir().expect("app directory");
        std::fs::write(site.path().join("hello.txt"), body).expect("write hello.txt");
        let mut app = self.command("python3");
        app.args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(site.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.spawn(app);
        self.wait_for_port(std::net::SocketAddr::from((POD_ADDR, port)), timeout);
        site
    }

    /// Waits (bounded) until a TCP port accepts connections on `addr` inside the main namespace.
    pub fn wait_for_port(&self, addr: std::net::SocketAddr, timeout: Duration) {
        self.run_in(|| {
            let deadline = Instant::now() + timeout;
            loop {
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{addr} did not open within {timeout:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        })
    }
}

fn rules_with(save: &str, needle: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.contains(needle) && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for mut child in self
            .children
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in std::iter::once(&self.name).chain(self.caller.as_ref()) {
            // Processes that outlived their parent (e.g. grandchildren) still pin the namespace.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: pid belongs to a process inside a namespace this harness created.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
