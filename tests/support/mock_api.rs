//! A scripted Kubernetes API server for tests: each call must be the next expected one, answered
//! with a JSON body the test chooses.

#![allow(dead_code)]

use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::Value;

pub type Send = tower_test::mock::SendResponse<Response<Body>>;

pub struct ApiServer(pub tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// A client whose every request comes to the returned server.
    pub fn client() -> (kube::Client, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), ApiServer(handle))
    }

    /// The next request, which must be `method path` and come within 10 s.
    pub async fn expect(&mut self, method: Method, path: &str) -> (Request<Body>, Send) {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no {method} {path} within 10s"))
            .expect("client dropped");
        assert_eq!(request.method(), method, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        (request, send)
    }

    pub fn respond(send: Send, status: u16, body: Value) {
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        send.send_response(response);
    }

    pub async fn body(request: Request<Body>) -> Value {
        let bytes = request.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}
