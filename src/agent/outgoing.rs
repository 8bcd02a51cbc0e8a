//! Outgoing TCP/UDP/unix-stream connections made on behalf of one session (spec §5.8).
//!
//! `dial` connects (5 s timeout) without touching session state, so legacy connects can be run one
//! after another and V2 connects concurrently; `Outgoing::register` then gives the socket its id
//! and a task that relays bytes both ways and reports through the session's channel.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket, UnixStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::files::FsRoot;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP reads are relayed in chunks of at most this size.
const READ_CHUNK: usize = 64 * 1024;
/// Commands queued per connection before the session waits (backpressure towards the client).
const COMMAND_QUEUE: usize = 64;

/// The protocols have separate id counters and separate legacy-connect queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// TCP and unix stream share one counter.
    Stream,
    Udp,
}

/// A remote (or local) address in the protocol's `SocketAddress` shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Ip(SocketAddr),
    UnixPath(PathBuf),
    /// Abstract name without the leading NUL.
    UnixAbstract(Vec<u8>),
    UnixUnnamed,
}

/// What a connection task reports; the session turns each into a daemon message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes from the peer; empty = the peer shut down its sending side.
    Read { kind: Kind, id: u64, bytes: Vec<u8> },
    /// The connection is over; nothing more follows for `id`.
    Close { kind: Kind, id: u64 },
    /// A failure worth a warn log (followed by `Close`).
    Warn(String),
}

enum Socket {
    Tcp(TcpStream),
    Udp(UdpSocket),
    Unix(UnixStream),
}

/// A connected socket not yet registered in a session.
pub struct Dialed {
    kind: Kind,
    socket: Socket,
    pub peer: Address,
    pub local: Address,
}

/// Connects to `target` from the agent's network namespace; unix paths are resolved inside
/// `fs_root` (the target's filesystem), never outside it.
pub async fn dial(kind: Kind, target: &Address, fs_root: &FsRoot) -> io::Result<Dialed> {
    match tokio::time::timeout(CONNECT_TIMEOUT, dial_inner(kind, target, fs_root)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

async fn dial_inner(kind: Kind, target: &Address, fs_root: &FsRoot) -> io::Result<Dialed> {
    match (kind, target) {
        (Kind::Stream, Address::Ip(addr)) => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Dialed {
                kind,
                peer: Address::Ip(stream.peer_addr()?),
                local: Address::Ip(stream.local_addr()?),
                socket: Socket::Tcp(stream),
            })
        }
        (Kind::Udp, Address::Ip(addr)) => {
            let bind: SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(bind).await?;
            socket.connect(addr).await?;
            Ok(Dialed {
                kind,
                peer: Address::Ip(socket.peer_addr()?),
                local: Address::Ip(socket.local_addr()?),
                socket: Socket::Udp(socket),
            })
        }
        (Kind::Stream, Address::UnixPath(path)) => {
            let fd = fs_root.resolve(path, true)?;
            // The fd's /proc entry is the socket inode found inside the root.
            let stream = UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd())).await?;
            let local = unix_address(&stream.local_addr()?.into());
            Ok(Dialed {
                kind,
                peer: Address::UnixPath(path.clone()),
                local,
                socket: Socket::Unix(stream),
            })
        }
        (Kind::Stream, Address::UnixAbstract(name)) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            let std_stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            std_stream.set_nonblocking(true)?;
            let stream = UnixStream::from_std(std_stream)?;
            let local = unix_address(&stream.local_addr()?.into());
            Ok(Dialed {
                kind,
                peer: Address::UnixAbstract(name.clone()),
                local,
                socket: Socket::Unix(stream),
            })
        }
        (_, other) => Err(io::Error::other(format!(
            "cannot open a {kind:?} connection to {other:?}"
        ))),
    }
}

fn unix_address(addr: &std::os::unix::net::SocketAddr) -> Address {
    if let Some(path) = addr.as_pathname() {
        Address::UnixPath(path.to_owned())
    } else if let Some(name) = addr.as_abstract_name() {
        Address::UnixAbstract(name.to_vec())
    } else {
        Address::UnixUnnamed
    }
}

enum Command {
    /// Non-empty = data for the peer; empty = shut down our sending side.
    Write(Vec<u8>),
}

struct Conn {
    commands: mpsc::Sender<Command>,
    task: AbortHandle,
}

/// One session's outgoing connections of both kinds.
pub struct Outgoing<M> {
    next_id: HashMap<Kind, u64>,
    conns: HashMap<(Kind, u64), Conn>,
    events: mpsc::Sender<M>,
}

impl<M: From<Event> + Send + 'static> Outgoing<M> {
    pub fn new(events: mpsc::Sender<M>) -> Self {
        Outgoing {
            next_id: HashMap::new(),
            conns: HashMap::new(),
            events,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Gives a dialed socket the next id of its kind and starts relaying.
    pub fn register(&mut self, dialed: Dialed) -> (u64, Address, Address) {
        let kind = dialed.kind;
        let counter = self.next_id.entry(kind).or_insert(0);
        let id = *counter;
        *counter += 1;
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let events = self.events.clone();
        let task = match dialed.socket {
            Socket::Tcp(s) => tokio::spawn(relay_stream(kind, id, s, rx, events)),
            Socket::Unix(s) => tokio::spawn(relay_stream(kind, id, s, rx, events)),
            Socket::Udp(s) => tokio::spawn(relay_udp(id, s, rx, events)),
        }
        .abort_handle();
        self.conns.insert((kind, id), Conn { commands, task });
        (id, dialed.peer, dialed.local)
    }

    /// `Write`: unknown (or already finished) ids are ignored.
    pub async fn write(&mut self, kind: Kind, id: u64, bytes: Vec<u8>) {
        if let Some(conn) = self.conns.get(&(kind, id))
            && conn.commands.send(Command::Write(bytes)).await.is_err()
        {
            // The task has ended and already reported Close.
            self.conns.remove(&(kind, id));
        }
    }

    /// `Close` from the client: drop the socket, say nothing more.
    pub fn close(&mut self, kind: Kind, id: u64) {
        if let Some(conn) = self.conns.remove(&(kind, id)) {
            conn.task.abort();
        }
    }
}

impl<M> Drop for Outgoing<M> {
    fn drop(&mut self) {
        for conn in self.conns.values() {
            conn.task.abort();
        }
    }
}

async fn relay_stream<S, M>(
    kind: Kind,
    id: u64,
    stream: S,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<M>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
    M: From<Event>,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut peer_done = false;
    let mut client_done = false;
    let outcome: io::Result<()> = loop {
        if peer_done && client_done {
            break Ok(());
        }
        tokio::select! {
            read = reader.read(&mut buf), if !peer_done => match read {
                Ok(0) => {
                    peer_done = true;
                    // Once the client has shut down too, Close alone says it all.
                    if !client_done
                        && events.send(M::from(Event::Read { kind, id, bytes: Vec::new() })).await.is_err()
                    {
                        return;
                    }
                }
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    if events.send(M::from(Event::Read { kind, id, bytes })).await.is_err() {
                        return;
                    }
                }
                Err(e) => break Err(e),
            },
            command = commands.recv(), if !client_done => match command {
                Some(Command::Write(bytes)) if bytes.is_empty() => {
                    client_done = true;
                    if let Err(e) = writer.shutdown().await {
                        break Err(e);
                    }
                }
                Some(Command::Write(bytes)) => {
                    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break Err(e),
                        Err(_) => break Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
                    }
                }
                // The session dropped us (client Close or disconnect): nothing more to say.
                None => return,
            },
        }
    };
    finish(&events, kind, id, outcome).await;
}

async fn relay_udp<M: From<Event>>(
    id: u64,
    socket: UdpSocket,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<M>,
) {
    let kind = Kind::Udp;
    let mut buf = vec![0u8; 65_536];
    let mut client_done = false;
    let outcome: io::Result<()> = loop {
        tokio::select! {
            received = socket.recv(&mut buf) => match received {
                // A zero-length datagram is the peer's end of stream, as in the reference.
                Ok(0) => break Ok(()),
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    if events.send(M::from(Event::Read { kind, id, bytes })).await.is_err() {
                        return;
                    }
                }
                Err(e) => break Err(e),
            },
            command = commands.recv(), if !client_done => match command {
                Some(Command::Write(bytes)) if bytes.is_empty() => client_done = true,
                Some(Command::Write(bytes)) => {
                    if let Err(e) = socket.send(&bytes).await {
                        break Err(e);
                    }
                }
                None => return,
            },
        }
    };
    finish(&events, kind, id, outcome).await;
}

/// The end of a relay: a warning to the client when it failed, then its Close.
async fn finish<M: From<Event>>(
    events: &mpsc::Sender<M>,
    kind: Kind,
    id: u64,
    outcome: io::Result<()>,
) {
    if let Err(e) = outcome {
        let label = match kind {
            Kind::Stream => "Stream",
            Kind::Udp => "UDP",
        };
        let message = format!("outgoing {label} connection {id} failed: {e}");
        let _ = events.send(M::from(Event::Warn(message))).await;
    }
    let _ = events.send(M::from(Event::Close { kind, id })).await;
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, UnixListener};

    use super::*;

    async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("event in time")
            .expect("channel open")
    }

    #[tokio::test]
    async fn tcp_echo_with_half_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            // Dropping closes our side.
        });
        let (tx, mut rx) = mpsc::channel(16);
        let mut out: Outgoing<Event> = Outgoing::new(tx);
        let dialed = dial(Kind::Stream, &Address::Ip(addr), &FsRoot::Off)
            .await
            .unwrap();
        let (id, peer, _local) = out.register(dialed);
        assert_eq!(id, 0);
        assert_eq!(peer, Address::Ip(addr));
        out.write(Kind::Stream, id, b"ping".to_vec()).await;
        out.write(Kind::Stream, id, Vec::new()).await;
        let mut echoed = Vec::new();
        loop {
            match next(&mut rx).await {
                Event::Read { bytes, .. } if bytes.is_empty() => {
                    panic!("client had shut down first")
                }
                Event::Read { bytes, .. } => echoed.extend(bytes),
                Event::Close { kind, id: 0 } => {
                    assert_eq!(kind, Kind::Stream);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, b"ping");
        server.await.unwrap();
        let again = dial(Kind::Stream, &Address::Ip(addr), &FsRoot::Off).await;
        assert!(again.is_err(), "listener is gone");
        let refused = again.err().unwrap();
        assert_eq!(refused.raw_os_error(), Some(111));
    }

    #[tokio::test]
    async fn peer_eof_first_sends_empty_read_then_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let (tx, mut rx) = mpsc::channel(16);
        let mut out: Outgoing<Event> = Outgoing::new(tx);
        let (id, ..) = out.register(
            dial(Kind::Stream, &Address::Ip(addr), &FsRoot::Off)
                .await
                .unwrap(),
        );
        assert_eq!(
            next(&mut rx).await,
            Event::Read {
                kind: Kind::Stream,
                id,
                bytes: b"hi".to_vec()
            }
        );
        assert_eq!(
            next(&mut rx).await,
            Event::Read {
                kind: Kind::Stream,
                id,
                bytes: vec![]
            }
        );
        out.write(Kind::Stream, id, b"late".to_vec()).await;
        out.write(Kind::Stream, id, vec![]).await;
        assert_eq!(
            next(&mut rx).await,
            Event::Close {
                kind: Kind::Stream,
                id
            }
        );
        assert_eq!(server.await.unwrap(), b"late");
    }

    #[tokio::test]
    async fn udp_datagrams_and_separate_ids() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut out: Outgoing<Event> = Outgoing::new(tx);
        let (udp_id, ..) = out.register(
            dial(Kind::Udp, &Address::Ip(addr), &FsRoot::Off)
                .await
                .unwrap(),
        );
        assert_eq!(udp_id, 0, "UDP has its own counter");
        out.write(Kind::Udp, udp_id, b"one".to_vec()).await;
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one");
        server.send_to(b"two", from).await.unwrap();
        assert_eq!(
            next(&mut rx).await,
            Event::Read {
                kind: Kind::Udp,
                id: 0,
                bytes: b"two".to_vec()
            }
        );
        out.close(Kind::Udp, udp_id);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn unix_paths_resolve_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("run")).unwrap();
        let listener = UnixListener::bind(root.join("run/app.sock")).unwrap();
        let outside = UnixListener::bind(tmp.path().join("outside.sock")).unwrap();
        std::os::unix::fs::symlink("../../outside.sock", root.join("run/escape.sock")).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut out: Outgoing<Event> = Outgoing::new(tx);
        let target = Address::UnixPath("/run/app.sock".into());
        let dialed = dial(Kind::Stream, &target, &FsRoot::Dir(root.clone()))
            .await
            .unwrap();
        let (id, peer, _) = out.register(dialed);
        assert_eq!(peer, target);
        let (mut accepted, _) = listener.accept().await.unwrap();
        accepted.write_all(b"unix").await.unwrap();
        assert_eq!(
            next(&mut rx).await,
            Event::Read {
                kind: Kind::Stream,
                id,
                bytes: b"unix".to_vec()
            }
        );
        let escape = Address::UnixPath("/run/escape.sock".into());
        assert!(
            dial(Kind::Stream, &escape, &FsRoot::Dir(root.clone()))
                .await
                .is_err()
        );
        drop(outside);
        let unnamed = dial(Kind::Udp, &Address::UnixUnnamed, &FsRoot::Off).await;
        assert!(unnamed.is_err());
    }
}
