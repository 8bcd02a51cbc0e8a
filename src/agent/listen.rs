//! `--listen` development mode: every accepted TCP connection is one session, the bytes framed
//! exactly as spec §1.1 says (concatenated bincode messages, no framing of their own).

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tracing::{Instrument, debug, info_span, warn};

use super::error::AgentError;
use super::session::{self, AgentState, Outbound};
use crate::protocol::DaemonCodec;

pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Accepts sessions until the listener fails; each one runs on its own task.
pub async fn serve(listener: TcpListener, state: Arc<AgentState>) -> Result<(), AgentError> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Per-connection failures (e.g. EMFILE, a reset before accept) must not end the
                // dev server; back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(serve_connection(state, stream).instrument(info_span!("listen", %peer)));
    }
}

pub async fn serve_connection(state: Arc<AgentState>, stream: TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let (mut sink, stream) = Framed::new(stream, DaemonCodec::default()).split();
    let (out, mut rx) = Outbound::channel();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            // Feed without flushing while more is queued: one syscall for a burst of answers.
            if let Err(e) = sink.feed(msg).await {
                debug!(error = %e, "session write failed");
                return;
            }
            if rx.is_empty()
                && let Err(e) = sink.flush().await
            {
                debug!(error = %e, "session flush failed");
                return;
            }
        }
        let _ = sink.close().await;
    });
    let inbound = stream.map(|item| item.map_err(|e| AgentError::Decode(e.to_string())));
    session::run(state, inbound, out).await;
    // The session dropped its senders; the writer drains what is queued, then closes.
    let _ = writer.await;
}
