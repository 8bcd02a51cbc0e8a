//! A test client that trusts only a given CA, plus helpers to run the webhook binary.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// Serial (hex) of the certificate the server presented.
    pub serial: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl TlsClient {
    pub fn trusting(ca_pem: &[u8], server_name: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.expect("CA PEM")).expect("CA accepted");
        }
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Full handshakes only: a resumed session would report the certificate of the first one.
        config.resumption = rustls::client::Resumption::disabled();
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(server_name.to_string()).expect("server name"),
        }
    }

    /// One request on a fresh connection (so every call sees the currently served certificate).
    pub async fn post(&self, addr: SocketAddr, path: &str, body: Vec<u8>) -> Result<Reply, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no peer certificate")?
            .clone();
        let (_, x509) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| e.to_string())?;
        let serial = x509.raw_serial_as_string();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let request = Request::post(path)
            .header("host", "webhook")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            body,
            serial,
        })
    }
}

/// Plain HTTP GET (health port).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", "health")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mirrord-operator"))
}

/// Runs `mirrord-operator certs` into `dir` for localhost/127.0.0.1.
pub fn make_certs(dir: &Path) {
    let status = Command::new(binary())
        .args(["certs", "--out-dir"])
        .arg(dir)
        .args(["--dns-name", "localhost", "--ip", "127.0.0.1"])
        .stdout(Stdio::null())
        .status()
        .expect("run certs");
    assert!(status.success(), "mirrord-operator certs failed");
}

/// The webhook process, killed on drop.
pub struct WebhookProcess {
    pub child: Child,
    pub listen: SocketAddr,
    pub health: SocketAddr,
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WebhookProcess {
    /// Starts `webhook --tls-mode files` on the certificates in `dir`, without any cluster, and waits
    /// (bounded) for readiness.
    pub async fn start_files(dir: &Path, extra: &[&str]) -> WebhookProcess {
        let (listen, health) = (free_port(), free_port());
        let child = Command::new(binary())
            .arg("webhook")
            .args([
                "--listen",
                &listen.to_string(),
                "--health-listen",
                &health.to_string(),
                "--tls-mode",
                "files",
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(dir.join("tls.key"))
            .args(extra)
            // Never pick up a developer's cluster.
            .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn webhook");
        let process = WebhookProcess {
            child,
            listen,
            health,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = get(health, "/readyz").await {
                return process;
            }
            assert!(Instant::now() < deadline, "webhook not ready within 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
