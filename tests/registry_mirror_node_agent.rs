//! The node agent against a temporary directory standing in for containerd's config path: it writes
//! the CA and hosts.toml, rewrites them on drift, and removes only what is its own when it stops.

use std::{fs, time::Duration};

use mirrord_operator::{
    registry_mirror::node_agent::{NodeAgentArgs, remove, run_until, sync_once},
    server::shutdown,
};

fn args(dir: &std::path::Path) -> NodeAgentArgs {
    let ca = dir.join("ca.crt");
    fs::write(&ca, "CA-ONE\n").unwrap();
    NodeAgentArgs {
        mirror: "quay".to_owned(),
        upstream: "quay.example.com:8443".to_owned(),
        endpoint: "https://10.96.0.42:443".to_owned(),
        ca_file: ca,
        hosts_dir: dir.join("certs.d"),
        interval: Duration::from_millis(20),
    }
}

#[test]
fn writes_rewrites_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(dir.path());
    let host_dir = args.hosts_dir.join("quay.example.com:8443");
    let hosts = host_dir.join("hosts.toml");
    let ca = host_dir.join("registry-mirror-quay-ca.crt");

    assert!(sync_once(&args).unwrap(), "first pass writes");
    let toml = fs::read_to_string(&hosts).unwrap();
    assert!(
        toml.contains("server = \"https://quay.example.com:8443\""),
        "{toml}"
    );
    assert!(toml.contains("[host.\"https://10.96.0.42:443\"]"), "{toml}");
    assert!(
        toml.contains(&format!("ca = \"{}\"", ca.display())),
        "{toml}"
    );
    assert_eq!(fs::read_to_string(&ca).unwrap(), "CA-ONE\n");
    assert!(!sync_once(&args).unwrap(), "nothing to do when current");

    // Drift (someone edited the file) and a new CA are both repaired.
    fs::write(&hosts, "server = \"https://elsewhere\"\n").unwrap();
    fs::write(&args.ca_file, "CA-TWO\n").unwrap();
    assert!(sync_once(&args).unwrap());
    assert_eq!(fs::read_to_string(&hosts).unwrap(), toml);
    assert_eq!(fs::read_to_string(&ca).unwrap(), "CA-TWO\n");

    remove(&args).unwrap();
    assert!(!host_dir.exists(), "the directory is removed when empty");
}

#[test]
fn leaves_foreign_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(dir.path());
    let host_dir = args.hosts_dir.join("quay.example.com:8443");
    sync_once(&args).unwrap();
    // Another tool took over hosts.toml and put its own CA beside it.
    fs::write(
        host_dir.join("hosts.toml"),
        "# by hand\nserver = \"https://x\"\n",
    )
    .unwrap();
    fs::write(host_dir.join("other-ca.crt"), "OTHER").unwrap();
    remove(&args).unwrap();
    assert!(host_dir.join("hosts.toml").exists());
    assert!(host_dir.join("other-ca.crt").exists());
    assert!(!host_dir.join("registry-mirror-quay-ca.crt").exists());
}

#[test]
fn missing_ca_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path());
    args.ca_file = dir.path().join("absent.crt");
    let error = sync_once(&args).unwrap_err().to_string();
    assert!(error.contains("absent.crt"), "{error}");
    args.upstream = "not a host/".to_owned();
    assert!(sync_once(&args).is_err());
}

#[tokio::test]
async fn runs_until_shutdown_then_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let args = args(dir.path());
    let hosts = args.hosts_dir.join("quay.example.com:8443/hosts.toml");
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(run_until(args, shutdown));
    for _ in 0..200 {
        if hosts.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hosts.exists(), "hosts.toml written while running");
    trigger.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .unwrap()
        .unwrap();
    assert!(!hosts.exists(), "hosts.toml removed on stop");
}
