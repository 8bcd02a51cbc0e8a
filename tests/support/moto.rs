//! A private moto server (PyPI `moto[server]`, an SQS-compatible emulator) for tests and benches, as
//! `/work/shared/design/brokers-for-tests.md` describes: installed into a venv under
//! `$MIRRORD_OPERATOR_CACHE` by `e2e/tools/ensure-moto.sh` (also run by `make deps`), started on a
//! free loopback port, killed on drop. Failing to install or start it fails the test (no skip).
#![allow(dead_code)] // Tests and benches use different subsets.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirrord_operator::coordinator::queues::sqs;

pub const REGION: &str = "us-east-1";

pub struct Moto {
    pub endpoint: String,
    child: Child,
}

fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `moto_server`'s path, installing it when missing.
fn moto_server() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/tools/ensure-moto.sh");
    let out = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run e2e/tools/ensure-moto.sh");
    assert!(
        out.status.success(),
        "e2e/tools/ensure-moto.sh failed (needs python3-venv and PyPI; `make deps` runs it)"
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 path")
        .trim()
        .to_owned()
}

impl Moto {
    /// Starts moto on 127.0.0.1 and waits until it answers (about 1-2 s).
    pub fn start() -> Moto {
        // The splitters' jq filters run in `mirrord-operator jq-worker`, not in this test binary.
        mirrord_operator::coordinator::queues::jq_worker::set_worker_binary(env!(
            "CARGO_BIN_EXE_mirrord-operator"
        ));
        let server = moto_server();
        let port = free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {server}: {e}"));
        let mut moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = moto.child.try_wait().expect("moto status") {
                panic!("moto_server exited at start: {status}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An SDK client with dummy credentials pointed at this server.
    pub fn client(&self) -> aws_sdk_sqs::Client {
        sqs::client_with_keys(&self.endpoint, REGION, "testing", "testing")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
