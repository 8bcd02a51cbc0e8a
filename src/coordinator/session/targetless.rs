//! Targetless sessions (`targets/targetless`): no pod is involved, so the coordinator serves the
//! session itself with the agent's own session code in-process. Outgoing connections and DNS
//! lookups leave from the coordinator's pod (the cluster network, like the agent pod the upstream
//! operator would spawn); environment is empty, remote files are off and incoming traffic is
//! refused (nothing to steal from).

use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use tracing::debug;

use super::frames::Frames;
use crate::agent::env::EnvSource;
use crate::agent::error::AgentError;
use crate::agent::files::FsRoot;
use crate::agent::metrics::Metrics;
use crate::agent::session::{self, AgentState, Outbound, SessionEnd};
use crate::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use crate::protocol::{ClientMessage, DaemonMessage};

/// One state for every targetless session of this process.
fn state() -> Arc<AgentState> {
    static STATE: OnceLock<Arc<AgentState>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            Arc::new(AgentState::new(
                EnvSource::Off,
                FsRoot::Off,
                None,
                Arc::new(Metrics::new()),
            ))
        })
        .clone()
}

/// Serves one targetless connection until the client leaves or `killed` yields a reason, which
/// the client gets as `Close(reason)` before the connection ends.
pub async fn serve(frames: Frames, killed: impl Future<Output = String> + Send) -> SessionEnd {
    let Frames { tx, rx } = frames;
    let (out, mut out_rx) = Outbound::channel();
    let closer = out.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            match encode_to_vec(&msg) {
                Ok(bytes) => {
                    if tx.send(bytes.into()).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "cannot encode a daemon message; ending the session");
                    return;
                }
            }
        }
    });
    // A kill queues the Close, then ends the client's stream, so the session ends as if the
    // client had left and the writer flushes the Close before the socket goes.
    let killed = async move {
        let reason = killed.await;
        closer.send(DaemonMessage::Close(reason)).await;
    };
    let inbound = tokio_stream_from(rx)
        .map(|frame| match frame {
            Ok(bytes) => decode(&bytes),
            Err(reason) => Err(AgentError::Decode(reason)),
        })
        .take_until(Box::pin(killed));
    let end = session::run(state(), Box::pin(inbound), out).await;
    let _ = writer.await;
    end
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

/// A frame holds exactly one whole message.
fn decode(bytes: &[u8]) -> Result<ClientMessage, AgentError> {
    match decode_from_slice::<ClientMessage>(bytes) {
        Ok(Decoded::Message(msg, used)) if used == bytes.len() => Ok(msg),
        Ok(Decoded::Message(_, used)) => Err(AgentError::Decode(format!(
            "frame of {} bytes holds {} trailing bytes after one message",
            bytes.len(),
            bytes.len() - used
        ))),
        Ok(Decoded::Incomplete { .. }) => Err(AgentError::Decode(format!(
            "frame of {} bytes holds a truncated message",
            bytes.len()
        ))),
        Err(e) => Err(AgentError::Decode(e.to_string())),
    }
}
