//! PLACEHOLDER (lead's local compile aid; replaced by the patch branch).
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, BTreeSet};
pub const AGENT_CONTAINER_NAME: &str = "mirrord-agent";
pub const STATUS_ANNOTATION: &str = "agent.mirrord.metalbear.co/status";
pub const INJECT_LABEL: &str = "mirrord.metalbear.co/inject";
pub const NAMESPACE_LABEL: &str = "mirrord-injection";
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect {
    Iptables,
    PortSwap,
    Off,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvMode {
    Spec,
    Proc,
    Off,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsMode {
    Volumes,
    Proc,
    Off,
}
macro_rules! fs { ($t:ident, $($s:literal => $v:ident),*) => {
 impl std::str::FromStr for $t { type Err = String; fn from_str(s:&str)->Result<Self,String>{ match s { $($s => Ok(Self::$v),)* _ => Err(format!("invalid {s}")) } } }
 impl std::fmt::Display for $t { fn fmt(&self,f:&mut std::fmt::Formatter)->std::fmt::Result{ f.write_str(match self { $(Self::$v => $s,)* }) } } } }
fs!(Redirect, "iptables" => Iptables, "port-swap" => PortSwap, "off" => Off);
fs!(EnvMode, "spec" => Spec, "proc" => Proc, "off" => Off);
fs!(FsMode, "volumes" => Volumes, "proc" => Proc, "off" => Off);
#[derive(Debug, Clone)]
pub struct AgentDefaults {
    pub cpu_request: String,
    pub cpu_limit: Option<String>,
    pub memory_request: String,
    pub memory_limit: Option<String>,
    pub log_level: String,
    pub redirect: Redirect,
    pub env: EnvMode,
    pub fs: FsMode,
}
impl Default for AgentDefaults {
    fn default() -> Self {
        Self {
            cpu_request: "5m".into(),
            cpu_limit: None,
            memory_request: "16Mi".into(),
            memory_limit: Some("64Mi".into()),
            log_level: "info".into(),
            redirect: Redirect::Iptables,
            env: EnvMode::Spec,
            fs: FsMode::Volumes,
        }
    }
}
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    pub agent_image: String,
    pub native_sidecar: bool,
    pub defaults: AgentDefaults,
    pub coordinator_url: String,
    pub coordinator_ca_bundle: Option<String>,
    pub agent_group_id: i64,
    pub excluded_namespaces: BTreeSet<String>,
    pub operator_version: String,
}
pub struct PodContext<'a> {
    pub namespace: &'a str,
    pub namespace_annotations: Option<&'a BTreeMap<String, String>>,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    AlreadyInjected,
    HostNetwork,
    OptedOut,
    ExcludedNamespace,
    NoContainers,
}
impl SkipReason {
    pub fn as_label(&self) -> &'static str {
        "x"
    }
    pub fn warning(&self) -> String {
        String::new()
    }
}
pub enum Decision {
    Inject {
        patch: json_patch::Patch,
        warnings: Vec<String>,
        invalid_knobs: Vec<&'static str>,
    },
    Skip(SkipReason),
}
pub fn decide(pod: &Pod, ctx: &PodContext, cfg: &InjectorConfig) -> Decision {
    let _ = (ctx, cfg);
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STATUS_ANNOTATION))
    {
        return Decision::Skip(SkipReason::AlreadyInjected);
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([{"op":"add","path":"/spec/containers/-","value":{"name":"mirrord-agent","image":cfg.agent_image}}, {"op":"add","path":"/metadata/annotations","value":{STATUS_ANNOTATION:"{}"}}])).unwrap();
    Decision::Inject {
        patch,
        warnings: vec![],
        invalid_knobs: vec![],
    }
}
pub const KNOB_PREFIX: &str = "agent.mirrord.metalbear.co/";
