//! Agent metrics (Prometheus text format via `--metrics-listen`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::session::SessionEnd;
use crate::protocol::ClientMessage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    sessions_active: Gauge,
    sessions_ended: Family<EndLabels, Counter>,
    client_messages: Family<MessageLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mirrord_agent");
        let sessions_active = Gauge::default();
        let sessions_ended = Family::<EndLabels, Counter>::default();
        let client_messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "sessions_active",
            "Sessions being served",
            sessions_active.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions that ended, by reason",
            sessions_ended.clone(),
        );
        registry.register(
            "client_messages",
            "Client messages received, by feature",
            client_messages.clone(),
        );
        Metrics {
            registry,
            sessions_active,
            sessions_ended,
            client_messages,
        }
    }

    pub fn session_started(&self) {
        self.sessions_active.inc();
    }

    pub fn session_ended(&self, end: &SessionEnd) {
        self.sessions_active.dec();
        let reason = match end {
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::Refused(_) => "refused",
            SessionEnd::Transport(e) => e.label(),
            SessionEnd::WriterGone => "writer_gone",
        };
        self.sessions_ended
            .get_or_create(&EndLabels { reason })
            .inc();
    }

    pub fn message(&self, msg: &ClientMessage) {
        let kind = match msg {
            ClientMessage::Close => "close",
            ClientMessage::Tcp(_) => "mirror",
            ClientMessage::TcpSteal(_) => "steal",
            ClientMessage::TcpOutgoing(_)
            | ClientMessage::UdpOutgoing(_)
            | ClientMessage::SeqpacketOutgoing(_) => "outgoing",
            ClientMessage::FileRequest(_) => "file",
            ClientMessage::GetEnvVarsRequest(_) => "env",
            ClientMessage::Ping => "ping",
            ClientMessage::GetAddrInfoRequest(_)
            | ClientMessage::GetAddrInfoRequestV2(_)
            | ClientMessage::ReverseDnsLookup(_) => "dns",
            ClientMessage::SwitchProtocolVersion(_) | ClientMessage::ReadyForLogs => "control",
            ClientMessage::PauseTargetRequest(_)
            | ClientMessage::Vpn(_)
            | ClientMessage::OperatorPong(_)
            | ClientMessage::ShareLink(_) => "other",
        };
        self.client_messages
            .get_or_create(&MessageLabels { kind })
            .inc();
    }

    pub fn sessions_active(&self) -> i64 {
        self.sessions_active.get()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_messages_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.session_started();
        m.session_started();
        m.message(&ClientMessage::Ping);
        m.session_ended(&SessionEnd::ClientClosed);
        assert_eq!(m.sessions_active(), 1);
        let text = m.encode();
        assert!(text.contains("mirrord_agent_sessions_active 1"), "{text}");
        assert!(
            text.contains(r#"mirrord_agent_sessions_ended_total{reason="client_closed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mirrord_agent_client_messages_total{kind="ping"} 1"#),
            "{text}"
        );
    }
}
