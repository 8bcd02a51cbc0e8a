//! A WebSocket carrying one mirrord-protocol message per Binary frame, seen as two channels of
//! frames, so the relay does not depend on the WebSocket library (and tests can use plain
//! channels).

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;

/// Frames queued towards one peer before the relay waits.
const QUEUE: usize = 256;

/// What came from the peer: a Binary frame, or why the stream is not usable (a Text frame, an
/// oversized message, a transport error). The channel closing is the end of the stream.
pub type Inbound = Result<Bytes, String>;

/// Both directions of one framed connection.
pub struct Frames {
    pub tx: mpsc::Sender<Bytes>,
    pub rx: mpsc::Receiver<Inbound>,
}

impl Frames {
    /// A connected pair of in-memory ends (for tests). Needs a tokio runtime.
    pub fn pair() -> (Frames, Frames) {
        let (a_tx, a_to_b) = mpsc::channel::<Bytes>(QUEUE);
        let (b_tx, b_to_a) = mpsc::channel::<Bytes>(QUEUE);
        let (a_in, a_rx) = mpsc::channel(QUEUE);
        let (b_in, b_rx) = mpsc::channel(QUEUE);
        tokio::spawn(forward(a_to_b, b_in));
        tokio::spawn(forward(b_to_a, a_in));
        (Frames { tx: a_tx, rx: a_rx }, Frames { tx: b_tx, rx: b_rx })
    }

    /// Pumps an axum WebSocket. Only Binary frames are sent; the writer closes the socket when
    /// `tx` is dropped. Pings are answered by the WebSocket library; Close ends the stream.
    pub fn websocket(socket: WebSocket) -> Frames {
        let (mut sink, mut stream) = socket.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(QUEUE);
        let (in_tx, in_rx) = mpsc::channel::<Inbound>(QUEUE);
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if let Err(e) = sink.send(Message::Binary(frame)).await {
                    debug!(error = %e, "WebSocket write failed");
                    return;
                }
            }
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                let item = match frame {
                    Ok(Message::Binary(bytes)) => Ok(bytes),
                    Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                    Ok(Message::Close(_)) => return,
                    Ok(Message::Text(_)) => {
                        Err("a Text frame (only Binary frames carry messages)".to_owned())
                    }
                    // An oversized message is the peer's fault and worth a reason; any other
                    // transport error (a reset) just ends the stream.
                    Err(e) if is_capacity(&e) => Err(format!("WebSocket: {e}")),
                    Err(e) => {
                        debug!(error = %e, "WebSocket read failed");
                        return;
                    }
                };
                let stop = item.is_err();
                if in_tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        Frames {
            tx: out_tx,
            rx: in_rx,
        }
    }
}

async fn forward(mut from: mpsc::Receiver<Bytes>, to: mpsc::Sender<Inbound>) {
    while let Some(frame) = from.recv().await {
        if to.send(Ok(frame)).await.is_err() {
            return;
        }
    }
}

/// axum wraps tungstenite's errors opaquely; its capacity errors read "Space limit exceeded".
fn is_capacity(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit") || text.contains("too long")
}
