//! The redirect listener: accepts redirected connections, finds their original destination,
//! sniffs the protocol and hands them to the HTTP engine or the raw TCP paths (whole-connection
//! steal, pass-through with mirror copies).

use std::{
    io,
    mem::{MaybeUninit, size_of},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::AsRawFd,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
};
use tracing::{Instrument, debug, info_span, warn};

use super::{
    Shared, http, relay,
    state::{SessionState, Stolen, gates, mirror_tap},
    subscriptions::Steal,
};
use crate::protocol::{
    DaemonTcp, IncomingTrafficTransportType, NewTcpConnectionV1, NewTcpConnectionV2, TcpClose,
    TcpData,
};

/// Accepts redirected connections until the task is aborted.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let orig = match original_destination(&stream) {
                        Ok(orig) => orig,
                        Err(e) => {
                            // Not redirected (someone dialled the listener directly): refuse.
                            debug!(%peer, error = %e, "connection without original destination");
                            return;
                        }
                    };
                    handle(shared, stream, peer, orig).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`: where the connection was going before REDIRECT.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    if stream.local_addr()?.is_ipv4() {
        let mut addr = MaybeUninit::<libc::sockaddr_in>::zeroed();
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: the buffer is a sockaddr_in of the advertised length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                libc::SO_ORIGINAL_DST,
                addr.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled it.
        let addr = unsafe { addr.assume_init() };
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        )))
    } else {
        let mut addr = MaybeUninit::<libc::sockaddr_in6>::zeroed();
        let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above, for sockaddr_in6.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                libc::IP6T_SO_ORIGINAL_DST,
                addr.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled it.
        let addr = unsafe { addr.assume_init() };
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(addr.sin6_addr.s6_addr),
            u16::from_be(addr.sin6_port),
            0,
            addr.sin6_scope_id,
        )))
    }
}

/// Connects to `addr` with a socket owned by `gid`, so the iptables owner-gid exemption keeps the
/// connection from being redirected back to the agent. The owner match looks at the file-system
/// gid the socket was created with; `setfsgid` is per thread, so it is switched only around the
/// synchronous `socket()` call (a no-op in production, where the whole process runs as `gid`).
pub async fn connect_as(addr: SocketAddr, gid: u32) -> io::Result<TcpStream> {
    let socket = {
        // SAFETY: setfsgid only changes this thread's credentials; restored right after.
        let previous = unsafe { libc::setfsgid(gid) };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        // SAFETY: as above.
        unsafe { libc::setfsgid(previous as u32) };
        socket?
    };
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// Whether this thread can create sockets owned by `gid` (root, or already running as `gid`).
pub fn can_use_gid(gid: u32) -> bool {
    // SAFETY: setfsgid(-1) fails and returns the current fsgid; the others are restored.
    unsafe {
        let previous = libc::setfsgid(gid);
        let now = libc::setfsgid(u32::MAX);
        libc::setfsgid(previous as u32);
        now as u32 == gid
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
const MAX_SNIFF: usize = 8 * 1024;

/// Decides from the first bytes; `None` = need more bytes.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    let is_token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        // Keep reading only while the bytes can still be a request line.
        let plausible = buf.first().is_none_or(is_token) && buf.len() < MAX_SNIFF;
        return if plausible {
            None
        } else {
            Some(Protocol::Other)
        };
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let ok = matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(method), Some(_target), Some(version), None)
            if method.iter().all(is_token) && version.starts_with(b"HTTP/1.")
    );
    Some(if ok { Protocol::Http1 } else { Protocol::Other })
}

/// Reads until the protocol is known; every read waits at most `timeout` (EOF or timeout: not
/// HTTP). Returns the bytes read so they can be replayed.
pub async fn sniff(stream: &mut TcpStream, timeout: Duration) -> (Protocol, Vec<u8>) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if !buf.is_empty()
            && let Some(p) = classify(&buf)
        {
            return (p, buf);
        }
        let mut chunk = [0u8; 2048];
        match tokio::time::timeout(timeout, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (Protocol::Other, buf),
        }
    }
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: impl Into<Bytes>, inner: S) -> Self {
        Rewind {
            prefix: prefix.into(),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Addresses of one redirected connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub orig: SocketAddr,
    pub local: SocketAddr,
}

impl ConnInfo {
    /// The span the connection's events are logged in. Entering an enabled span costs on every
    /// poll, which is why the HTTP/1 relay, the hot path, does without it.
    pub fn span(&self) -> tracing::Span {
        info_span!("redirected", peer = %self.peer, orig = %self.orig)
    }

    pub fn new_connection(&self, connection_id: u64) -> NewTcpConnectionV1 {
        NewTcpConnectionV1 {
            connection_id,
            remote_address: self.peer.ip(),
            destination_port: self.orig.port(),
            source_port: self.peer.port(),
            local_address: self.local.ip(),
        }
    }
}

fn new_connection_msg(session: &SessionState, conn: NewTcpConnectionV1) -> DaemonTcp {
    if session.at_least(&gates::V2_FORMS) {
        DaemonTcp::NewConnectionV2(NewTcpConnectionV2 {
            connection: conn,
            transport: IncomingTrafficTransportType::Tcp,
        })
    } else {
        DaemonTcp::NewConnectionV1(conn)
    }
}

async fn handle(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, orig: SocketAddr) {
    let local = stream.local_addr().unwrap_or(orig);
    let info = ConnInfo { peer, orig, local };
    let port = orig.port();
    if port == shared.listener_port && local.port() == orig.port() {
        // Dialled the listener directly: passing it "through" would connect to ourselves.
        debug!(%peer, "connection to the redirect listener itself refused");
        return;
    }
    if shared.port_snapshot(port).is_none_or(|s| s.is_empty()) {
        // Redirected just before the port's last subscription went away.
        return passthrough_tcp(&shared, stream, Vec::new(), info)
            .instrument(info.span())
            .await;
    }
    let (protocol, sniffed) = sniff(&mut stream, shared.cfg.http_detection_timeout).await;
    debug!(%peer, %orig, ?protocol, "sniffed");
    match protocol {
        // No span entered here: the relay names the connection in its own events.
        Protocol::Http1 => relay::serve(shared, stream, sniffed, info).await,
        Protocol::Http2 => {
            http::serve(shared, Rewind::new(sniffed, stream), info, protocol)
                .instrument(info.span())
                .await
        }
        Protocol::Other => {
            let owner = match shared.port_snapshot(port).map(|s| s.steal.clone()) {
                Some(Steal::Unfiltered(owner)) => shared.session(owner),
                _ => None,
            };
            match owner {
                Some(owner) => {
                    steal_tcp(owner, Rewind::new(sniffed, stream), info)
                        .instrument(info.span())
                        .await
                }
                None => {
                    passthrough_tcp(&shared, stream, sniffed, info)
                        .instrument(info.span())
                        .await
                }
            }
        }
    }
}

/// Hands a whole connection to `owner`.
async fn steal_tcp<S>(owner: Arc<SessionState>, io: S, info: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = owner.next_steal_id();
    let (tx, rx) = mpsc::unbounded_channel();
    owner.register(id, Stolen::Tcp(tx));
    if !owner
        .send_steal(new_connection_msg(&owner, info.new_connection(id)))
        .await
    {
        owner.unregister(id);
        return;
    }
    relay_stolen(owner, id, io, rx).await;
}

/// Shuttles bytes between a stolen stream and the client (spec §5.9 "Stolen whole TCP
/// connection"), then sends `Close` unless the client dropped the id itself.
pub async fn relay_stolen<S>(
    owner: Arc<SessionState>,
    id: u64,
    io: S,
    mut from_client: mpsc::UnboundedReceiver<Bytes>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = vec![0u8; 16 * 1024];
    let (mut peer_open, mut client_open) = (true, true);
    let mut failure = None;
    while peer_open || client_open {
        tokio::select! {
            read = rd.read(&mut buf), if peer_open => {
                let bytes = match read {
                    Ok(n) => Bytes::copy_from_slice(&buf[..n]),
                    Err(e) => {
                        failure = Some(e.to_string());
                        Bytes::new()
                    }
                };
                peer_open = !bytes.is_empty();
                let data = TcpData { connection_id: id, bytes: bytes.into() };
                if !owner.send_steal(DaemonTcp::Data(data)).await {
                    return;
                }
                if failure.is_some() {
                    break;
                }
            }
            msg = from_client.recv(), if client_open => match msg {
                // Unsubscribed, or the session ended: drop the peer's connection silently.
                None => return,
                Some(bytes) if bytes.is_empty() => {
                    let _ = wr.shutdown().await;
                    client_open = false;
                }
                Some(bytes) => {
                    if let Err(e) = wr.write_all(&bytes).await {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            },
        }
    }
    owner.unregister(id);
    if let Some(reason) = failure {
        owner
            .send(SessionState::warn_message(format!(
                "stolen connection {id} failed: {reason}"
            )))
            .await;
    }
    owner
        .send_steal(DaemonTcp::Close(TcpClose { connection_id: id }))
        .await;
}

/// Forwards a connection to its original destination, copying the peer's bytes to sessions that
/// mirror the port without a filter.
async fn passthrough_tcp(shared: &Shared, peer: TcpStream, sniffed: Vec<u8>, info: ConnInfo) {
    let mut app = match connect_as(shared.pass_through_addr(info.orig), shared.cfg.agent_gid).await
    {
        Ok(app) => app,
        Err(e) => {
            warn!(error = %e, "pass-through connect failed");
            return;
        }
    };
    let mirrors: Vec<(u64, mpsc::UnboundedSender<DaemonTcp>)> = shared
        .port_snapshot(info.orig.port())
        .map(|s| s.mirrors_for(None))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|sid| shared.session(sid))
        .map(|session| {
            let id = session.next_mirror_id();
            let tap = mirror_tap(session.clone());
            let _ = tap.send(new_connection_msg(&session, info.new_connection(id)));
            (id, tap)
        })
        .collect();
    let copy = |bytes: &[u8]| {
        for (id, tap) in &mirrors {
            let _ = tap.send(DaemonTcp::Data(TcpData {
                connection_id: *id,
                bytes: Bytes::copy_from_slice(bytes).into(),
            }));
        }
    };
    let (mut peer_rd, mut peer_wr) = peer.into_split();
    let (mut app_rd, mut app_wr) = app.split();
    let upstream = async {
        if !sniffed.is_empty() {
            copy(&sniffed);
            app_wr.write_all(&sniffed).await?;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = peer_rd.read(&mut buf).await?;
            if n == 0 {
                copy(&[]);
                return app_wr.shutdown().await;
            }
            copy(&buf[..n]);
            app_wr.write_all(&buf[..n]).await?;
        }
    };
    let downstream = async {
        tokio::io::copy(&mut app_rd, &mut peer_wr).await?;
        peer_wr.shutdown().await
    };
    let (up, down) = tokio::join!(upstream, downstream);
    for (id, tap) in &mirrors {
        let _ = tap.send(DaemonTcp::Close(TcpClose { connection_id: *id }));
    }
    if let Err(e) = up.and(down) {
        debug!(error = %e, "pass-through ended with an error");
    }
    drop(app);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_http1_http2_and_other() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST  /x   HTTP/1.0\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM"), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"GET /partial"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Other));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Other));
        assert_eq!(classify(b"GET / HTTP/2\r\n"), Some(Protocol::Other));
        assert_eq!(classify(&[b'A'; MAX_SNIFF]), Some(Protocol::Other));
    }
}
