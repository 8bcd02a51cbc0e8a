//! Finding the target container's main process (env=proc, fs=proc without `--target-pid`).
//!
//! In a pod with a shared PID namespace the agent sees every container's processes, and nothing
//! in `/proc` names a container. What does tell containers apart:
//!
//! * each container has its own cgroup and its own mount namespace, so `(cgroup, mount
//!   namespace)` groups processes by container; the agent's own group and that of PID 1 (the pod
//!   sandbox, `pause`) are never the target;
//! * a container's first process has its parent outside the container (the runtime's shim, which
//!   lives outside the pod's PID namespace: ppid 0), while everything it starts has a parent
//!   inside; processes that `kubectl exec` adds also have an outside parent but start later;
//! * the webhook knows every container's spec and passes a [`TargetMatch`]: for the target and
//!   for each other container, the declared env names (present in the main process's
//!   `environ`) and command/args (its `cmdline`). A candidate that looks more like another
//!   container than like the target is that container; of the rest, the one that looks like the
//!   target wins. A lone remaining candidate that matches nothing is accepted only when every
//!   other container was recognised, so a sidecar is never served while the target restarts.
//!
//! With `hostPID` the agent sees the whole node, so only cgroups that are siblings of the agent's
//! own (same parent: the pod's cgroup) are considered — never another pod's processes.
//!
//! [`choose`] is a pure function over a [`Process`] snapshot; [`snapshot`] reads one from a
//! `/proc`-like directory, so both are tested with a fake tree. [`Target`] caches the answer and
//! looks again when the process is gone (container restart).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{info, warn};

use super::env::parse_environ;
use crate::protocol::{ErrorKindInternal, RemoteIOError, ResponseError};

pub use crate::injection::{Fingerprint, TargetMatch, parse_match};

/// One process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// 0 when the parent is outside the reader's PID namespace.
    pub ppid: u32,
    /// `stat` field 3 (`Z`: zombie, `X`: dead).
    pub state: char,
    /// Clock ticks after boot; with the pid it identifies a process even if the pid is reused.
    pub start_time: u64,
    /// The unified (`0::`) cgroup path, else the first hierarchy's; `None` if unreadable.
    pub cgroup: Option<String>,
    /// `ns/mnt` link text (`mnt:[4026532441]`); `None` if not permitted (no SYS_PTRACE).
    pub mnt_ns: Option<String>,
    pub cmdline: Vec<String>,
}

/// Not a zombie or dead (whose `environ` reads empty and `root` is gone).
fn alive(state: char) -> bool {
    !matches!(state, 'Z' | 'X')
}

impl Process {
    fn container(&self) -> (Option<&str>, Option<&str>) {
        (self.cgroup.as_deref(), self.mnt_ns.as_deref())
    }
}

/// A found target: pid plus start time, so a dead target's reused pid is never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub pid: u32,
    pub start_time: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot read the process list: {0}")]
    Proc(String),
    #[error(
        "no target process: nothing runs outside the agent's own container, the pod sandbox and \
         the other containers (has the target container started? does the pod share its process \
         namespace?)"
    )]
    NoCandidate,
    #[error(
        "no process looks like the target container (none has its declared env names or \
         command/args): {}; set --target-pid (MIRRORD_AGENT_TARGET_PID) if it is one of them",
        .0.join(", ")
    )]
    NoMatch(Vec<String>),
    #[error(
        "the target process is ambiguous between {}; set --target-pid (MIRRORD_AGENT_TARGET_PID)",
        .0.join(", ")
    )]
    Ambiguous(Vec<String>),
}

impl DiscoveryError {
    /// The protocol error for a request that needs the target: ESRCH, with the reason as the
    /// error kind's text so the mirrord CLI shows it.
    pub fn to_response(&self) -> ResponseError {
        ResponseError::RemoteIO(RemoteIOError {
            raw_os_error: Some(libc::ESRCH),
            kind: ErrorKindInternal::Unknown(format!("mirrord-agent: {self}")),
        })
    }
}

/// `stat`: state, ppid and start time, read after the last `)` (the command name may hold any
/// byte, parentheses and spaces included).
pub fn parse_stat(stat: &str) -> Option<(char, u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 3 (state), 4 (ppid) and 22 (starttime) of proc(5), counted from 1.
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start_time))
}

/// `cgroup`: the unified hierarchy's path (`0::<path>`), else the first line's (v1 only hosts).
pub fn parse_cgroup(text: &str) -> Option<String> {
    let path = |line: &str| line.splitn(3, ':').nth(2).map(str::to_owned);
    text.lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| text.lines().next())
        .and_then(path)
}

/// `cmdline`: NUL-separated arguments (lossy: only compared, never sent).
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn read_stat(dir: &Path) -> Option<(char, u32, u64)> {
    parse_stat(&std::fs::read_to_string(dir.join("stat")).ok()?)
}

/// Reads one process; `None` when it vanished or its `stat` is unreadable.
pub fn read_process(proc_root: &Path, pid: u32) -> Option<Process> {
    let dir = proc_root.join(pid.to_string());
    let (state, ppid, start_time) = read_stat(&dir)?;
    Some(Process {
        pid,
        ppid,
        state,
        start_time,
        cgroup: std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|t| parse_cgroup(&t)),
        mnt_ns: std::fs::read_link(dir.join("ns/mnt"))
            .ok()
            .map(|l| l.to_string_lossy().into_owned()),
        cmdline: parse_cmdline(&std::fs::read(dir.join("cmdline")).unwrap_or_default()),
    })
}

/// The reader's own pid and every process under `proc_root`.
pub fn snapshot(proc_root: &Path) -> Result<(u32, Vec<Process>), DiscoveryError> {
    let self_link = proc_root.join("self");
    let own = std::fs::read_link(&self_link)
        .ok()
        .and_then(|l| l.to_str()?.parse().ok())
        .ok_or_else(|| DiscoveryError::Proc(format!("{} is not a pid", self_link.display())))?;
    let entries = std::fs::read_dir(proc_root)
        .map_err(|e| DiscoveryError::Proc(format!("{}: {e}", proc_root.display())))?;
    let processes = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|pid| read_process(proc_root, pid))
        .collect();
    Ok((own, processes))
}

/// Lexically normalized cgroup path components; `..` above the namespace root is kept (a
/// private cgroup namespace shows a sibling container as `/../<its cgroup>`).
fn cgroup_parts(path: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." && parts.last().is_some_and(|l| *l != "..") {
            parts.pop();
        } else {
            parts.push(part);
        }
    }
    parts
}

fn cgroup_parent(path: &str) -> Vec<&str> {
    let mut parts = cgroup_parts(path);
    match parts.last() {
        None | Some(&"..") => parts.push(".."),
        Some(_) => {
            parts.pop();
        }
    }
    parts
}

/// Whether two cgroups have the same parent (the pod's cgroup); unknown counts as yes, since
/// without cgroups only the PID namespace bounds what the agent sees.
fn same_pod(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => cgroup_parent(a) == cgroup_parent(b),
        _ => true,
    }
}

/// How well a process fits a fingerprint: declared env names present, then whether argv
/// matches. `(0, false)` is no match at all.
type Score = (usize, bool);

fn score(want: &Fingerprint, argv: &[String], env: &BTreeMap<String, String>) -> Score {
    let names = want.env_names.iter().filter(|n| env.contains_key(*n));
    (names.count(), argv_matches(want, argv))
}

/// `command` + `args` is all of argv; `args` alone is its end (the image's entrypoint comes
/// first). An element with a `$(VAR)` reference matches anything: the kubelet expanded it.
fn argv_matches(want: &Fingerprint, argv: &[String]) -> bool {
    let same = |w: &String, a: &String| w.contains("$(") || w == a;
    let all = |expected: &[&String], actual: &[String]| {
        expected.len() == actual.len() && expected.iter().zip(actual).all(|(w, a)| same(w, a))
    };
    if !want.command.is_empty() {
        let expected: Vec<&String> = want.command.iter().chain(&want.args).collect();
        all(&expected, argv)
    } else if !want.args.is_empty() && argv.len() > want.args.len() {
        let expected: Vec<&String> = want.args.iter().collect();
        all(&expected, &argv[argv.len() - want.args.len()..])
    } else {
        false
    }
}

/// Picks the target's main process from a snapshot (see the module docs for the rules).
/// `environ(pid)` is read only when the pod has other containers or several candidates.
pub fn choose(
    processes: &[Process],
    own_pid: u32,
    want: &TargetMatch,
    mut environ: impl FnMut(u32) -> Option<Vec<u8>>,
) -> Result<Found, DiscoveryError> {
    let by_pid: BTreeMap<u32, &Process> = processes.iter().map(|p| (p.pid, p)).collect();
    let own = by_pid
        .get(&own_pid)
        .ok_or_else(|| DiscoveryError::Proc(format!("own pid {own_pid} not listed")))?;
    let sandbox = by_pid.get(&1).map(|p| p.container());
    let mut containers: BTreeMap<(Option<&str>, Option<&str>), &Process> = BTreeMap::new();
    for &p in by_pid.values() {
        let key = p.container();
        let parent_inside = by_pid
            .get(&p.ppid)
            .is_some_and(|parent| parent.container() == key);
        if !alive(p.state)
            || parent_inside
            || key == own.container()
            || Some(key) == sandbox
            || !same_pod(own.cgroup.as_deref(), p.cgroup.as_deref())
        {
            continue;
        }
        // The container's first process; later ones with an outside parent are `exec`s.
        let main = containers.entry(key).or_insert(p);
        if (p.start_time, p.pid) < (main.start_time, main.pid) {
            *main = p;
        }
    }
    let found = |p: &Process| Found {
        pid: p.pid,
        start_time: p.start_time,
    };
    let candidates: Vec<&Process> = containers.into_values().collect();
    if let ([only], []) = (&candidates[..], &want.others[..]) {
        return Ok(found(only));
    }
    // Each candidate's score for the target; those that look more like another container are
    // that container (`recognised`).
    let mut ours: Vec<(Score, &Process)> = Vec::new();
    let mut recognised = 0;
    for p in candidates {
        let env = environ(p.pid)
            .map(|e| parse_environ(&e))
            .unwrap_or_default();
        let target = score(&want.target, &p.cmdline, &env);
        let other = want.others.iter().map(|o| score(o, &p.cmdline, &env)).max();
        if other.is_some_and(|o| o > target) {
            recognised += 1;
        } else {
            ours.push((target, p));
        }
    }
    let describe = |p: &Process| format!("pid {} ({})", p.pid, p.cmdline.join(" "));
    ours.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.pid.cmp(&b.1.pid)));
    match &ours[..] {
        [] => Err(DiscoveryError::NoCandidate),
        // Every other container is accounted for: what is left is the target.
        [(_, only)] if recognised >= want.others.len() => Ok(found(only)),
        [(first, best), rest @ ..]
            if *first > (0, false) && rest.first().is_none_or(|(second, _)| first > second) =>
        {
            Ok(found(best))
        }
        [(first, _), ..] if *first > (0, false) => Err(DiscoveryError::Ambiguous(
            ours.iter()
                .take_while(|(score, _)| score == first)
                .map(|(_, p)| describe(p))
                .collect(),
        )),
        _ => Err(DiscoveryError::NoMatch(
            ours.iter().map(|(_, p)| describe(p)).collect(),
        )),
    }
}

/// Snapshot plus [`choose`], reading `environ` from the same tree.
pub fn discover(proc_root: &Path, want: &TargetMatch) -> Result<Found, DiscoveryError> {
    let (own, processes) = snapshot(proc_root)?;
    choose(&processes, own, want, |pid| {
        std::fs::read(proc_root.join(pid.to_string()).join("environ")).ok()
    })
}

/// The target process for env=proc / fs=proc: `--target-pid` when given, else discovered on
/// first use and again whenever the last one is gone.
pub struct Target {
    explicit: Option<u32>,
    want: TargetMatch,
    proc_root: PathBuf,
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    found: Option<Found>,
    /// The last failure, logged once rather than on every request.
    error: Option<DiscoveryError>,
}

impl Target {
    pub fn new(explicit: Option<u32>, want: TargetMatch, proc_root: PathBuf) -> Self {
        Target {
            explicit,
            want,
            proc_root,
            last: Mutex::default(),
        }
    }

    /// `/proc/<pid>/<entry>` of the target as it is now.
    pub fn path(&self, entry: &str) -> Result<PathBuf, DiscoveryError> {
        Ok(self.proc_root.join(self.pid()?.to_string()).join(entry))
    }

    /// The target's pid: the explicit one, the last one found while it still runs, or a new
    /// discovery.
    pub fn pid(&self) -> Result<u32, DiscoveryError> {
        if let Some(pid) = self.explicit {
            return Ok(pid);
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // Still the same live process? (Its stat alone says so.)
        if let Some(found) = last.found
            && read_stat(&self.proc_root.join(found.pid.to_string()))
                .is_some_and(|(state, _, start)| start == found.start_time && alive(state))
        {
            return Ok(found.pid);
        }
        match discover(&self.proc_root, &self.want) {
            Ok(found) => {
                info!(pid = found.pid, "target process found");
                *last = Last {
                    found: Some(found),
                    error: None,
                };
                Ok(found.pid)
            }
            Err(e) => {
                if last.error.as_ref() != Some(&e) {
                    warn!(error = %e, "cannot find the target process");
                }
                *last = Last {
                    found: None,
                    error: Some(e.clone()),
                };
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn process(pid: u32, ppid: u32, start: u64, cgroup: &str, mnt: &str, cmd: &str) -> Process {
        Process {
            pid,
            ppid,
            state: 'S',
            start_time: start,
            cgroup: Some(cgroup.to_owned()),
            mnt_ns: Some(mnt.to_owned()),
            cmdline: cmd.split(' ').map(str::to_owned).collect(),
        }
    }

    /// A shared-PID pod as a private cgroup namespace shows it to the agent (pid 30): the
    /// sandbox, the app (with a child and a later `kubectl exec`), a proxy sidecar.
    fn pod() -> Vec<Process> {
        vec![
            process(1, 0, 100, "/../sandbox", "mnt:[1]", "/pause"),
            process(7, 0, 200, "/../app", "mnt:[2]", "/app/server --port 8080"),
            process(9, 7, 210, "/../app", "mnt:[2]", "/app/worker"),
            process(
                12,
                0,
                220,
                "/../proxy",
                "mnt:[3]",
                "envoy -c /etc/envoy.yaml",
            ),
            process(30, 0, 150, "/", "mnt:[4]", "mirrord-operator agent"),
            process(44, 0, 900, "/../app", "mnt:[2]", "sh"),
        ]
    }

    fn without_app(procs: Vec<Process>) -> Vec<Process> {
        procs
            .into_iter()
            .filter(|p| p.cgroup.as_deref() != Some("/../app"))
            .collect()
    }

    fn env_of(pid: u32) -> Option<Vec<u8>> {
        match pid {
            7 => Some(b"PORT=8080\0DB_URL=x\0HOSTNAME=p\0".to_vec()),
            12 => Some(b"ENVOY_UID=0\0HOSTNAME=p\0".to_vec()),
            _ => Some(Vec::new()),
        }
    }

    fn fp(env: &[&str], command: &[&str], args: &[&str]) -> Fingerprint {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Fingerprint {
            command: strings(command),
            args: strings(args),
            env_names: env.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn want(target: Fingerprint, others: &[Fingerprint]) -> TargetMatch {
        TargetMatch {
            target,
            others: others.to_vec(),
        }
    }

    #[test]
    fn stat_cgroup_and_cmdline_parsing() {
        let stat = "42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1 2";
        assert_eq!(parse_stat(stat), Some(('S', 7, 12345)));
        assert_eq!(parse_stat("42 (x) S 1"), None, "truncated");
        assert_eq!(parse_stat("garbage"), None);
        let v1v2 = "12:memory:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n";
        assert_eq!(parse_cgroup(v1v2).as_deref(), Some("/kubepods/pod1/c1"));
        assert_eq!(
            parse_cgroup("3:pids:/x\n2:cpu:/x\n").as_deref(),
            Some("/x"),
            "v1 only: first line"
        );
        assert_eq!(parse_cgroup(""), None);
        assert_eq!(parse_cmdline(b"a\0b c\0\0"), vec!["a", "b c", ""]);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn cgroup_siblings() {
        let s = |a: &str, b: &str| same_pod(Some(a), Some(b));
        assert!(
            s("/", "/../app"),
            "private cgroupns: a sibling shows as /../x"
        );
        assert!(!s("/", "/../../other-pod/x"));
        assert!(!s("/", "/child"));
        assert!(s("/kubepods/pod1/agent", "/kubepods/pod1/app"));
        assert!(!s("/kubepods/pod1/agent", "/kubepods/pod2/app"));
        assert!(
            s("/", "/"),
            "no cgroups per container: the mount namespace decides"
        );
        assert!(s("/a/./b/../c", "/a/d"));
        assert!(same_pod(None, Some("/x")));
    }

    #[test]
    fn the_only_container_needs_no_match() {
        let procs: Vec<Process> = pod().into_iter().filter(|p| p.pid != 12).collect();
        let alone = want(fp(&["NOT_SET"], &["nginx"], &[]), &[]);
        let found = choose(&procs, 30, &alone, |_| panic!("nothing to rank"));
        assert_eq!(
            found,
            Ok(Found {
                pid: 7,
                start_time: 200
            }),
            "the first process of the app, not its child nor the later exec"
        );
    }

    #[test]
    fn other_containers_are_recognised_by_their_fingerprints() {
        let proxy = fp(&["ENVOY_UID"], &[], &[]);
        // The target declares nothing; the proxy is recognised, so the app is what is left.
        let bare = want(Fingerprint::default(), std::slice::from_ref(&proxy));
        assert_eq!(choose(&pod(), 30, &bare, env_of).map(|f| f.pid), Ok(7));
        // While the app restarts the proxy is never served.
        assert_eq!(
            choose(&without_app(pod()), 30, &bare, env_of),
            Err(DiscoveryError::NoCandidate)
        );
        // A proxy without a fingerprint cannot be recognised: a lone candidate must match.
        let unknown = want(fp(&["PORT"], &[], &[]), &[Fingerprint::default()]);
        assert_eq!(choose(&pod(), 30, &unknown, env_of).map(|f| f.pid), Ok(7));
        assert_eq!(
            choose(&without_app(pod()), 30, &unknown, env_of),
            Err(DiscoveryError::NoMatch(vec![
                "pid 12 (envoy -c /etc/envoy.yaml)".into()
            ]))
        );
        let nothing = want(Fingerprint::default(), &[Fingerprint::default()]);
        assert!(
            matches!(choose(&pod(), 30, &nothing, env_of), Err(DiscoveryError::NoMatch(v)) if v.len() == 2),
            "nothing to tell them apart"
        );
    }

    #[test]
    fn candidates_are_ranked_by_env_names_then_argv() {
        let procs = pod();
        let pick = |target: Fingerprint| {
            choose(&procs, 30, &want(target, &[Fingerprint::default()]), env_of).map(|f| f.pid)
        };
        assert_eq!(pick(fp(&["PORT", "DB_URL"], &[], &[])), Ok(7));
        assert_eq!(pick(fp(&["ENVOY_UID"], &[], &[])), Ok(12));
        assert_eq!(pick(fp(&[], &[], &["--port", "8080"])), Ok(7));
        assert_eq!(pick(fp(&[], &["envoy"], &["-c", "$(CONFIG)"])), Ok(12));
        assert!(
            matches!(
                pick(fp(&[], &["envoy"], &["-c"])),
                Err(DiscoveryError::NoMatch(_))
            ),
            "command must be all of argv"
        );
        assert_eq!(
            pick(fp(&["HOSTNAME"], &[], &[])),
            Err(DiscoveryError::Ambiguous(vec![
                "pid 7 (/app/server --port 8080)".into(),
                "pid 12 (envoy -c /etc/envoy.yaml)".into()
            ]))
        );
        // More matching env names beat an argv match.
        assert_eq!(pick(fp(&["PORT", "DB_URL"], &["envoy"], &[])), Ok(7));
    }

    #[test]
    fn own_container_sandbox_other_pods_and_zombies_are_never_chosen() {
        let mut zombie = process(60, 0, 400, "/../app", "mnt:[2]", "");
        zombie.state = 'Z';
        let procs = vec![
            process(1, 0, 100, "/../sandbox", "mnt:[1]", "/pause"),
            process(30, 0, 150, "/", "mnt:[4]", "mirrord-operator agent"),
            process(31, 0, 160, "/", "mnt:[4]", "exec in the agent container"),
            process(
                50,
                0,
                300,
                "/../../pod2/app",
                "mnt:[9]",
                "another pod (hostPID)",
            ),
            zombie,
        ];
        assert_eq!(
            choose(&procs, 30, &TargetMatch::default(), env_of),
            Err(DiscoveryError::NoCandidate)
        );
        assert_eq!(
            choose(&procs, 999, &TargetMatch::default(), env_of),
            Err(DiscoveryError::Proc("own pid 999 not listed".into()))
        );
    }

    #[test]
    fn mount_namespaces_separate_containers_without_cgroups() {
        let procs = vec![
            process(1, 0, 1, "/", "mnt:[1]", "pause"),
            process(5, 0, 5, "/", "mnt:[5]", "agent"),
            process(6, 0, 6, "/", "mnt:[6]", "app"),
        ];
        assert_eq!(
            choose(&procs, 5, &TargetMatch::default(), env_of).map(|f| f.pid),
            Ok(6)
        );
    }

    #[test]
    fn match_json() {
        let m = parse_match(
            r#"{"target":{"command":["/app"],"envNames":["A","B"]},"others":[{}],"future":1}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            want(fp(&["A", "B"], &["/app"], &[]), &[Fingerprint::default()])
        );
        assert_eq!(parse_match("{}").unwrap(), TargetMatch::default());
        assert!(parse_match("[1]").is_err());
        assert!(parse_match(r#"{"target":{"args":"x"}}"#).is_err());
    }

    /// A fake `/proc` in a tempdir: `discover` and `Target` read it like the real one.
    struct FakeProc(tempfile::TempDir);

    impl FakeProc {
        fn new(own: u32) -> FakeProc {
            let dir = tempfile::tempdir().unwrap();
            symlink(own.to_string(), dir.path().join("self")).unwrap();
            FakeProc(dir)
        }

        fn add(&self, pid: u32, ppid: u32, start: u64, mnt: &str, cmd: &str, env: &str) {
            let dir = self.0.path().join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            let stat =
                format!("{pid} ({cmd}) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0");
            std::fs::write(dir.join("stat"), stat).unwrap();
            std::fs::write(dir.join("cgroup"), "0::/\n").unwrap();
            std::fs::write(dir.join("cmdline"), cmd.replace(' ', "\0") + "\0").unwrap();
            std::fs::write(dir.join("environ"), env.replace(' ', "\0")).unwrap();
            symlink(mnt, dir.join("ns/mnt")).unwrap();
        }

        fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.0.path().join(pid.to_string())).unwrap();
        }
    }

    #[test]
    fn discovery_reads_a_proc_tree_and_follows_a_restart() {
        let proc = FakeProc::new(3);
        proc.add(1, 0, 1, "mnt:[1]", "pause", "");
        proc.add(3, 0, 3, "mnt:[3]", "agent", "");
        proc.add(4, 0, 4, "mnt:[4]", "app", "APP=1");
        proc.add(5, 0, 5, "mnt:[5]", "sidecar", "SIDE=1");
        std::fs::create_dir(proc.0.path().join("not-a-pid")).unwrap();
        let matcher = want(fp(&["APP"], &[], &[]), &[fp(&["SIDE"], &[], &[])]);
        let target = Target::new(None, matcher, proc.0.path().to_owned());
        assert_eq!(target.pid(), Ok(4));
        assert_eq!(target.path("environ"), Ok(proc.0.path().join("4/environ")));

        // The app restarts: pid 4 is gone, the new one is found.
        proc.remove(4);
        proc.add(8, 0, 8, "mnt:[8]", "app", "APP=2");
        assert_eq!(target.pid(), Ok(8));
        // The app is gone and its pid reused by a child of the sidecar: not the cached target,
        // and the sidecar is not the app.
        proc.remove(8);
        proc.add(8, 5, 9, "mnt:[5]", "sidecar-child", "APP=3");
        assert_eq!(target.pid(), Err(DiscoveryError::NoCandidate));
        assert!(
            matches!(target.pid().unwrap_err().to_response(), ResponseError::RemoteIO(RemoteIOError { raw_os_error: Some(3), kind: ErrorKindInternal::Unknown(text) }) if text.contains("no target process"))
        );

        let explicit = Target::new(Some(77), TargetMatch::default(), proc.0.path().to_owned());
        assert_eq!(explicit.pid(), Ok(77), "--target-pid wins");
        let broken = Target::new(None, TargetMatch::default(), proc.0.path().join("none"));
        assert!(matches!(broken.pid(), Err(DiscoveryError::Proc(_))));
    }
}
