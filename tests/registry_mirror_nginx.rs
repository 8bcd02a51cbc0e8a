//! The rendered nginx configuration for real: Debian's nginx runs it (unprivileged, TLS with the
//! controller's certificate) in front of Debian's docker-registry with basic auth, all on loopback. A
//! manifest and a blob are pulled through it twice with curl; the second pull comes from the cache
//! (nginx says HIT and the upstream's access log has one request). Needs the Debian packages
//! docker-registry, nginx-light and apache2-utils (`make deps`).

#[path = "registry_mirror_support/mod.rs"]
mod support;

use mirrord_operator::registry_mirror::input::Credentials;
use support::{Mirror, PASSWORD, Registry, USER, header, sha256_hex};

const MANIFEST_V2: &str = "Accept: application/vnd.docker.distribution.manifest.v2+json";

fn credentials() -> Credentials {
    Credentials {
        username: USER.to_owned(),
        password: PASSWORD.to_owned(),
    }
}

#[test]
fn pulls_through_the_mirror_and_serves_the_second_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    let layer: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (manifest, manifest_digest, layer_digest) = registry.push_image("team/app", "v1", &layer);
    let mirror = Mirror::start(dir.path(), &registry.url(), Some(&credentials()));

    let (status, _, body) = mirror.fetch("/health-check", &[]);
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));

    // The manifest by tag, twice: the same bytes, the second from the cache.
    let manifest_path = "/v2/team/app/manifests/v1";
    let (status, headers, body) = mirror.fetch(manifest_path, &["-H", MANIFEST_V2]);
    assert_eq!(status, 200, "{headers}");
    assert_eq!(body, manifest);
    assert_eq!(
        header(&headers, "x-cache-status"),
        Some("MISS"),
        "{headers}"
    );
    assert_eq!(
        header(&headers, "docker-content-digest"),
        Some(manifest_digest.as_str())
    );
    let (status, headers, body) = mirror.fetch(manifest_path, &["-H", MANIFEST_V2]);
    assert_eq!((status, &body), (200, &manifest));
    assert_eq!(header(&headers, "x-cache-status"), Some("HIT"), "{headers}");

    // The layer blob, twice, and a HEAD: the upstream serves it once.
    let blob_path = format!("/v2/team/app/blobs/{layer_digest}");
    let (status, headers, body) = mirror.fetch(&blob_path, &[]);
    assert_eq!(status, 200, "{headers}");
    assert_eq!(format!("sha256:{}", sha256_hex(&body)), layer_digest);
    assert_eq!(header(&headers, "x-cache-status"), Some("MISS"));
    let (status, headers, body) = mirror.fetch(&blob_path, &[]);
    assert_eq!(status, 200);
    assert_eq!(body.len(), layer.len());
    assert_eq!(header(&headers, "x-cache-status"), Some("HIT"), "{headers}");
    let (status, headers, _) = mirror.fetch(&blob_path, &["-I"]);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-cache-status"), Some("HIT"), "{headers}");
    assert_eq!(
        registry.served(&format!("/blobs/{layer_digest}")),
        1,
        "the upstream served the blob more than once:\n{}",
        std::fs::read_to_string(&registry.proc.log).unwrap()
    );
    assert_eq!(registry.served("/manifests/v1"), 1);

    // Writes never pass: a mirror only reads.
    let (status, _, _) = mirror.fetch("/v2/team/app/blobs/uploads/", &["-X", "POST"]);
    assert_eq!(status, 403);
    let (status, _, _) = mirror.fetch(manifest_path, &["-X", "DELETE"]);
    assert_eq!(status, 403);
    // Outside the registry API there is nothing.
    assert_eq!(mirror.fetch("/", &[]).0, 404);
}

/// The Authorization line is what authenticates: without credentials the upstream refuses, with
/// wrong ones too.
#[test]
fn credentials_are_what_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    registry.push_image("team/app", "v1", b"layer");
    let anonymous = Mirror::start(dir.path(), &registry.url(), None);
    let (status, headers, _) = anonymous.fetch("/v2/team/app/manifests/v1", &["-H", MANIFEST_V2]);
    assert_eq!(status, 401, "{headers}");
    let wrong = Credentials {
        password: "wrong".to_owned(),
        ..credentials()
    };
    let wrong = Mirror::start(dir.path(), &registry.url(), Some(&wrong));
    assert_eq!(
        wrong
            .fetch("/v2/team/app/manifests/v1", &["-H", MANIFEST_V2])
            .0,
        401
    );
    assert!(
        wrong
            .conf
            .contains("proxy_set_header Authorization \"Basic "),
        "{}",
        wrong.conf
    );
}
