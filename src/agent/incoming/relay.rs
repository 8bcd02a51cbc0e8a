//! Redirected HTTP/1.1 connections whose requests pass through, handled without hyper: every
//! request head is parsed (`httparse`) and matched against the port's subscriptions exactly like
//! in `http.rs`; a request nobody takes is relayed to the app as the bytes the peer sent, and the
//! app's answer back as the bytes the app sent, each message delimited by its framing
//! (Content-Length, chunked, or the end of the connection). Nothing is re-serialized, nothing is
//! spawned, and the buffers live as long as the connection.
//!
//! The first request that needs more — a steal or mirror subscriber whose filter matches, an
//! upgrade, anything unusual or malformed — hands the connection, with every byte not yet
//! relayed, to the hyper engine (`http::serve`) for the rest of its life, so behaviour in those
//! cases is exactly hyper's.

use std::{io, mem::MaybeUninit, sync::Arc};

use ::http::{Method, Uri};
use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tracing::{Instrument, debug, warn};

use super::{
    Shared,
    filter::RequestView,
    http,
    listener::{ConnInfo, Protocol, Rewind, connect_as},
    subscriptions::Steal,
};

/// hyper's default read-buffer limit: a head it would accept is not refused here.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// hyper's default header-count limit.
const MAX_HEADERS: usize = 100;
/// Initial size of each of a connection's two buffers (hyper starts with the same); they grow only
/// for messages that arrive faster than they are relayed.
const BUF_SIZE: usize = 8 * 1024;
/// Room made in a buffer before each read; in steady state this only moves the unread bytes back
/// to the start of the buffer, it does not allocate.
const MIN_READ: usize = 2 * 1024;

/// Serves one redirected HTTP/1.x connection, starting with the bytes protocol sniffing read.
pub async fn serve(shared: Arc<Shared>, mut peer: TcpStream, sniffed: Vec<u8>, info: ConnInfo) {
    let mut inbuf = BytesMut::with_capacity(BUF_SIZE.max(sniffed.len()));
    inbuf.extend_from_slice(&sniffed);
    let mut upstream: Option<Upstream> = None;
    loop {
        let plan = loop {
            match inspect(&shared, &info, &inbuf) {
                Inspect::Relay(plan) => break plan,
                Inspect::HandOver => return hand_over(shared, peer, inbuf, info).await,
                Inspect::Incomplete => {}
            }
            inbuf.reserve(MIN_READ);
            match peer.read_buf(&mut inbuf).await {
                // The peer closed between requests.
                Ok(0) if inbuf.is_empty() => return,
                // A truncated head: hyper answers it as it always did.
                Ok(0) => return hand_over(shared, peer, inbuf, info).await,
                Ok(_) => {}
                Err(e) => {
                    debug!(peer = %info.peer, orig = %info.orig, error = %e, "reading a request failed");
                    return;
                }
            }
        };
        let mut up = match upstream.take().filter(Upstream::idle) {
            Some(up) => up,
            None => {
                match connect_as(shared.pass_through_addr(info.orig), shared.cfg.agent_gid).await {
                    Ok(stream) => Upstream {
                        stream,
                        buf: BytesMut::with_capacity(BUF_SIZE),
                    },
                    Err(e) => {
                        warn!(peer = %info.peer, orig = %info.orig, error = %e, "pass-through connect failed");
                        let reason = format!("the application did not answer: {e}");
                        return bad_gateway(&mut peer, &reason).await;
                    }
                }
            }
        };
        let mut head_relayed = false;
        let result = {
            let (mut peer_rd, mut peer_wr) = peer.split();
            let (mut app_rd, mut app_wr) = up.stream.split();
            tokio::try_join!(
                upload(&mut peer_rd, &mut app_wr, &mut inbuf, &plan),
                answer(
                    &mut app_rd,
                    &mut peer_wr,
                    &mut up.buf,
                    plan.head_request,
                    &mut head_relayed
                ),
            )
        };
        match result {
            Ok((_, Answer::KeepAlive)) if plan.keep_alive => upstream = Some(up),
            Ok((_, Answer::KeepAlive | Answer::Close)) => {
                let _ = peer.shutdown().await;
                return;
            }
            Ok((_, Answer::Switched)) => {
                if let Err(e) = switched(peer, inbuf, up).await {
                    debug!(peer = %info.peer, orig = %info.orig, error = %e, "switched pass-through ended with an error");
                }
                return;
            }
            Err(Failed::App(e)) if !head_relayed => {
                warn!(peer = %info.peer, orig = %info.orig, error = %e, "pass-through request failed");
                let reason = format!("the application did not answer: {e}");
                return bad_gateway(&mut peer, &reason).await;
            }
            Err(Failed::App(e) | Failed::Peer(e)) => {
                debug!(peer = %info.peer, orig = %info.orig, error = %e, "pass-through exchange broke off");
                return;
            }
        }
    }
}

/// Gives the connection to the hyper engine, replaying what was read and not relayed.
async fn hand_over(shared: Arc<Shared>, peer: TcpStream, unread: BytesMut, info: ConnInfo) {
    let span = info.span();
    debug!(parent: &span, "HTTP/1 connection continues in hyper");
    let serve = http::serve(
        shared,
        Rewind::new(unread.freeze(), peer),
        info,
        Protocol::Http1,
    );
    Box::pin(serve.instrument(span)).await
}

/// The app answered `101` to a request that did not ask for an upgrade: from here on both
/// directions are plain bytes, like any TCP pass-through.
async fn switched(mut peer: TcpStream, unread: BytesMut, mut up: Upstream) -> io::Result<()> {
    up.stream.write_all(&unread).await?;
    peer.write_all(&up.buf).await?;
    tokio::io::copy_bidirectional(&mut peer, &mut up.stream).await?;
    Ok(())
}

/// The agent's own answer when the app cannot be reached; the connection ends with it, since the
/// request's body may not have been read.
async fn bad_gateway(peer: &mut TcpStream, reason: &str) {
    let body = http::gateway_message(reason);
    let response = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = peer.write_all(response.as_bytes()).await;
    let _ = peer.shutdown().await;
}

/// The pass-through connection to the app, kept for the next request while both sides keep alive.
struct Upstream {
    stream: TcpStream,
    /// Bytes read from the app and not yet relayed.
    buf: BytesMut,
}

impl Upstream {
    /// Whether the kept connection can carry another request: an idle one has nothing to read,
    /// so EOF, stray bytes or an error mean the app is done with it. `try_read` only asks the
    /// kernel when the reactor saw the socket become readable.
    fn idle(&self) -> bool {
        self.buf.is_empty()
            && matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            )
    }
}

enum Inspect {
    /// Not a whole head yet.
    Incomplete,
    /// Hyper takes over from this request on.
    HandOver,
    Relay(RequestPlan),
}

/// What relaying one request needs to know.
#[derive(Debug)]
struct RequestPlan {
    head_len: usize,
    body: Body,
    /// A `HEAD` request: the answer has no body whatever its headers say.
    head_request: bool,
    /// The peer did not ask to close after this exchange.
    keep_alive: bool,
}

/// Parses the request head at the start of `buf` and decides whether it can be relayed as bytes:
/// an HTTP/1.1 request with plain framing that no steal or mirror subscription wants.
fn inspect(shared: &Shared, info: &ConnInfo, buf: &[u8]) -> Inspect {
    // Uninitialized: zeroing room for 100 headers costs more than parsing a small head.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Inspect::Incomplete,
        // Too large, too many headers, malformed: hyper's answer, as before.
        _ => return Inspect::HandOver,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Inspect::HandOver;
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), Uri::try_from(path)) else {
        return Inspect::HandOver;
    };
    if method == Method::CONNECT {
        return Inspect::HandOver;
    }
    let (mut lengths, mut codings, mut keep_alive) = (Vec::new(), Vec::new(), true);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(tokens(h.value));
        } else if name.eq_ignore_ascii_case("upgrade") {
            return Inspect::HandOver;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Inspect::HandOver;
                }
                keep_alive &= !token.eq_ignore_ascii_case(b"close");
            }
        }
    }
    let body = match (codings.as_slice(), content_length(&lengths)) {
        ([], Ok(length)) => Body::Length(length.unwrap_or(0)),
        ([chunked], Ok(None)) if chunked.eq_ignore_ascii_case(b"chunked") => {
            Body::Chunked(Chunk::default())
        }
        // Other codings, both headers, bad lengths: hyper's rules (and its 400).
        _ => return Inspect::HandOver,
    };
    if let Some(subs) = shared.port_snapshot(info.orig.port()) {
        // The same rules as `http.rs`, reduced to "does anybody want it at all".
        let view = RequestView::from_wire(&method, &uri, req.headers);
        let stolen = match &subs.steal {
            Steal::Unfiltered(_) => true,
            Steal::Filtered(_) => subs
                .filtered_stealers(&view)
                .any(|id| shared.session(id).is_some()),
            Steal::None => false,
        };
        if stolen || !subs.mirrors_for(Some(&view)).is_empty() || shared.names_share_link(&uri) {
            return Inspect::HandOver;
        }
    }
    Inspect::Relay(RequestPlan {
        head_len,
        body,
        head_request: method == Method::HEAD,
        keep_alive,
    })
}

/// Comma-separated list elements of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The body length from every Content-Length value (all must be the same number); `Ok(None)`
/// without any.
fn content_length(values: &[&[u8]]) -> Result<Option<u64>, ()> {
    let mut found = None;
    for part in values.iter().flat_map(|v| v.split(|&b| b == b',')) {
        let digits = part.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = digits.iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        match (n, found) {
            (None, _) => return Err(()),
            (Some(n), Some(f)) if n != f => return Err(()),
            (n, _) => found = n,
        }
    }
    Ok(found)
}

#[derive(Debug)]
enum Failed {
    /// The peer went away or sent a body that breaks its framing.
    Peer(io::Error),
    /// The app went away or answered something that is not HTTP/1.
    App(io::Error),
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Relays the request (head and body) from the peer to the app; bytes after it stay in `buf`.
async fn upload<R, W>(
    peer: &mut R,
    app: &mut W,
    buf: &mut BytesMut,
    plan: &RequestPlan,
) -> Result<(), Failed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut body = plan.body;
    let mut n = plan.head_len + body.take(&buf[plan.head_len..]).map_err(Failed::Peer)?;
    loop {
        app.write_all(&buf[..n]).await.map_err(Failed::App)?;
        buf.advance(n);
        if body.done() {
            return Ok(());
        }
        buf.reserve(MIN_READ);
        if peer.read_buf(buf).await.map_err(Failed::Peer)? == 0 {
            return Err(Failed::Peer(io::ErrorKind::UnexpectedEof.into()));
        }
        n = body.take(buf).map_err(Failed::Peer)?;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Both sides may send the next request on their connections.
    KeepAlive,
    /// The answer ends the connection (`close`, HTTP/1.0, or a body delimited by the close).
    Close,
    /// `101`: the rest is not HTTP.
    Switched,
}

/// Relays the app's answer (interim `1xx` heads, then the final head and its body) to the peer.
/// `head_relayed` tells the caller whether a failure can still be answered with a 502.
async fn answer<R, W>(
    app: &mut R,
    peer: &mut W,
    buf: &mut BytesMut,
    head_request: bool,
    head_relayed: &mut bool,
) -> Result<Answer, Failed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let head = loop {
            if let Some(head) = response_head(buf, head_request).map_err(Failed::App)? {
                break head;
            }
            buf.reserve(MIN_READ);
            if app.read_buf(buf).await.map_err(Failed::App)? == 0 {
                return Err(Failed::App(invalid(
                    "the connection closed before an answer",
                )));
            }
        };
        if (100..200).contains(&head.status) && head.status != 101 {
            peer.write_all(&buf[..head.len])
                .await
                .map_err(Failed::Peer)?;
            buf.advance(head.len);
            continue;
        }
        *head_relayed = true;
        let mut body = head.body;
        let mut n = head.len + body.take(&buf[head.len..]).map_err(Failed::App)?;
        loop {
            peer.write_all(&buf[..n]).await.map_err(Failed::Peer)?;
            buf.advance(n);
            if head.status == 101 {
                return Ok(Answer::Switched);
            }
            if body.done() {
                return Ok(if head.keep_alive {
                    Answer::KeepAlive
                } else {
                    Answer::Close
                });
            }
            buf.reserve(MIN_READ);
            if app.read_buf(buf).await.map_err(Failed::App)? == 0 {
                return match body {
                    Body::UntilClose => Ok(Answer::Close),
                    _ => Err(Failed::App(invalid("the answer was cut short"))),
                };
            }
            n = body.take(buf).map_err(Failed::App)?;
        }
    }
}

struct ResponseHead {
    len: usize,
    status: u16,
    body: Body,
    keep_alive: bool,
}

/// Parses the response head at the start of `buf` (RFC 9112 §6.3 for the body length);
/// `Ok(None)`: not complete yet.
fn response_head(buf: &[u8], head_request: bool) -> io::Result<Option<ResponseHead>> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(invalid("response head too large")),
        Err(e) => return Err(invalid(&format!("invalid response: {e}"))),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(invalid("invalid response"));
    };
    let (mut lengths, mut last_coding, mut close, mut keep_alive_token) =
        (Vec::new(), None, false, false);
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            last_coding = tokens(h.value).last().or(last_coding);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let body = if head_request || status < 200 || status == 204 || status == 304 {
        Body::Length(0)
    } else if let Some(coding) = last_coding {
        if coding.eq_ignore_ascii_case(b"chunked") {
            Body::Chunked(Chunk::default())
        } else {
            Body::UntilClose
        }
    } else {
        match content_length(&lengths) {
            Ok(Some(n)) => Body::Length(n),
            Ok(None) => Body::UntilClose,
            Err(()) => return Err(invalid("invalid content-length in the answer")),
        }
    };
    let persistent = !close && (version == 1 || keep_alive_token);
    Ok(Some(ResponseHead {
        len,
        status,
        keep_alive: persistent && body != Body::UntilClose,
        body,
    }))
}

/// How the end of a message body is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// Bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the sender closes (answers only).
    UntilClose,
}

impl Body {
    /// How many of `data`'s first bytes belong to the body.
    fn take(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Body::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                Ok(n as usize)
            }
            Body::Chunked(chunk) => chunk.take(data),
            Body::UntilClose => Ok(data.len()),
        }
    }

    fn done(&self) -> bool {
        matches!(self, Body::Length(0) | Body::Chunked(Chunk::Done))
    }
}

/// Position in a chunked body (RFC 9112 §7.1), tracked without decoding it: the bytes are relayed
/// as they are. As strict as hyper's decoder (CRLF line ends, sizes that fit in 64 bits), so the
/// agent and the app agree on where the next message starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk size.
    #[default]
    Size,
    SizeDigits(u64),
    /// Whitespace after the size.
    SizeSpace(u64),
    Extension(u64),
    SizeLf(u64),
    /// Data bytes left in the chunk.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunk {
    /// How many of `data`'s first bytes belong to the body.
    fn take(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut i = 0;
        while i < data.len() && *self != Chunk::Done {
            if let Chunk::Data(left) = *self {
                let n = left.min((data.len() - i) as u64);
                i += n as usize;
                *self = if n == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - n)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            let hex = (b as char).to_digit(16).map(u64::from);
            *self = match (*self, b, hex) {
                (Chunk::Size, _, Some(d)) => Chunk::SizeDigits(d),
                (Chunk::SizeDigits(n), _, Some(d)) => Chunk::SizeDigits(
                    n.checked_mul(16)
                        .and_then(|n| n.checked_add(d))
                        .ok_or_else(bad_chunk)?,
                ),
                (Chunk::SizeDigits(n) | Chunk::SizeSpace(n), b' ' | b'\t', _) => {
                    Chunk::SizeSpace(n)
                }
                (Chunk::SizeDigits(n) | Chunk::SizeSpace(n), b';', _) => Chunk::Extension(n),
                (Chunk::SizeDigits(n) | Chunk::SizeSpace(n) | Chunk::Extension(n), b'\r', _) => {
                    Chunk::SizeLf(n)
                }
                (Chunk::Extension(n), _, _) if b != b'\n' => Chunk::Extension(n),
                (Chunk::SizeLf(0), b'\n', _) => Chunk::TrailerStart,
                (Chunk::SizeLf(n), b'\n', _) => Chunk::Data(n),
                (Chunk::DataCr, b'\r', _) => Chunk::DataLf,
                (Chunk::DataLf, b'\n', _) => Chunk::Size,
                (Chunk::TrailerStart, b'\r', _) => Chunk::EndLf,
                (Chunk::Trailer, b'\r', _) => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::Trailer, _, _) if b != b'\n' => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n', _) => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n', _) => Chunk::Done,
                _ => return Err(bad_chunk()),
            };
        }
        Ok(i)
    }
}

fn bad_chunk() -> io::Error {
    invalid("invalid chunked encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` split at `at` and returns how many bytes the body took, or the error.
    fn take_split(mut body: Body, data: &[u8], at: usize) -> io::Result<(usize, Body)> {
        let first = body.take(&data[..at])?;
        if first < at {
            return Ok((first, body));
        }
        Ok((first + body.take(&data[at..])?, body))
    }

    #[test]
    fn chunked_end_is_found_however_the_bytes_are_split() {
        let body = b"4\r\nWiki\r\n5;name=value\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nx: y\r\n\r\n";
        let next = b"GET /next HTTP/1.1\r\n\r\n";
        let data = [&body[..], next].concat();
        for at in 0..=data.len() {
            let (n, end) = take_split(Body::Chunked(Chunk::default()), &data, at).unwrap();
            assert_eq!(n, body.len(), "split at {at}");
            assert!(end.done());
        }
        let mut plain = Body::Chunked(Chunk::default());
        assert_eq!(plain.take(b"0\r\n\r\nrest").unwrap(), 5);
        assert!(plain.done());
    }

    #[test]
    fn incomplete_chunked_bodies_are_not_done() {
        for partial in [&b"5\r\nab"[..], b"0\r\n", b"0\r\nx: y\r\n", b"3\r\nabc\r"] {
            let mut body = Body::Chunked(Chunk::default());
            assert_eq!(body.take(partial).unwrap(), partial.len());
            assert!(!body.done(), "{partial:?}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX",
            b"1 1\r\n",
            b"1;ext\n",
            b"0\r\nx: y\n",
            b"0\r\n\n",
            b"10000000000000000\r\n",
        ] {
            let mut body = Body::Chunked(Chunk::default());
            assert!(body.take(bad).is_err(), "{bad:?}");
        }
        // The largest size that fits is accepted.
        let mut body = Body::Chunked(Chunk::default());
        assert!(body.take(b"ffffffffffffffff\r\nab").is_ok());
        assert_eq!(body, Body::Chunked(Chunk::Data(u64::MAX - 2)));
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        let mut body = Body::Length(5);
        assert_eq!(body.take(b"abc").unwrap(), 3);
        assert!(!body.done());
        assert_eq!(body.take(b"deGET").unwrap(), 2);
        assert!(body.done());
        let mut rest = Body::UntilClose;
        assert_eq!(rest.take(b"anything").unwrap(), 8);
        assert!(!rest.done());
    }

    #[test]
    fn content_length_values_must_agree() {
        assert_eq!(content_length(&[]), Ok(None));
        assert_eq!(content_length(&[b"42"]), Ok(Some(42)));
        assert_eq!(content_length(&[b"7, 7", b"7"]), Ok(Some(7)));
        assert_eq!(content_length(&[b"7", b"8"]), Err(()));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1e3",
            b"0x10",
            b"18446744073709551616",
        ] {
            assert_eq!(content_length(&[bad]), Err(()), "{bad:?}");
        }
    }

    fn head(raw: &[u8], head_request: bool) -> ResponseHead {
        response_head(raw, head_request).unwrap().unwrap()
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let r = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
        assert_eq!((r.len, r.body, r.keep_alive), (38, Body::Length(2), true));
        let r = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true);
        assert_eq!(r.body, Body::Length(0), "HEAD: no body");
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 9\r\n\r\n");
            assert_eq!(
                head(raw.as_bytes(), false).body,
                Body::Length(0),
                "{status}"
            );
        }
        let r = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(r.body, Body::Chunked(Chunk::Size), "chunked wins");
        let r = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!((r.body, r.keep_alive), (Body::UntilClose, false));
        let r = head(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((r.body, r.keep_alive), (Body::UntilClose, false));
        let r = head(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!r.keep_alive);
        let r = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!r.keep_alive, "HTTP/1.0 closes by default");
        let r = head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(r.keep_alive);
        assert!(
            response_head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
        assert!(response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", false).is_err());
        assert!(response_head(b"garbage\r\n\r\n", false).is_err());
    }
}
