//! The contract between the webhook (which writes the injected `mirrord-agent` container) and the agent
//! (which reads it): env names, paths, mode spellings and the target-process fingerprint. Both sides
//! import these instead of restating them, so a rename cannot leave one side behind.
//!
//! Pure data only (no kube, no I/O): the agent-only executable links this module.

use std::{collections::BTreeSet, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Name of the injected container.
pub const AGENT_CONTAINER_NAME: &str = "mirrord-agent";
/// Prefix of the target's env copies on the agent (the agent strips it to answer GetEnvVars).
pub const TARGET_ENV_PREFIX: &str = "MIRRORD_TARGET_ENV_";
/// Audience of the agent's projected ServiceAccount token, checked by the coordinator's TokenReview.
pub const TOKEN_AUDIENCE: &str = "mirrord-operator";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
pub const TOKEN_VOLUME_NAME: &str = "mirrord-agent-token";
/// Where the projected token volume is mounted in the agent.
pub const TOKEN_DIR: &str = "/var/run/secrets/mirrord.metalbear.co";
/// The token file inside [`TOKEN_DIR`]: the agent's default `--token-file`.
pub const TOKEN_PATH: &str = "/var/run/secrets/mirrord.metalbear.co/token";
/// Where the target's volumes appear, read-only, inside the agent (fs=volumes).
pub const TARGET_ROOT: &str = "/mirrord/target";
/// Group id the agent runs as by default; its own traffic is exempted from its redirect rules.
pub const DEFAULT_AGENT_GROUP_ID: u32 = 30777;

/// Env variables the webhook sets on the agent and the agent reads (each is also a flag).
pub mod env {
    pub const POD_NAME: &str = "MIRRORD_AGENT_POD_NAME";
    pub const POD_NAMESPACE: &str = "MIRRORD_AGENT_POD_NAMESPACE";
    pub const POD_UID: &str = "MIRRORD_AGENT_POD_UID";
    pub const POD_IP: &str = "MIRRORD_AGENT_POD_IP";
    pub const POD_IPS: &str = "MIRRORD_AGENT_POD_IPS";
    pub const NODE_NAME: &str = "MIRRORD_AGENT_NODE_NAME";
    pub const COORDINATOR_URL: &str = "MIRRORD_AGENT_COORDINATOR_URL";
    pub const COORDINATOR_CA: &str = "MIRRORD_AGENT_COORDINATOR_CA";
    pub const TOKEN_FILE: &str = "MIRRORD_AGENT_TOKEN_FILE";
    pub const LOG_LEVEL: &str = "MIRRORD_AGENT_LOG_LEVEL";
    pub const REDIRECT: &str = "MIRRORD_AGENT_REDIRECT";
    pub const ENV_MODE: &str = "MIRRORD_AGENT_ENV_MODE";
    pub const FS_MODE: &str = "MIRRORD_AGENT_FS_MODE";
    pub const TARGET_CONTAINER: &str = "MIRRORD_AGENT_TARGET_CONTAINER";
    pub const TARGET_ROOT: &str = "MIRRORD_AGENT_TARGET_ROOT";
    pub const TARGET_PORTS: &str = "MIRRORD_AGENT_TARGET_PORTS";
    pub const TARGET_MATCH: &str = "MIRRORD_AGENT_TARGET_MATCH";
    pub const GROUP_ID: &str = "MIRRORD_AGENT_GROUP_ID";

    /// What the agent learns about its pod through the downward API: (variable, `fieldPath`).
    pub const DOWNWARD_API: [(&str, &str); 6] = [
        (POD_NAME, "metadata.name"),
        (POD_NAMESPACE, "metadata.namespace"),
        (POD_UID, "metadata.uid"),
        (POD_IP, "status.podIP"),
        (POD_IPS, "status.podIPs"),
        (NODE_NAME, "spec.nodeName"),
    ];
}

/// Error for a string that is not one of an enum's spellings; `expected` lists them for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of {}", expected.join("|"))]
pub struct UnknownValue {
    pub expected: &'static [&'static str],
}

/// String enums spelled as in injection.md, shared by annotations, webhook flags and agent flags.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownValue { expected: &[$($text),+] }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// How incoming traffic reaches the agent: `nat` REDIRECT rules (NET_ADMIN), a named-port swap
    /// done by the webhook (not implemented yet: the agent behaves as `off`), or none.
    Redirect { Iptables => "iptables", PortSwap => "port-swap", Off => "off" }
);
string_enum!(
    /// Where the agent reads the target's environment from: the declared env the webhook copied with
    /// [`TARGET_ENV_PREFIX`], `/proc/<pid>/environ` (shared process namespace), or nowhere.
    EnvMode { Spec => "spec", Proc => "proc", Off => "off" }
);
string_enum!(
    /// Where the agent reads the target's files from: its volumes mounted under [`TARGET_ROOT`],
    /// `/proc/<pid>/root` (shared process namespace), or nowhere (ENOENT).
    FsMode { Volumes => "volumes", Proc => "proc", Off => "off" }
);
string_enum!(
    /// The agent's log level; deliberately not a RUST_LOG directive, so a typo cannot silence it.
    LogLevel { Trace => "trace", Debug => "debug", Info => "info", Warn => "warn", Error => "error" }
);

/// What one container's main process is expected to look like (from its spec). The webhook writes it
/// borrowing the pod (`S = &str`); the agent reads it owned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Fingerprint<S: Ord = String> {
    /// The container's `command` (replaces the image entrypoint: all of argv before `args`).
    pub command: Vec<S>,
    /// The container's `args` (the end of argv).
    pub args: Vec<S>,
    /// Names of the container's declared `env` that no other container of the pod declares.
    pub env_names: BTreeSet<S>,
}

/// [`env::TARGET_MATCH`]: the target's fingerprint and those of the pod's other long-running
/// containers (none: the target is the only one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetMatch<S: Ord = String> {
    pub target: Fingerprint<S>,
    pub others: Vec<Fingerprint<S>>,
}

// By hand: derived impls would require `S: Default`, which the element type need not be.
impl<S: Ord> Default for Fingerprint<S> {
    fn default() -> Self {
        Fingerprint {
            command: Vec::new(),
            args: Vec::new(),
            env_names: BTreeSet::new(),
        }
    }
}

impl<S: Ord> Default for TargetMatch<S> {
    fn default() -> Self {
        TargetMatch {
            target: Fingerprint::default(),
            others: Vec::new(),
        }
    }
}

/// clap parser of `--target-match` (JSON).
pub fn parse_match(text: &str) -> Result<TargetMatch, String> {
    serde_json::from_str(text).map_err(|e| format!("not a target match JSON object: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_match_reads_back_owned() {
        let written = TargetMatch {
            target: Fingerprint {
                command: vec!["/app"],
                args: vec!["--port", "80"],
                env_names: BTreeSet::from(["PORT"]),
            },
            others: vec![Fingerprint::default()],
        };
        let text = serde_json::to_string(&written).unwrap();
        assert_eq!(
            text,
            r#"{"target":{"command":["/app"],"args":["--port","80"],"envNames":["PORT"]},"others":[{"command":[],"args":[],"envNames":[]}]}"#
        );
        let read = parse_match(&text).unwrap();
        assert_eq!(read.target.args, ["--port", "80"]);
        assert_eq!(read.others, [Fingerprint::default()]);
        assert!(parse_match(r#"{"target": 5}"#).is_err());
    }

    #[test]
    fn modes_round_trip_and_name_their_spellings() {
        for mode in [Redirect::Iptables, Redirect::PortSwap, Redirect::Off] {
            assert_eq!(mode.as_str().parse::<Redirect>(), Ok(mode));
        }
        assert_eq!(
            "nat".parse::<Redirect>().unwrap_err().to_string(),
            "expected one of iptables|port-swap|off"
        );
    }

    #[test]
    fn the_token_path_is_inside_the_mounted_directory() {
        assert_eq!(TOKEN_PATH, format!("{TOKEN_DIR}/token"));
    }
}
