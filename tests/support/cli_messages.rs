//! Protocol messages the steal tests send as the CLI.

#![allow(dead_code)]

use mirrord_operator::protocol::*;

/// `200 OK` (HTTP/1.1, no headers) with `body` for the first request of `connection_id`.
pub fn ok_response(port: u16, connection_id: u64, body: &str) -> ClientMessage {
    ClientMessage::TcpSteal(LayerTcpSteal::HttpResponse(HttpResponse {
        port,
        connection_id,
        request_id: 0,
        internal_response: InternalHttpResponse {
            status: http::StatusCode::OK,
            version: http::Version::HTTP_11,
            headers: http::HeaderMap::new(),
            body: Payload::from(body.as_bytes().to_vec()),
        },
    }))
}
