//! A real upstream registry (Debian's `docker-registry`, htpasswd basic auth) and a real nginx running
//! the mirror's rendered configuration, both on loopback, for `tests/registry_mirror_nginx.rs` and
//! `benches/registry_mirror.rs`. Every process is killed and reaped on drop; files live in a temp dir.
//! Needs the Debian packages `docker-registry`, `nginx-light` (or `nginx`) and `apache2-utils`.

#![allow(dead_code)] // each user takes what it needs

use std::{
    fs,
    net::TcpListener,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mirrord_operator::registry_mirror::{
    input::{CacheVolume, Credentials, Upstream},
    reconcile::issue_tls,
    render::{self, CONFIG_DIR, NGINX_UID},
};

pub const USER: &str = "puller";
pub const PASSWORD: &str = "s3cret pass";

fn need(bin: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let path = Path::new(dir).join(bin);
        if path.exists() {
            return path;
        }
    }
    panic!("{bin} is missing: apt-get install docker-registry nginx-light apache2-utils");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed and reaped when dropped.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Drop for Proc {
    // Each process leads its own group: nginx's workers outlive a killed master otherwise.
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
    let out = fs::File::create(&log).unwrap();
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    Proc { child, log }
}

/// Waits (bounded) until `probe` says yes; panics with `what` and the process log otherwise (at once
/// when the process died).
fn wait_until(what: &str, proc: &mut Proc, mut probe: impl FnMut() -> bool) {
    let log = proc.log.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if probe() {
            return;
        }
        if proc.child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not come up; log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Runs curl; returns (HTTP status, response headers, body).
pub fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&headers)
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let mut body = out.stdout;
    let split = body.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&body[split + 1..])
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(split);
    (
        status,
        fs::read_to_string(headers).unwrap_or_default(),
        body,
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Debian's docker-registry with basic auth, storing into the temp dir.
pub struct Registry {
    pub port: u16,
    pub proc: Proc,
    scheme: &'static str,
}

impl Registry {
    pub fn start(dir: &Path) -> Self {
        Self::start_in(&dir.join("registry"))
    }

    /// A second registry serving the same storage over TLS (a certificate for 127.0.0.1 from a fresh
    /// CA), as a real upstream would: returns it and its CA file.
    pub fn tls_twin(&self, dir: &Path) -> (Self, PathBuf) {
        let root = dir.join("registry-tls");
        fs::create_dir_all(&root).unwrap();
        let tls = issue_tls(&["127.0.0.1".to_owned()], time::OffsetDateTime::now_utc()).unwrap();
        let (cert, key, ca) = (
            root.join("tls.crt"),
            root.join("tls.key"),
            root.join("ca.crt"),
        );
        fs::write(&cert, &tls.cert_pem).unwrap();
        fs::write(&key, &tls.key_pem).unwrap();
        fs::write(&ca, &tls.ca_pem).unwrap();
        let data = dir.join("registry").join("data");
        let twin = Self::start_tls(&root, &data, &cert, &key, &ca);
        (twin, ca)
    }

    fn start_tls(root: &Path, data: &Path, cert: &Path, key: &Path, ca: &Path) -> Self {
        fs::copy(
            data.parent().unwrap().join("htpasswd"),
            root.join("htpasswd"),
        )
        .unwrap();
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        );
        let mut registry = Self::launch(root, data, Some(&tls), "https");
        let url = format!("https://127.0.0.1:{}/v2/", registry.port);
        let auth = format!("{USER}:{PASSWORD}");
        wait_until("docker-registry (TLS)", &mut registry.proc, || {
            curl(&["--cacert", ca.to_str().unwrap(), "-u", &auth, &url]).0 == 200
        });
        registry
    }

    fn start_in(root: &Path) -> Self {
        let htpasswd = need("htpasswd");
        fs::create_dir_all(root.join("data")).unwrap();
        let hashed = Command::new(htpasswd)
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .unwrap();
        assert!(hashed.status.success(), "htpasswd failed");
        fs::write(root.join("htpasswd"), hashed.stdout).unwrap();
        let mut registry = Self::launch(root, &root.join("data"), None, "http");
        let url = format!("http://127.0.0.1:{}/v2/", registry.port);
        wait_until("docker-registry", &mut registry.proc, || {
            curl(&["-u", &format!("{USER}:{PASSWORD}"), &url]).0 == 200
        });
        registry
    }

    /// Writes the config (storage in `data`, htpasswd of `root`, optional `tls` lines under `http:`)
    /// and starts the registry on a free loopback port.
    fn launch(root: &Path, data: &Path, tls: Option<&str>, scheme: &'static str) -> Self {
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-only\n{tls}auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n",
            data = data.display(),
            tls = tls.unwrap_or(""),
            htpasswd = root.join("htpasswd").display(),
        );
        fs::write(root.join("config.yml"), config).unwrap();
        let mut cmd = Command::new(need("docker-registry"));
        cmd.arg("serve").arg(root.join("config.yml"));
        let proc = spawn(cmd, root.join("registry.log"));
        Registry { port, proc, scheme }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    fn auth(&self) -> String {
        format!("{USER}:{PASSWORD}")
    }

    fn push_blob(&self, repo: &str, bytes: &[u8], dir: &Path) -> String {
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let (status, headers, _) = curl(&[
            "-u",
            &self.auth(),
            "-X",
            "POST",
            &format!("{}/v2/{repo}/blobs/uploads/", self.url()),
        ]);
        assert_eq!(status, 202, "upload start: {headers}");
        let location = header(&headers, "location").expect("upload location");
        let location = if location.starts_with("http") {
            location.to_owned()
        } else {
            format!("{}{location}", self.url())
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let file = dir.join("blob");
        fs::write(&file, bytes).unwrap();
        let (status, headers, _) = curl(&[
            "-u",
            &self.auth(),
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{location}{sep}digest={digest}"),
        ]);
        assert_eq!(status, 201, "upload end: {headers}");
        digest
    }

    /// Pushes an image (one layer of `layer` bytes); returns (manifest, manifest digest, layer digest).
    pub fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = self.push_blob(repo, config, dir.path());
        let layer_digest = self.push_blob(repo, layer, dir.path());
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": layer_digest}],
        }))
        .unwrap();
        let file = dir.path().join("manifest");
        fs::write(&file, &manifest).unwrap();
        let (status, headers, _) = curl(&[
            "-u",
            &self.auth(),
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.docker.distribution.manifest.v2+json",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{}/v2/{repo}/manifests/{tag}", self.url()),
        ]);
        assert_eq!(status, 201, "manifest push: {headers}");
        let digest = format!("sha256:{}", sha256_hex(&manifest));
        (manifest, digest, layer_digest)
    }

    /// How many times the upstream served `path_part` (a GET or HEAD answered 200), from its access log.
    pub fn served(&self, path_part: &str) -> usize {
        fs::read_to_string(&self.proc.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(path_part) && l.contains("\" 200 "))
            .count()
    }
}

/// nginx with the configuration the controller renders, as the cache pods run it: unprivileged
/// (uid/gid 65532), TLS with the controller's certificate. Only the file locations and the listen
/// address are moved into the temp dir; every directive is the rendered one.
pub struct Mirror {
    pub port: u16,
    pub ca: PathBuf,
    pub conf: String,
    pub proc: Proc,
}

impl Mirror {
    pub fn start(dir: &Path, upstream: &str, credentials: Option<&Credentials>) -> Self {
        let nginx = need("nginx");
        let root = dir.join(format!("mirror-{}", free_port()));
        let (conf_dir, cache_dir, tmp_dir) =
            (root.join("conf"), root.join("cache"), root.join("tmp"));
        for d in [&conf_dir, &cache_dir, &tmp_dir] {
            fs::create_dir_all(d).unwrap();
        }
        let upstream = Upstream::parse(upstream).unwrap();
        let cache = CacheVolume::resolve(None).unwrap();
        let rendered = render::nginx_conf("test", &upstream, credentials, &cache);
        let port = free_port();
        let conf = rendered
            .replace("/tmp/nginx", &format!("{}/nginx", tmp_dir.display()))
            .replace(
                &format!("listen {} ssl;", render::HTTPS_PORT),
                &format!("listen 127.0.0.1:{port} ssl;"),
            )
            .replace(CONFIG_DIR, conf_dir.to_str().unwrap())
            .replace(render::CACHE_DIR, cache_dir.to_str().unwrap());
        assert_ne!(conf, rendered, "the relocations applied");
        let tls = issue_tls(
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        fs::write(conf_dir.join("nginx.conf"), &conf).unwrap();
        fs::write(conf_dir.join("tls.crt"), &tls.cert_pem).unwrap();
        fs::write(conf_dir.join("tls.key"), &tls.key_pem).unwrap();
        let ca = root.join("ca.crt");
        fs::write(&ca, &tls.ca_pem).unwrap();
        // The pod's user owns its volumes (fsGroup); here it owns the temp tree.
        let uid = NGINX_UID.to_string();
        for path in [dir, &root, &conf_dir, &cache_dir, &tmp_dir] {
            let status = Command::new("chown")
                .arg(format!("{uid}:{uid}"))
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success());
        }
        for file in ["nginx.conf", "tls.crt", "tls.key"] {
            let path = conf_dir.join(file);
            Command::new("chown")
                .arg(format!("{uid}:{uid}"))
                .arg(&path)
                .status()
                .unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o440)).unwrap();
        }
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(nginx)
        .args(["-e", "stderr", "-c"])
        .arg(conf_dir.join("nginx.conf"))
        .args(["-g", "daemon off;"]);
        // access_log /dev/stdout reopens the log by path (in a pod it is a pipe): the user must own it.
        let log = root.join("nginx.log");
        fs::write(&log, "").unwrap();
        Command::new("chown")
            .arg(format!("{uid}:{uid}"))
            .arg(&log)
            .status()
            .unwrap();
        let mut proc = spawn(cmd, log);
        let health = format!("https://127.0.0.1:{port}/health-check");
        wait_until("nginx", &mut proc, || {
            curl(&["--cacert", ca.to_str().unwrap(), &health]).0 == 200
        });
        Mirror {
            port,
            ca,
            conf,
            proc,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// GET (or other args) through the mirror, trusting its CA.
    pub fn fetch(&self, path: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
        let url = self.url(path);
        let mut args = vec!["--cacert", self.ca.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }
}
