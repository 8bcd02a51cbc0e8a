//! The agent ↔ coordinator link contract (ARCHITECTURE.md, "Agent ↔ coordinator link"), defined
//! once for both ends: the agent (`agent::link`) and the coordinator's hub (`coordinator::agents`).
//! Free of kube and axum so the agent-only binary stays small.
//!
//! * The agent dials [`CONNECT_PATH`] with `Authorization: Bearer <projected token>` (audience
//!   [`TOKEN_AUDIENCE`]) and sends [`AgentControl::Register`] as a JSON Text frame.
//! * The coordinator sends [`CoordinatorControl::OpenSession`]; the agent dials
//!   [`session_path`]`(id)` with the same token and serves one mirrord-protocol session there,
//!   **one message per Binary frame** in both directions. When it ends the agent sends
//!   [`AgentControl::SessionEnded`].
//! * Control frames are JSON objects tagged by `"type"` (camelCase); unknown types are ignored by
//!   both ends so either side can grow.

use serde::{Deserialize, Serialize};

/// Where agents open their control link.
pub const CONNECT_PATH: &str = "/agents/connect";
/// Prefix of the per-session WebSocket an agent opens on request.
pub const SESSIONS_PREFIX: &str = "/agents/sessions/";
/// The audience of the projected ServiceAccount token the webhook mounts into the agent.
pub const TOKEN_AUDIENCE: &str = "mirrord-operator";
/// Largest control frame either side accepts (a registration is well below 4 KiB).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// The path an agent dials to serve session `id`.
pub fn session_path(id: &str) -> String {
    format!("{SESSIONS_PREFIX}{id}")
}

/// Session ids become URL path segments; anything else is refused by both ends.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && id != "."
        && id != ".."
}

/// Agent → coordinator control messages (JSON Text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum AgentControl {
    Register(Registration),
    SessionEnded { session_id: String },
}

/// Who this agent is: the coordinator cross-checks it with the token's pod claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub pod_ips: Vec<String>,
    pub node_name: String,
    pub target_container: String,
    pub target_ports: Vec<u16>,
    pub protocol_version: String,
    pub agent_version: String,
}

/// Coordinator → agent control messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum CoordinatorControl {
    /// Open [`session_path`]`(session_id)` and serve a session on it.
    OpenSession { session_id: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_are_tagged_json() {
        let open: CoordinatorControl =
            serde_json::from_str(r#"{"type":"openSession","sessionId":"abc-1"}"#).unwrap();
        assert_eq!(
            open,
            CoordinatorControl::OpenSession {
                session_id: "abc-1".into()
            }
        );
        let ended = serde_json::to_value(AgentControl::SessionEnded {
            session_id: "abc-1".into(),
        })
        .unwrap();
        assert_eq!(
            ended,
            serde_json::json!({"type": "sessionEnded", "sessionId": "abc-1"})
        );
        assert_eq!(session_path("abc-1"), "/agents/sessions/abc-1");
    }

    #[test]
    fn session_ids_are_path_segments() {
        assert!(valid_session_id("0f1e2d3c-4b5a"));
        assert!(!valid_session_id("../connect"));
        assert!(!valid_session_id(".."));
        assert!(!valid_session_id("a/b"));
        assert!(!valid_session_id(""));
    }
}
