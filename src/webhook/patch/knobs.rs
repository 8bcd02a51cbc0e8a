//! Per-pod knobs: typed values, operator-wide defaults, and resolution
//! (pod annotation, then namespace annotation, then the operator default).

use std::{collections::BTreeMap, str::FromStr};

use super::quantity::Quantity;
use crate::injection::UnknownValue;
pub use crate::injection::{EnvMode, FsMode, LogLevel, Redirect};

/// Operator-wide knob defaults (from the webhook's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDefaults {
    pub cpu_request: Quantity,
    pub cpu_limit: Option<Quantity>,
    pub memory_request: Quantity,
    pub memory_limit: Option<Quantity>,
    pub log_level: LogLevel,
    pub redirect: Redirect,
    pub env: EnvMode,
    pub fs: FsMode,
}

impl Default for AgentDefaults {
    fn default() -> Self {
        let q = |s: &str| {
            s.parse::<Quantity>()
                .expect("built-in default quantity is valid")
        };
        AgentDefaults {
            cpu_request: q("5m"),
            cpu_limit: None,
            memory_request: q("16Mi"),
            memory_limit: Some(q("64Mi")),
            log_level: LogLevel::Info,
            redirect: Redirect::Iptables,
            env: EnvMode::Spec,
            fs: FsMode::Volumes,
        }
    }
}

/// A defaults set the apiserver would refuse (request above limit, zero limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefaultsError {
    #[error("agent {resource} request {request} is above its limit {limit}")]
    RequestAboveLimit {
        resource: &'static str,
        request: String,
        limit: String,
    },
    #[error("agent {0} limit must be greater than zero")]
    ZeroLimit(&'static str),
}

impl AgentDefaults {
    /// Lets the CLI refuse, at start, defaults that would make every injected pod invalid.
    pub fn validate(&self) -> Result<(), DefaultsError> {
        for (resource, request, limit) in [
            ("cpu", &self.cpu_request, &self.cpu_limit),
            ("memory", &self.memory_request, &self.memory_limit),
        ] {
            if let Some(limit) = limit {
                if limit.is_zero() {
                    return Err(DefaultsError::ZeroLimit(resource));
                }
                if request > limit {
                    return Err(DefaultsError::RequestAboveLimit {
                        resource,
                        request: request.to_string(),
                        limit: limit.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The knobs, named as in the annotation keys (`agent.mirrord.metalbear.co/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    Image,
    CpuRequest,
    CpuLimit,
    MemoryRequest,
    MemoryLimit,
    LogLevel,
    NativeSidecar,
    Redirect,
    Env,
    Fs,
    TargetContainer,
}

impl Knob {
    pub const ALL: [Knob; 11] = [
        Knob::Image,
        Knob::CpuRequest,
        Knob::CpuLimit,
        Knob::MemoryRequest,
        Knob::MemoryLimit,
        Knob::LogLevel,
        Knob::NativeSidecar,
        Knob::Redirect,
        Knob::Env,
        Knob::Fs,
        Knob::TargetContainer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Knob::Image => "image",
            Knob::CpuRequest => "cpu-request",
            Knob::CpuLimit => "cpu-limit",
            Knob::MemoryRequest => "memory-request",
            Knob::MemoryLimit => "memory-limit",
            Knob::LogLevel => "log-level",
            Knob::NativeSidecar => "native-sidecar",
            Knob::Redirect => "redirect",
            Knob::Env => "env",
            Knob::Fs => "fs",
            Knob::TargetContainer => "target-container",
        }
    }

    /// The annotation key (`agent.mirrord.metalbear.co/<name>`), looked up for every knob of every
    /// admitted pod: a constant rather than a string built per request.
    pub fn annotation(self) -> &'static str {
        macro_rules! key {
            ($name:literal) => {
                concat!("agent.mirrord.metalbear.co/", $name)
            };
        }
        match self {
            Knob::Image => key!("image"),
            Knob::CpuRequest => key!("cpu-request"),
            Knob::CpuLimit => key!("cpu-limit"),
            Knob::MemoryRequest => key!("memory-request"),
            Knob::MemoryLimit => key!("memory-limit"),
            Knob::LogLevel => key!("log-level"),
            Knob::NativeSidecar => key!("native-sidecar"),
            Knob::Redirect => key!("redirect"),
            Knob::Env => key!("env"),
            Knob::Fs => key!("fs"),
            Knob::TargetContainer => key!("target-container"),
        }
    }
}

/// Why an image reference is not plausible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 512 characters")]
    TooLong,
    #[error("contains whitespace or a non-ASCII/control character")]
    BadCharacter,
    #[error("has a malformed digest")]
    BadDigest,
    #[error("has a malformed tag")]
    BadTag,
    #[error("has a malformed repository path")]
    BadName,
}

/// Checks that `image` is a plausible OCI reference: `[registry[:port]/]path[:tag][@algo:hex]`,
/// with lowercase path components. Stricter than "non-empty", looser than a full distribution parser.
pub fn validate_image(image: &str) -> Result<(), ImageError> {
    if image.is_empty() {
        return Err(ImageError::Empty);
    }
    if image.len() > 512 {
        return Err(ImageError::TooLong);
    }
    if !image.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ImageError::BadCharacter);
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let (algo, hex) = digest.split_once(':').ok_or(ImageError::BadDigest)?;
        let algo_ok = !algo.is_empty()
            && algo.split(['+', '.', '_', '-']).all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !algo_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::BadDigest);
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let first_ok = tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok = tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || tag.len() > 128 {
            return Err(ImageError::BadTag);
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // A first component with a dot, a port or `localhost` is a registry host, as docker decides it.
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost")
    {
        let registry = components.remove(0);
        if !valid_registry(registry) {
            return Err(ImageError::BadName);
        }
    }
    if !components.iter().all(|c| valid_path_component(c)) {
        return Err(ImageError::BadName);
    }
    Ok(())
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || registry.starts_with('[') => {
            (host, Some(port))
        }
        _ => (registry, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    };
    port_ok && host_ok
}

fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes
            .iter()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
}

/// Where an effective knob value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Source {
    Default,
    Namespace,
    Pod,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Default => "the operator defaults",
            Source::Namespace => "the namespace",
            Source::Pod => "the pod",
        }
    }
}

/// Warnings and invalid knob names collected while resolving.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub warnings: Vec<String>,
    pub invalid_knobs: Vec<&'static str>,
}

impl Report {
    fn invalid(&mut self, knob: Knob, warning: String) {
        self.warnings.push(warning);
        if !self.invalid_knobs.contains(&knob.name()) {
            self.invalid_knobs.push(knob.name());
        }
    }
}

/// Effective knob values for one pod.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Knobs {
    pub image: String,
    pub cpu_request: Quantity,
    pub cpu_limit: Option<Quantity>,
    pub memory_request: Quantity,
    pub memory_limit: Option<Quantity>,
    pub log_level: LogLevel,
    pub native_sidecar: bool,
    pub redirect: Redirect,
    pub env: EnvMode,
    pub fs: FsMode,
    pub target_container: String,
}

impl Knobs {
    /// The effective values by knob name, sorted by name, for the status annotation (an absent
    /// limit is left out).
    pub fn sorted_values(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let native = if self.native_sidecar { "true" } else { "false" };
        [
            (
                Knob::CpuLimit,
                self.cpu_limit.as_ref().map(Quantity::as_str),
            ),
            (Knob::CpuRequest, Some(self.cpu_request.as_str())),
            (Knob::Env, Some(self.env.as_str())),
            (Knob::Fs, Some(self.fs.as_str())),
            (Knob::Image, Some(self.image.as_str())),
            (Knob::LogLevel, Some(self.log_level.as_str())),
            (
                Knob::MemoryLimit,
                self.memory_limit.as_ref().map(Quantity::as_str),
            ),
            (Knob::MemoryRequest, Some(self.memory_request.as_str())),
            (Knob::NativeSidecar, Some(native)),
            (Knob::Redirect, Some(self.redirect.as_str())),
            (Knob::TargetContainer, Some(self.target_container.as_str())),
        ]
        .into_iter()
        .filter_map(|(knob, value)| Some((knob.name(), value?)))
    }
}

/// Inputs of knob resolution that are not annotations.
pub(crate) struct Fallbacks<'a> {
    pub defaults: &'a AgentDefaults,
    pub image: &'a str,
    pub native_sidecar: bool,
    /// Names of the pod's (non-init) containers, for `target-container`.
    pub containers: &'a [&'a str],
    /// The automatically chosen target, used when no annotation names a valid one.
    pub auto_target: &'a str,
}

/// The annotation maps consulted, most specific first.
pub(crate) struct Annotations<'a> {
    pub pod: Option<&'a BTreeMap<String, String>>,
    pub namespace: Option<&'a BTreeMap<String, String>>,
}

impl Annotations<'_> {
    /// Resolves one knob: the first valid value of pod, namespace; else `default`. Each invalid value
    /// met on the way becomes a warning naming knob, value and the value used instead.
    fn resolve<T>(
        &self,
        knob: Knob,
        report: &mut Report,
        parse: impl Fn(&str) -> Result<T, String>,
        default: T,
        show: impl Fn(&T) -> String,
    ) -> (T, Source) {
        let key = knob.annotation();
        let mut rejected = Vec::new();
        let mut chosen = None;
        for (source, map) in [(Source::Pod, self.pod), (Source::Namespace, self.namespace)] {
            let Some(raw) = map.and_then(|m| m.get(key)) else {
                continue;
            };
            match parse(raw) {
                Ok(value) => {
                    chosen = Some((value, source));
                    break;
                }
                Err(reason) => rejected.push((source, raw, reason)),
            }
        }
        let (value, source) = chosen.unwrap_or((default, Source::Default));
        for (from, raw, reason) in rejected {
            report.invalid(
                knob,
                format!(
                    "invalid {key}={} on {}: {reason}; using {:?} from {}",
                    show_value(raw),
                    from.describe(),
                    show(&value),
                    source.describe(),
                ),
            );
        }
        (value, source)
    }
}

/// Annotation values are user input: quote, escape and shorten them before echoing them in a warning
/// (the apiserver may truncate warnings over 256 characters).
fn show_value(raw: &str) -> String {
    const MAX: usize = 32;
    if raw.chars().count() > MAX {
        let head: String = raw.chars().take(MAX).collect();
        format!("{head:?}...")
    } else {
        format!("{raw:?}")
    }
}

fn parse_request(raw: &str) -> Result<Quantity, String> {
    raw.parse::<Quantity>()
        .map_err(|e| format!("not a Kubernetes quantity ({e})"))
}

fn parse_limit(raw: &str) -> Result<Option<Quantity>, String> {
    let q = parse_request(raw)?;
    if q.is_zero() {
        return Err("a limit must be greater than zero".to_owned());
    }
    Ok(Some(q))
}

fn show_limit(limit: &Option<Quantity>) -> String {
    limit
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string)
}

fn parse_enum<T: FromStr<Err = UnknownValue>>(raw: &str) -> Result<T, String> {
    raw.parse::<T>().map_err(|e| e.to_string())
}

/// Resolves every knob for one pod.
pub(crate) fn resolve(
    annotations: &Annotations<'_>,
    fallbacks: &Fallbacks<'_>,
    report: &mut Report,
) -> Knobs {
    let d = fallbacks.defaults;
    let (image, _) = annotations.resolve(
        Knob::Image,
        report,
        |raw| {
            validate_image(raw)
                .map(|()| raw.to_owned())
                .map_err(|e| format!("not an image reference ({e})"))
        },
        fallbacks.image.to_owned(),
        Clone::clone,
    );
    let (cpu_request, cpu_request_src) = annotations.resolve(
        Knob::CpuRequest,
        report,
        parse_request,
        d.cpu_request.clone(),
        ToString::to_string,
    );
    let (cpu_limit, cpu_limit_src) = annotations.resolve(
        Knob::CpuLimit,
        report,
        parse_limit,
        d.cpu_limit.clone(),
        show_limit,
    );
    let (memory_request, memory_request_src) = annotations.resolve(
        Knob::MemoryRequest,
        report,
        parse_request,
        d.memory_request.clone(),
        ToString::to_string,
    );
    let (memory_limit, memory_limit_src) = annotations.resolve(
        Knob::MemoryLimit,
        report,
        parse_limit,
        d.memory_limit.clone(),
        show_limit,
    );
    let (cpu_request, cpu_limit) = reconcile(
        report,
        (Knob::CpuRequest, cpu_request, cpu_request_src),
        (Knob::CpuLimit, cpu_limit, cpu_limit_src),
    );
    let (memory_request, memory_limit) = reconcile(
        report,
        (Knob::MemoryRequest, memory_request, memory_request_src),
        (Knob::MemoryLimit, memory_limit, memory_limit_src),
    );
    let (log_level, _) = annotations.resolve(
        Knob::LogLevel,
        report,
        parse_enum,
        d.log_level,
        ToString::to_string,
    );
    let (native_sidecar, _) = annotations.resolve(
        Knob::NativeSidecar,
        report,
        |raw| match raw {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("expected true or false".to_owned()),
        },
        fallbacks.native_sidecar,
        ToString::to_string,
    );
    let (redirect, _) = annotations.resolve(
        Knob::Redirect,
        report,
        parse_enum,
        d.redirect,
        ToString::to_string,
    );
    let (env, _) = annotations.resolve(Knob::Env, report, parse_enum, d.env, ToString::to_string);
    let (fs, _) = annotations.resolve(Knob::Fs, report, parse_enum, d.fs, ToString::to_string);
    let (target_container, _) = annotations.resolve(
        Knob::TargetContainer,
        report,
        |raw| {
            if raw != super::AGENT_CONTAINER_NAME && fallbacks.containers.contains(&raw) {
                Ok(raw.to_owned())
            } else {
                Err("no such container in the pod".to_owned())
            }
        },
        fallbacks.auto_target.to_owned(),
        Clone::clone,
    );
    Knobs {
        image,
        cpu_request,
        cpu_limit,
        memory_request,
        memory_limit,
        log_level,
        native_sidecar,
        redirect,
        env,
        fs,
        target_container,
    }
}

/// Pod Security Admission rejects, in `baseline` and `restricted` namespaces, a container adding
/// NET_ADMIN or SYS_PTRACE; a rejected pod is a broken deploy, so those knobs fall back to modes
/// that need no capability. Without a capability the agent runs as non-root with seccomp
/// RuntimeDefault and no privilege escalation, which `restricted` also demands. An unknown level is
/// treated like `restricted`, as Pod Security Admission does.
pub(crate) fn fit_pod_security(knobs: &mut Knobs, level: &str, warnings: &mut Vec<String>) {
    if level == "privileged" {
        return;
    }
    let mut fall_back = |knob: Knob, capability: &str, from: &str, to: &str| {
        warnings.push(format!(
            "the namespace enforces Pod Security {level:?}, which forbids {capability}: {} falls back from {from} to {to}",
            knob.name()
        ));
    };
    if knobs.redirect == Redirect::Iptables {
        fall_back(Knob::Redirect, "NET_ADMIN", "iptables", "off");
        knobs.redirect = Redirect::Off;
    }
    if knobs.env == EnvMode::Proc {
        fall_back(Knob::Env, "SYS_PTRACE", "proc", "spec");
        knobs.env = EnvMode::Spec;
    }
    if knobs.fs == FsMode::Proc {
        fall_back(Knob::Fs, "SYS_PTRACE", "proc", "volumes");
        knobs.fs = FsMode::Volumes;
    }
}

/// The apiserver refuses a request above its limit, which would break the deploy. The value from the
/// more specific source wins and the other one is moved to it; on a tie (both from the same level)
/// the limit wins. An annotation value overridden this way counts as an invalid knob.
fn reconcile(
    report: &mut Report,
    (req_knob, request, req_src): (Knob, Quantity, Source),
    (lim_knob, limit, lim_src): (Knob, Option<Quantity>, Source),
) -> (Quantity, Option<Quantity>) {
    let Some(limit) = limit else {
        return (request, None);
    };
    if request <= limit {
        return (request, Some(limit));
    }
    let (adjusted, adjusted_src, action) = if req_src > lim_src {
        (lim_knob, lim_src, "the limit is raised to the request")
    } else {
        (req_knob, req_src, "the request is lowered to the limit")
    };
    let warning = format!(
        "{}={:?} from {} is above {}={:?} from {}; {action}",
        req_knob.name(),
        request.to_string(),
        req_src.describe(),
        lim_knob.name(),
        limit.to_string(),
        lim_src.describe(),
    );
    if adjusted_src == Source::Default {
        report.warnings.push(warning);
    } else {
        report.invalid(adjusted, warning);
    }
    let value = if adjusted == lim_knob { request } else { limit };
    (value.clone(), Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::patch::KNOB_PREFIX;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{KNOB_PREFIX}{k}"), (*v).to_owned()))
            .collect()
    }

    fn run(pod: &[(&str, &str)], ns: &[(&str, &str)]) -> (Knobs, Report) {
        let (pod, ns) = (ann(pod), ann(ns));
        let defaults = AgentDefaults::default();
        let fallbacks = Fallbacks {
            defaults: &defaults,
            image: "ghcr.io/x/agent:1",
            native_sidecar: true,
            containers: &["app", "istio-proxy"],
            auto_target: "app",
        };
        let mut report = Report::default();
        let knobs = resolve(
            &Annotations {
                pod: Some(&pod),
                namespace: Some(&ns),
            },
            &fallbacks,
            &mut report,
        );
        (knobs, report)
    }

    #[test]
    fn enums_round_trip() {
        for r in [Redirect::Iptables, Redirect::PortSwap, Redirect::Off] {
            assert_eq!(r.to_string().parse::<Redirect>().unwrap(), r);
        }
        assert_eq!("port-swap".parse::<Redirect>().unwrap(), Redirect::PortSwap);
        assert!("PortSwap".parse::<Redirect>().is_err());
        assert!("Iptables".parse::<Redirect>().is_err());
        assert_eq!("proc".parse::<EnvMode>().unwrap(), EnvMode::Proc);
        assert_eq!("volumes".parse::<FsMode>().unwrap(), FsMode::Volumes);
        assert_eq!("warn".parse::<LogLevel>().unwrap(), LogLevel::Warn);
        assert!("info,hyper=off".parse::<LogLevel>().is_err());
        assert_eq!(
            "x".parse::<FsMode>().unwrap_err().to_string(),
            "expected one of volumes|proc|off"
        );
    }

    #[test]
    fn defaults_match_injection_md() {
        let d = AgentDefaults::default();
        assert_eq!(d.cpu_request.as_str(), "5m");
        assert_eq!(d.memory_request.as_str(), "16Mi");
        assert_eq!(d.memory_limit.as_ref().map(Quantity::as_str), Some("64Mi"));
        assert!(d.cpu_limit.is_none());
        assert_eq!(
            (d.log_level, d.redirect, d.env, d.fs),
            (
                LogLevel::Info,
                Redirect::Iptables,
                EnvMode::Spec,
                FsMode::Volumes
            )
        );
        d.validate().unwrap();
        let bad = AgentDefaults {
            memory_request: "1Gi".parse().unwrap(),
            ..AgentDefaults::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(DefaultsError::RequestAboveLimit { .. })
        ));
    }

    #[test]
    fn every_knob_is_recorded_in_the_status() {
        let (k, _) = run(&[("cpu-limit", "1")], &[]);
        let names: Vec<&str> = k.sorted_values().map(|(name, _)| name).collect();
        assert!(names.is_sorted(), "{names:?}");
        for knob in Knob::ALL {
            assert!(names.contains(&knob.name()), "{}", knob.name());
            assert_eq!(knob.annotation(), format!("{KNOB_PREFIX}{}", knob.name()));
        }
        assert_eq!(names.len(), Knob::ALL.len());
    }

    #[test]
    fn pod_overrides_namespace_overrides_default() {
        let (k, r) = run(
            &[("log-level", "debug")],
            &[("log-level", "warn"), ("redirect", "off")],
        );
        assert_eq!(k.log_level, LogLevel::Debug);
        assert_eq!(k.redirect, Redirect::Off);
        assert_eq!(k.env, EnvMode::Spec);
        assert!(r.warnings.is_empty() && r.invalid_knobs.is_empty());
    }

    #[test]
    fn invalid_pod_value_falls_back_to_namespace_then_default() {
        let (k, r) = run(&[("cpu-request", "lots")], &[("cpu-request", "20m")]);
        assert_eq!(k.cpu_request.as_str(), "20m");
        assert_eq!(r.invalid_knobs, vec!["cpu-request"]);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("\"lots\""), "{}", r.warnings[0]);
        assert!(
            r.warnings[0].contains("from the namespace"),
            "{}",
            r.warnings[0]
        );

        let (k, r) = run(&[("fs", "nfs")], &[("fs", "zfs")]);
        assert_eq!(k.fs, FsMode::Volumes);
        assert_eq!(r.invalid_knobs, vec!["fs"]);
        assert_eq!(r.warnings.len(), 2);
        assert!(
            r.warnings[1].contains("operator default"),
            "{}",
            r.warnings[1]
        );
    }

    #[test]
    fn target_container_must_exist() {
        let (k, r) = run(&[("target-container", "nope")], &[]);
        assert_eq!(k.target_container, "app");
        assert_eq!(r.invalid_knobs, vec!["target-container"]);
        let (k, _) = run(&[("target-container", "istio-proxy")], &[]);
        assert_eq!(k.target_container, "istio-proxy");
    }

    #[test]
    fn zero_limit_is_invalid() {
        let (k, r) = run(&[("memory-limit", "0")], &[]);
        assert_eq!(k.memory_limit.unwrap().as_str(), "64Mi");
        assert_eq!(r.invalid_knobs, vec!["memory-limit"]);
    }

    #[test]
    fn request_above_limit_is_reconciled() {
        // An explicit request above the default limit raises the limit: no annotation is dropped.
        let (k, r) = run(&[("memory-request", "128Mi")], &[]);
        assert_eq!(k.memory_request.as_str(), "128Mi");
        assert_eq!(k.memory_limit.unwrap().as_str(), "128Mi");
        assert!(r.invalid_knobs.is_empty());
        assert_eq!(r.warnings.len(), 1);
        // Both on the pod: the limit wins, the request annotation is reported.
        let (k, r) = run(&[("cpu-request", "2"), ("cpu-limit", "500m")], &[]);
        assert_eq!(k.cpu_request.as_str(), "500m");
        assert_eq!(k.cpu_limit.unwrap().as_str(), "500m");
        assert_eq!(r.invalid_knobs, vec!["cpu-request"]);
        // The namespace sets a small limit, the pod a big request: the pod wins.
        let (k, r) = run(&[("cpu-request", "2")], &[("cpu-limit", "1")]);
        assert_eq!(k.cpu_limit.unwrap().as_str(), "2");
        assert_eq!(r.invalid_knobs, vec!["cpu-limit"]);
    }

    #[test]
    fn pod_security_drops_capabilities() {
        let proc_everything = [("env", "proc"), ("fs", "proc")];
        for level in ["baseline", "restricted", "Restricted", "v1.30"] {
            let (mut k, _) = run(&proc_everything, &[]);
            let mut warnings = Vec::new();
            fit_pod_security(&mut k, level, &mut warnings);
            assert_eq!(
                (k.redirect, k.env, k.fs),
                (Redirect::Off, EnvMode::Spec, FsMode::Volumes)
            );
            assert_eq!(warnings.len(), 3, "{level}: {warnings:?}");
        }
        let (mut k, _) = run(&proc_everything, &[]);
        let mut warnings = Vec::new();
        fit_pod_security(&mut k, "privileged", &mut warnings);
        assert_eq!(
            (k.redirect, k.env, k.fs),
            (Redirect::Iptables, EnvMode::Proc, FsMode::Proc)
        );
        assert!(warnings.is_empty());
        // port-swap needs no capability and is kept.
        let (mut k, _) = run(&[("redirect", "port-swap")], &[]);
        fit_pod_security(&mut k, "restricted", &mut warnings);
        assert_eq!(k.redirect, Redirect::PortSwap);
        assert!(warnings.is_empty());
    }

    #[test]
    fn long_values_are_shortened_in_warnings() {
        let long = "x".repeat(1000);
        let (_, r) = run(&[("image", &long)], &[]);
        assert!(r.warnings[0].len() < 256, "{}", r.warnings[0]);
        let (_, r) = run(&[("log-level", "info\nerror")], &[]);
        assert!(!r.warnings[0].contains('\n'));
    }

    #[test]
    fn image_references() {
        for ok in [
            "busybox",
            "ghcr.io/mirrord-operator/mirrord-operator:0.1.0",
            "localhost:5000/agent",
            "registry.internal:443/team/agent:v1.2_rc-1",
            "[fd00::1]:5000/agent:1",
            "agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "reg.io/a/b:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "My-Registry.io/agent",
        ] {
            assert_eq!(validate_image(ok), Ok(()), "{ok}");
        }
        for (bad, err) in [
            ("", ImageError::Empty),
            ("ghcr.io/agent :1", ImageError::BadCharacter),
            ("agent\t", ImageError::BadCharacter),
            ("ghcr.io/Agent", ImageError::BadName),
            ("ghcr.io//agent", ImageError::BadName),
            ("-agent", ImageError::BadName),
            ("agent:", ImageError::BadTag),
            ("agent:.x", ImageError::BadTag),
            ("agent@sha256:xyz", ImageError::BadDigest),
            ("agent@", ImageError::BadDigest),
            ("host:port/agent", ImageError::BadName),
        ] {
            assert_eq!(validate_image(bad), Err(err), "{bad}");
        }
    }
}
