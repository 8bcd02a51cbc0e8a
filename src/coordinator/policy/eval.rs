//! The pure policy evaluation: (policies, target and its labels, what a session asks for) →
//! allowed, or refused with the reason (policy kind/namespace/name, rule, what was asked). No I/O:
//! callers pass the policies they read from the caches.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::crd::{
    BlockedFeature, LabelSelector, MirrordPolicySpec, OutgoingRule, Protocol, SelectorOperator,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    MirrordPolicy,
    MirrordClusterPolicy,
}

/// Which object a decision comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{:?} {ns}/{}", self.kind, self.name),
            None => write!(f, "{:?} {}", self.kind, self.name),
        }
    }
}

/// A policy as read from the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedPolicy {
    #[serde(flatten)]
    pub reference: PolicyRef,
    pub spec: MirrordPolicySpec,
}

/// The session's target; `path` is `None` for a targetless session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetInfo {
    pub namespace: String,
    #[serde(default)]
    pub path: Option<String>,
    /// Labels of the targeted workload, or of the pod when a pod is targeted.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub copy_target: bool,
}

/// A refusal, worded for the person who ran mirrord.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub policy: PolicyRef,
    pub rule: String,
    pub asked: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "forbidden by {} (rule {}): {}",
            self.policy, self.rule, self.asked
        )
    }
}

/// The policies that cover a target: a namespaced one only in its own namespace; `targetPath` and
/// `selector` must both match when given; a targetless session is covered only by policies that name
/// no target; copy targets only by policies with `appliesToCopyTargets`.
pub fn applicable<'a>(policies: &'a [NamedPolicy], target: &TargetInfo) -> Vec<&'a NamedPolicy> {
    policies
        .iter()
        .filter(|p| {
            let spec = &p.spec;
            if p.reference.kind == PolicyKind::MirrordPolicy
                && p.reference.namespace.as_deref() != Some(target.namespace.as_str())
            {
                return false;
            }
            if target.copy_target && !spec.applies_to_copy_targets {
                return false;
            }
            let Some(path) = &target.path else {
                return spec.target_path.is_none() && spec.selector.is_none();
            };
            let path_ok = spec
                .target_path
                .as_deref()
                .is_none_or(|glob| target_path_matches(glob, path));
            let labels_ok = spec
                .selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, &target.labels));
            path_ok && labels_ok
        })
        .collect()
}

/// `deploy/x` also covers `deploy/x/container/c`: the glob is tried on the whole path and on the
/// path without its container part, each with `deployment/` and its short form `deploy/`.
fn target_path_matches(glob: &str, path: &str) -> bool {
    let short = path
        .strip_prefix("deployment/")
        .map(|rest| format!("deploy/{rest}"));
    [Some(path.to_owned()), short]
        .into_iter()
        .flatten()
        .any(|path| {
            glob_matches(glob, &path)
                || path
                    .find("/container/")
                    .is_some_and(|at| glob_matches(glob, &path[..at]))
        })
}

/// `*` any run of characters, `?` one character, everything else literal.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            match e.operator {
                SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
                SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                SelectorOperator::Exists => value.is_some(),
                SelectorOperator::DoesNotExist => value.is_none(),
            }
        })
}

/// At connect: `requireProfile` and `profileAllowlist` against the `profile` connect parameter.
pub fn check_connect(policies: &[&NamedPolicy], profile: Option<&str>) -> Result<(), Refusal> {
    for p in policies {
        if p.spec.require_profile && profile.is_none() {
            return Err(Refusal {
                policy: p.reference.clone(),
                rule: "requireProfile".into(),
                asked: "a session without a profile".into(),
            });
        }
        if let Some(allow) = &p.spec.profile_allowlist
            && !profile.is_some_and(|name| allow.iter().any(|a| a == name))
        {
            return Err(Refusal {
                policy: p.reference.clone(),
                rule: format!("profileAllowlist {allow:?}"),
                asked: match profile {
                    Some(name) => format!("a session with profile {name:?}"),
                    None => "a session without a profile".into(),
                },
            });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncomingMode {
    Steal,
    Mirror,
}

/// The session's HTTP filter, as the protocol carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFilterRequest {
    Header(String),
    Path(String),
    Method(String),
    AllOf(Vec<HttpFilterRequest>),
    AnyOf(Vec<HttpFilterRequest>),
}

impl fmt::Display for HttpFilterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpFilterRequest::Header(r) => write!(f, "header {r:?}"),
            HttpFilterRequest::Path(r) => write!(f, "path {r:?}"),
            HttpFilterRequest::Method(m) => write!(f, "method {m:?}"),
            HttpFilterRequest::AllOf(v) | HttpFilterRequest::AnyOf(v) => {
                let word = if matches!(self, HttpFilterRequest::AllOf(_)) {
                    "all_of"
                } else {
                    "any_of"
                };
                write!(f, "{word}[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Does the session's filter satisfy the policy's header pattern? A header filter must match the
/// pattern; with `all_of` one nested filter matching is enough (it narrows the rest), with `any_of`
/// every branch must match (each alone lets requests through).
fn filter_satisfies(pattern: &Regex, filter: &HttpFilterRequest) -> bool {
    match filter {
        HttpFilterRequest::Header(r) => pattern.is_match(r),
        HttpFilterRequest::Path(_) | HttpFilterRequest::Method(_) => false,
        HttpFilterRequest::AllOf(v) => v.iter().any(|f| filter_satisfies(pattern, f)),
        HttpFilterRequest::AnyOf(v) => {
            !v.is_empty() && v.iter().all(|f| filter_satisfies(pattern, f))
        }
    }
}

/// A port subscription: steal or mirror, with the session's HTTP filter if any.
pub fn check_incoming(
    policies: &[&NamedPolicy],
    mode: IncomingMode,
    port: u16,
    filter: Option<&HttpFilterRequest>,
) -> Result<(), Refusal> {
    let asked = match (mode, filter) {
        (IncomingMode::Mirror, _) => format!("mirror port {port}"),
        (IncomingMode::Steal, None) => format!("steal port {port} without a filter"),
        (IncomingMode::Steal, Some(f)) => format!("steal port {port} with filter {f}"),
    };
    let refuse = |p: &NamedPolicy, rule: String| Refusal {
        policy: p.reference.clone(),
        rule,
        asked: asked.clone(),
    };
    for p in policies {
        let blocks = |b: BlockedFeature| p.spec.block.contains(&b);
        match mode {
            IncomingMode::Mirror if blocks(BlockedFeature::Mirror) => {
                return Err(refuse(p, "block: mirror".into()));
            }
            IncomingMode::Mirror => {}
            IncomingMode::Steal => {
                if blocks(BlockedFeature::Steal) {
                    return Err(refuse(p, "block: steal".into()));
                }
                let header = p
                    .spec
                    .network
                    .as_ref()
                    .and_then(|n| n.incoming.as_ref())
                    .and_then(|i| i.http_filter.as_ref())
                    .and_then(|h| h.header_filter.as_deref());
                if filter.is_none()
                    && (blocks(BlockedFeature::StealWithoutFilter) || header.is_some())
                {
                    let rule = if header.is_some() {
                        "network.incoming.httpFilter.headerFilter (a filter is required)"
                    } else {
                        "block: steal-without-filter"
                    };
                    return Err(refuse(p, rule.into()));
                }
                if let (Some(pattern), Some(filter)) = (header, filter) {
                    let rule = format!("network.incoming.httpFilter.headerFilter {pattern:?}");
                    // A policy whose regex does not compile refuses rather than lets everything by.
                    match Regex::new(pattern) {
                        Ok(re) if filter_satisfies(&re, filter) => {}
                        Ok(_) => return Err(refuse(p, rule)),
                        Err(_) => return Err(refuse(p, format!("{rule}, not a valid regex"))),
                    }
                }
            }
        }
    }
    Ok(())
}

/// The first policy whose `env.exclude` covers this variable.
pub fn env_excluded<'a>(policies: &[&'a NamedPolicy], name: &str) -> Option<&'a PolicyRef> {
    policies
        .iter()
        .find(|p| {
            p.spec
                .env
                .as_ref()
                .is_some_and(|e| e.exclude.iter().any(|g| glob_matches(g, name)))
        })
        .map(|p| &p.reference)
}

/// What a file request does to a path on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileOp {
    /// `Open` / `OpenRelative` with read-only flags.
    Open,
    /// `Open` / `OpenRelative` with any of write, append, truncate, create.
    OpenWrite,
    /// `stat`, `access`, `statfs`, `readlink`: learns about the file without its content.
    Inspect,
    /// Reads a directory's entries (`FdOpenDir`, `ReadDir*`, `GetDEnts64`).
    List,
    /// Reads or seeks an open file.
    Read,
    /// Changes the file system: writes to an open file, mkdir, rmdir, unlink, rename, truncate,
    /// chmod, chown, utimens.
    Modify,
}

impl FileOp {
    fn asked(self, path: &str) -> String {
        match self {
            FileOp::Open => format!("open {path}"),
            FileOp::OpenWrite => format!("open {path} for writing"),
            FileOp::Inspect => format!("inspect {path}"),
            FileOp::List => format!("list {path}"),
            FileOp::Read => format!("read {path}"),
            FileOp::Modify => format!("modify {path}"),
        }
    }
}

/// What to do with a file request on the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileDecision {
    Remote,
    /// Answered as if the file did not exist.
    NotFound(PolicyRef),
    /// Refused remotely so that the session uses its local file.
    Local(PolicyRef),
    /// A change to a read-only path.
    Refused(Refusal),
}

/// `path` is absolute and normalized (no `.` or `..`). `notFound` wins over `local`, which wins
/// over `readOnly`; `readOnly` refuses only opens for writing and changes.
pub fn check_file(policies: &[&NamedPolicy], path: &str, op: FileOp) -> FileDecision {
    let hit = |pick: fn(&super::crd::FsPolicy) -> &Vec<String>| {
        policies.iter().find(|p| {
            p.spec.fs.as_ref().is_some_and(|fs| {
                pick(fs)
                    .iter()
                    .any(|r| compiled(r).is_some_and(|re| re.is_match(path)))
            })
        })
    };
    if let Some(p) = hit(|fs| &fs.not_found) {
        return FileDecision::NotFound(p.reference.clone());
    }
    if let Some(p) = hit(|fs| &fs.local) {
        return FileDecision::Local(p.reference.clone());
    }
    if matches!(op, FileOp::OpenWrite | FileOp::Modify)
        && let Some(p) = hit(|fs| &fs.read_only)
    {
        return FileDecision::Refused(Refusal {
            policy: p.reference.clone(),
            rule: "fs.readOnly".into(),
            asked: op.asked(path),
        });
    }
    FileDecision::Remote
}

/// A policy regex compiled once per process (`None`: it does not compile). `fs` rules are checked on
/// every file request, and compiling them each time cost milliseconds per read; the cache is cleared
/// when it holds more patterns than policies plausibly write, so it stays bounded.
fn compiled(pattern: &str) -> Option<std::sync::Arc<Regex>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    const MAX: usize = 4096;
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Arc<Regex>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(hit) = cache.get(pattern) {
        return hit.clone();
    }
    if cache.len() >= MAX {
        cache.clear();
    }
    let regex = Regex::new(pattern).ok().map(Arc::new);
    cache.insert(pattern.to_owned(), regex.clone());
    regex
}

/// Whether a path is `fs.notFound` for `policies`, with the regexes compiled once (for the many
/// entries of a directory listing).
pub fn not_found_matcher(policies: &[&NamedPolicy]) -> impl Fn(&str) -> bool + use<> {
    let patterns: Vec<std::sync::Arc<Regex>> = policies
        .iter()
        .filter_map(|p| p.spec.fs.as_ref())
        .flat_map(|fs| fs.not_found.iter())
        .filter_map(|r| compiled(r))
        .collect();
    move |path| patterns.iter().any(|re| re.is_match(path))
}

/// An outgoing connection (or UDP send) the session asks for; `hostnames` are the names the
/// session's own DNS queries resolved to this address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub hostnames: Vec<String>,
}

/// A rule part the policy wrote wrongly (CIDR or regex that does not parse) counts as matching in
/// `block` and as not matching in `allow`: a mistake in a policy never lets traffic through.
fn rule_matches(rule: &OutgoingRule, dest: &Destination, malformed_matches: bool) -> bool {
    let ip_ok = rule.ip_block.as_ref().is_none_or(|b| {
        cidr_contains(&b.cidr, dest.ip).unwrap_or(malformed_matches)
            && !b
                .except
                .iter()
                .any(|e| cidr_contains(e, dest.ip).unwrap_or(!malformed_matches))
    });
    let host_ok = rule
        .hostname
        .as_deref()
        .is_none_or(|h| match Regex::new(h) {
            Ok(re) => dest.hostnames.iter().any(|n| re.is_match(n)),
            Err(_) => malformed_matches,
        });
    let port_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|p| p.protocol == dest.protocol && i32::from(dest.port) == p.port);
    ip_ok && host_ok && port_ok
}

/// `a.b.c.d/n` (or IPv6); an address without `/n` is a single host. `None` when `cidr` is malformed.
pub fn cidr_contains(cidr: &str, ip: IpAddr) -> Option<bool> {
    let (addr, len) = match cidr.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u32>().ok()?)),
        None => (cidr, None),
    };
    let net = addr.parse::<IpAddr>().ok()?;
    let bits = if net.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(bits);
    if len > bits {
        return None;
    }
    Some(match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            mask_eq(u32::from(n).into(), u32::from(i).into(), len, 32)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => mask_eq(u128::from(n), u128::from(i), len, 128),
        _ => false,
    })
}

fn mask_eq(a: u128, b: u128, len: u32, bits: u32) -> bool {
    len == 0 || (a ^ b) >> (bits - len) == 0
}

pub fn check_outgoing(policies: &[&NamedPolicy], dest: &Destination) -> Result<(), Refusal> {
    let asked = format!(
        "{:?} connection to {}:{}{}",
        dest.protocol,
        dest.ip,
        dest.port,
        if dest.hostnames.is_empty() {
            String::new()
        } else {
            format!(" ({})", dest.hostnames.join(", "))
        }
    );
    for p in policies {
        let Some(out) = p.spec.network.as_ref().and_then(|n| n.outgoing.as_ref()) else {
            continue;
        };
        if let Some(i) = out.block.iter().position(|r| rule_matches(r, dest, true)) {
            return Err(Refusal {
                policy: p.reference.clone(),
                rule: format!("network.outgoing.block[{i}]"),
                asked,
            });
        }
        if !out.allow.is_empty() && !out.allow.iter().any(|r| rule_matches(r, dest, false)) {
            return Err(Refusal {
                policy: p.reference.clone(),
                rule: "network.outgoing.allow (no rule matches)".into(),
                asked,
            });
        }
    }
    Ok(())
}

/// Blocked features that this operator accepts but never meets (it does not scale workloads down),
/// reported so that the admin sees them.
pub fn not_applicable(policies: &[&NamedPolicy]) -> Vec<(PolicyRef, BlockedFeature)> {
    policies
        .iter()
        .filter(|p| p.spec.block.contains(&BlockedFeature::CopyTargetScaleDown))
        .map(|p| (p.reference.clone(), BlockedFeature::CopyTargetScaleDown))
        .collect()
}
