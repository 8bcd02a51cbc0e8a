//! A private RabbitMQ node (Debian's `rabbitmq-server`) for tests and benches, as
//! `/work/shared/design/brokers-for-tests.md` describes: its own node name, AMQP, distribution and
//! epmd ports, all on 127.0.0.1, its own data and log directories. Stopped, its epmd killed and its
//! directories removed on drop, also when the test panics.
#![allow(dead_code)] // Tests and benches use different subsets.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, future::BoxFuture};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use mirrord_operator::coordinator::queues::supervisor::BrokerSecrets;

pub struct RabbitNode {
    pub amqp_port: u16,
    dist_port: u16,
    epmd_port: u16,
    nodename: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn installed() -> bool {
    [
        "/usr/sbin/rabbitmq-server",
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists())
}

impl RabbitNode {
    /// Starts a node and waits until it accepts AMQP connections (about 5 s).
    pub fn start() -> RabbitNode {
        assert!(
            installed(),
            "rabbitmq-server is not installed: run `make deps` (Debian package rabbitmq-server)"
        );
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::Builder::new()
            .prefix("mirrord-queues-rmq-")
            .tempdir()
            .expect("temp dir");
        for sub in ["mnesia", "log"] {
            std::fs::create_dir(dir.path().join(sub)).expect("node dir");
        }
        // The Debian wrapper runs the node as the rabbitmq user, which must own its directories.
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown of the node's directories failed");
        let mut node = RabbitNode {
            amqp_port: free_port(),
            dist_port: free_port(),
            epmd_port: free_port(),
            nodename: format!(
                "rabbit-mq{}-{}@localhost",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            dir,
            child: None,
        };
        node.boot();
        node
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    fn env(&self, cmd: &mut Command) {
        let dir = self.dir.path();
        cmd.env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_NODENAME", &self.nodename)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir("/tmp");
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("rabbitmqctl");
        self.env(&mut cmd);
        cmd.arg("-n").arg(&self.nodename).args(args);
        cmd.stdin(Stdio::null());
        cmd.output().expect("rabbitmqctl")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.out")
    }

    fn boot(&mut self) {
        let out = std::fs::File::create(self.log_path()).expect("server log");
        let mut cmd = Command::new("rabbitmq-server");
        self.env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .process_group(0);
        self.child = Some(cmd.spawn().expect("spawn rabbitmq-server"));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.amqp_port)).is_ok() {
                let ready = self.ctl(&["await_startup", "--timeout", "60"]);
                if ready.status.success() {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "rabbitmq-server exited ({status}): {}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not start in 90 s: {}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the node (its data stays), as a broker restart's first half.
    pub fn stop_broker(&mut self) {
        let _ = self.ctl(&["shutdown", "--timeout", "30"]);
        if let Some(mut child) = self.child.take() {
            // The wrapper (su) exits with the node; kill the group if it did not.
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same ports and data.
    pub fn restart_broker(&mut self) {
        self.boot();
    }

    /// Messages ready in `queue`, or `None` when it does not exist.
    pub fn queue_depth(&self, queue: &str) -> Option<u64> {
        let out = self.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let mut parts = line.split_whitespace();
                (parts.next() == Some(queue)).then(|| parts.next()?.parse().ok())?
            })
    }

    /// Waits (30 s at most) until `queue` holds `want` ready messages (`None`: until it is gone).
    pub async fn wait_depth(&self, queue: &str, want: Option<u64>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let depth = self.queue_depth(queue);
            if depth == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue}: depth {depth:?}, wanted {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Broker Secrets for a test node: Secret `rmq` holds the node's URI, `wrong-password` the URI
/// with a bad password; others are missing.
pub struct NodeSecrets(pub String);

impl BrokerSecrets for NodeSecrets {
    fn uri<'a>(&'a self, _: &'a str, secret: &'a str) -> BoxFuture<'a, Result<String, String>> {
        let answer = match secret {
            "rmq" => Ok(self.0.clone()),
            "wrong-password" => Ok(self.0.replace("guest:guest", "guest:nope")),
            other => Err(format!("Secret {other} does not exist")),
        };
        async move { answer }.boxed()
    }
}

/// Declares `queue` durable, as the producers' queues are.
pub async fn declare(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
}

/// Declares `queue` and publishes `count` confirmed messages `<tenant or m>-<i>` to it, with
/// header `tenant` when given.
pub async fn publish(uri: &str, queue: &str, count: usize, tenant: Option<&str>) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    declare(&channel, queue).await;
    let mut properties = BasicProperties::default();
    if let Some(tenant) = tenant {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), AMQPValue::LongString(tenant.into()));
        properties = properties.with_headers(headers);
    }
    for i in 0..count {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("{}-{i}", tenant.unwrap_or("m")).as_bytes(),
                properties.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.stop_broker();
        let mut epmd = Command::new("epmd");
        self.env(&mut epmd);
        let _ = epmd
            .arg("-kill")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
