//! The target's environment and the GetEnvVars selection rules (spec §5.6).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::sync::Arc;

use super::target::Target;
use crate::injection::{EnvMode, TARGET_ENV_PREFIX};
use crate::protocol::ResponseError;

/// Names the reference agent never returns, whatever the client asks for.
const ALWAYS_EXCLUDED: &[&str] = &[
    "BUNDLER_ORIG_BUNDLER_ORIG_MANPATH",
    "BUNDLER_ORIG_BUNDLER_VERSION",
    "BUNDLER_ORIG_BUNDLE_BIN_PATH",
    "BUNDLER_ORIG_BUNDLE_GEMFILE",
    "BUNDLER_ORIG_GEM_HOME",
    "BUNDLER_ORIG_MANPATH",
    "BUNDLER_ORIG_PATH",
    "BUNDLER_ORIG_RB_USER_INSTALL",
    "BUNDLER_ORIG_RUBYLIB",
    "BUNDLER_ORIG_RUBYOPT",
    "BUNDLER_VERSION",
    "BUNDLE_APP_CONFIG",
    "BUNDLE_BIN_PATH",
    "BUNDLE_FORCE_RUBY_PLATFORM",
    "BUNDLE_GEMFILE",
    "BUNDLE_GEM_PATH",
    "BUNDLE_PATH",
    "BUNDLE_WITHOUT",
    "CATALINA_HOME",
    "CLASSPATH",
    "DOTNET_EnableDiagnostics",
    "DOTNET_STARTUP_HOOKS",
    "GEM_HOME",
    "GEM_PATH",
    "GOPATH",
    "GOMODCACHE",
    "HOME",
    "HOMEPATH",
    "JAVA_EXE",
    "JAVA_HOME",
    "JAVA_TOOL_OPTIONS",
    "PATH",
    "PWD",
    "PYTHONPATH",
    "RUBYLIB",
    "RUBYOPT",
    "MIRRORD_LOG",
    "RUST_LOG",
    "_JAVA_OPTIONS",
];

/// Whole-name wildcard match: `*` is any run (also empty), `?` exactly one character,
/// case-sensitive, no escapes.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Greedy matching with backtracking to the last `*`: linear in practice, no recursion.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Applies the request's include (`select`, `*` when empty) and exclude (`filter` plus the fixed
/// list) patterns.
pub fn select_env(
    env: &BTreeMap<String, String>,
    filter: &HashSet<String>,
    select: &HashSet<String>,
) -> HashMap<String, String> {
    let included = |name: &str| select.is_empty() || select.iter().any(|p| wildcard_match(p, name));
    let excluded = |name: &str| {
        ALWAYS_EXCLUDED.contains(&name) || filter.iter().any(|p| wildcard_match(p, name))
    };
    env.iter()
        .filter(|(name, _)| included(name) && !excluded(name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The declared env the webhook copied onto the agent: variables named `MIRRORD_TARGET_ENV_<X>`
/// become `<X>`. Non-UTF-8 entries cannot travel in the protocol and are skipped.
pub fn from_prefixed<I>(vars: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    vars.into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(TARGET_ENV_PREFIX)?;
            (!name.is_empty()).then(|| (name.to_owned(), v))
        })
        .collect()
}

/// Parses an `environ` file: NUL-separated `KEY=VALUE`; entries without `=` are ignored and the
/// value is everything after the first `=`.
pub fn parse_environ(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|&b| b == b'=')?;
            let key = String::from_utf8(entry[..eq].to_vec()).ok()?;
            let value = String::from_utf8(entry[eq + 1..].to_vec()).ok()?;
            (!key.is_empty()).then_some((key, value))
        })
        .collect()
}

/// Where GetEnvVars reads from. `Spec` is captured once at start (the agent's own env never
/// changes); `Proc` is re-read per request because the target may restart.
#[derive(Clone)]
pub enum EnvSource {
    Spec(BTreeMap<String, String>),
    Proc(Arc<Target>),
    Off,
}

impl EnvSource {
    pub fn new(mode: EnvMode, target: &Arc<Target>) -> Self {
        match mode {
            EnvMode::Spec => EnvSource::Spec(from_prefixed(std::env::vars_os())),
            EnvMode::Proc => EnvSource::Proc(target.clone()),
            EnvMode::Off => EnvSource::Off,
        }
    }

    pub fn read(&self) -> Result<BTreeMap<String, String>, ResponseError> {
        match self {
            EnvSource::Spec(env) => Ok(env.clone()),
            EnvSource::Proc(target) => {
                let path = target.path("environ").map_err(|e| e.to_response())?;
                Ok(parse_environ(&std::fs::read(path)?))
            }
            EnvSource::Off => Ok(BTreeMap::new()),
        }
    }
}

/// Builds the `OsString` pairs of a test environment.
#[cfg(test)]
fn os_pairs(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(*k), OsString::from(*v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> HashSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*", "ANY"));
        assert!(wildcard_match("DB_*", "DB_HOST"));
        assert!(wildcard_match("DB_*", "DB_"));
        assert!(!wildcard_match("DB_*", "XDB_HOST"));
        assert!(wildcard_match("D?_HOST", "DB_HOST"));
        assert!(!wildcard_match("D?_HOST", "D_HOST"));
        assert!(wildcard_match("*_URL", "REDIS_URL"));
        assert!(!wildcard_match("*_URL", "REDIS_URL_2"));
        assert!(wildcard_match("A*B*C", "AxxBxxBxC"));
        assert!(!wildcard_match("A*B*C", "AxxBxxBx"));
        assert!(!wildcard_match("db_*", "DB_HOST"), "case-sensitive");
        assert!(!wildcard_match("", "X"));
        assert!(wildcard_match("", ""));
    }

    #[test]
    fn select_and_filter() {
        let env: BTreeMap<String, String> = [
            ("DB_HOST", "db"),
            ("DB_PASS", "s3cret"),
            ("API_URL", "http://api"),
            ("PATH", "/bin"),
            ("HOME", "/root"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();

        let all = select_env(&env, &set(&[]), &set(&[]));
        assert_eq!(all.len(), 3, "PATH and HOME are always excluded: {all:?}");

        let star = select_env(&env, &set(&[]), &set(&["*"]));
        assert_eq!(star, all);

        let db = select_env(&env, &set(&["*_PASS"]), &set(&["DB_*"]));
        assert_eq!(db.len(), 1);
        assert_eq!(db["DB_HOST"], "db");

        let explicit_path = select_env(&env, &set(&[]), &set(&["PATH"]));
        assert!(explicit_path.is_empty(), "fixed exclusions win over select");
    }

    #[test]
    fn prefixed_env_is_stripped() {
        let env = from_prefixed(os_pairs(&[
            ("MIRRORD_TARGET_ENV_DB_HOST", "db"),
            ("MIRRORD_TARGET_ENV_", "ignored"),
            ("MIRRORD_AGENT_POD_NAME", "p"),
            ("OTHER", "x"),
        ]));
        assert_eq!(env.len(), 1);
        assert_eq!(env["DB_HOST"], "db");
    }

    #[test]
    fn environ_parsing() {
        let env = parse_environ(b"A=1\0B=x=y\0NOEQ\0=novalue\0C=\0");
        assert_eq!(env.len(), 3);
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["C"], "");
    }

    #[test]
    fn proc_source_reads_a_real_environ_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("7")).expect("mkdir");
        std::fs::write(dir.path().join("7/environ"), b"K=v\0").expect("write");
        let target = |pid| {
            Arc::new(Target::new(
                Some(pid),
                Default::default(),
                dir.path().into(),
            ))
        };
        let env = EnvSource::Proc(target(7)).read().expect("read");
        assert_eq!(env["K"], "v");
        assert!(
            EnvSource::Proc(target(8)).read().is_err(),
            "a missing environ is an error, not an empty env"
        );
    }
}
