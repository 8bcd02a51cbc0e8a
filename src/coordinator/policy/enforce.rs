//! The relay's hook: a mirror or steal subscription checked against the policies, answered in the
//! protocol as the CLI shows it (`ResponseError::ForbiddenWithReason`, or `Forbidden` for clients
//! older than protocol 1.17).

use semver::Version;
use tracing::info;

use super::eval::IncomingMode;
use crate::coordinator::session::{SessionState, SessionTable};
use crate::protocol::version::MIRROR_POLICY_REASON_VERSION;
use crate::protocol::{BlockedAction, HttpFilter, Port, ResponseError, StealType};

/// A refused subscription: the text for the CLI's log and the error for `SubscribeResult`.
pub struct Refused {
    pub text: String,
    pub error: ResponseError,
}

pub fn subscription(
    table: &SessionTable,
    session: &SessionState,
    steal: bool,
    port: Port,
    filter: Option<&HttpFilter>,
    client_version: Option<&Version>,
) -> Option<Refused> {
    let gate = table.policy_gate()?;
    let mode = if steal {
        IncomingMode::Steal
    } else {
        IncomingMode::Mirror
    };
    let refusal = gate.incoming(session.spec.id, mode, port, filter).err()?;
    let text = refusal.to_string();
    info!(port, %text, "subscription refused by policy");
    let blocked_action = match (steal, filter) {
        (false, _) => BlockedAction::Mirror(port),
        (true, None) => BlockedAction::Steal(StealType::All(port)),
        (true, Some(f)) => BlockedAction::Steal(StealType::FilteredHttpEx(port, f.clone())),
    };
    let policy_name = Some(refusal.policy.name.clone());
    let error = if client_version.is_some_and(|v| MIRROR_POLICY_REASON_VERSION.matches(v)) {
        ResponseError::ForbiddenWithReason {
            blocked_action,
            policy_name,
            reason: text.clone(),
        }
    } else {
        ResponseError::Forbidden {
            blocked_action,
            policy_name,
        }
    };
    Some(Refused { text, error })
}
