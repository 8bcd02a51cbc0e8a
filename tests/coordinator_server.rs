//! The coordinator's server over real TLS on loopback: the listener asks for a client certificate
//! without requiring one, and front-proxy authentication lets a request through only with a
//! certificate from the requestheader CA (allowed CN) plus `X-Remote-User`. Everything else is a 401
//! `metav1.Status`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mirrord_operator::{
    certs::{self, San},
    coordinator::{
        api::{
            self,
            state::{AllowAll, ApiState, License, OperatorInfo, StaticInventory},
        },
        credentials::UserCa,
        kube::front_proxy::{Authn, RequestHeaderConfig},
        metrics::Metrics,
        run::authenticated,
    },
    server::{self as runtime, shutdown},
    tls::{self, CertResolver, ServingCert},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use serde_json::Value;
use tokio_rustls::TlsConnector;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A client certificate and its key, as kube-apiserver's `--proxy-client-cert-file` would be.
fn client_cert(ca: &Ca, cn: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    )
}

struct Server {
    addr: std::net::SocketAddr,
    serving_ca: String,
    _trigger: shutdown::ShutdownTrigger,
}

async fn start(front_proxy: &Ca) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = time::OffsetDateTime::now_utc();
    let day = Duration::from_secs(86400);
    let serving_ca = certs::generate_ca("test coordinator CA", now, day).unwrap();
    let pair =
        certs::issue_serving(&serving_ca, &[San::Dns("localhost".into())], now, day).unwrap();
    let resolver = Arc::new(CertResolver::default());
    resolver
        .swap(ServingCert::from_pem(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes()).unwrap());

    let data = BTreeMap::from([
        (
            "requestheader-client-ca-file".to_string(),
            front_proxy.pem.clone(),
        ),
        (
            "requestheader-allowed-names".to_string(),
            r#"["front-proxy-client"]"#.to_string(),
        ),
    ]);
    let config = Arc::new(ArcSwapOption::from_pointee(
        RequestHeaderConfig::from_data(&data).unwrap(),
    ));
    let info = OperatorInfo {
        operator_version: api::objects::operator_version(),
        default_namespace: "mirrord".into(),
        license: License {
            name: "test".into(),
            organization: "test".into(),
            expire_at: time::Date::from_calendar_date(2099, time::Month::December, 31).unwrap(),
        },
    };
    let state = ApiState::new(
        info,
        UserCa::generate("test user CA", now).unwrap(),
        Arc::new(AllowAll),
        Arc::new(StaticInventory::default()),
    );
    let router = authenticated(
        api::router(state),
        Authn {
            config,
            observer: Arc::new(Metrics::default()),
        },
    );
    let (trigger, shutdown) = shutdown::channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(runtime::serve_tls(
        listener,
        tls::server_config_asking_client_cert(resolver),
        router,
        shutdown,
    ));
    Server {
        addr,
        serving_ca: serving_ca.cert_pem,
        _trigger: trigger,
    }
}

/// One GET over a fresh TLS connection; returns (status, JSON body).
async fn get(
    server: &Server,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    user: Option<&str>,
    path: &str,
) -> (u16, Value) {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server.serving_ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::get(path).header("host", "localhost");
    if let Some(user) = user {
        request = request
            .header("x-remote-user", user)
            .header("x-remote-group", "system:authenticated");
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const OPERATOR: &str = "/apis/operator.metalbear.co/v1/mirrordoperators/operator";

#[tokio::test]
async fn only_the_front_proxy_certificate_makes_the_user_headers_count() {
    let front_proxy = ca("front-proxy-ca");
    let server = start(&front_proxy).await;

    let (status, body) = get(
        &server,
        Some(client_cert(&front_proxy, "front-proxy-client")),
        Some("jane"),
        OPERATOR,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "MirrordOperator");

    let refused = [
        ("no certificate", None, Some("jane")),
        (
            "another CA",
            Some(client_cert(&ca("attacker"), "front-proxy-client")),
            Some("jane"),
        ),
        (
            "a CN not allowed",
            Some(client_cert(&front_proxy, "kubelet")),
            Some("jane"),
        ),
        (
            "no user header",
            Some(client_cert(&front_proxy, "front-proxy-client")),
            None,
        ),
    ];
    for (what, identity, user) in refused {
        let (status, body) = get(&server, identity, user, OPERATOR).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["kind"], "Status", "{what}");
        assert_eq!(body["reason"], "Unauthorized", "{what}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
}
