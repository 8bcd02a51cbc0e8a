//! Which env variables of a target container may carry a Secret's values, from the container spec
//! alone: the coordinator never reads a Secret (its RBAC has no `get` on Secrets), so it cannot
//! know an `envFrom` Secret's keys. Kubernetes builds the env from the `envFrom` sources in order
//! (each key behind the source's prefix, a later source overriding an earlier one), then the
//! explicit `env` entries in order (overriding everything before; `$(NAME)` in a value expands a
//! variable defined before it). So a variable the agent reports that no explicit `env` entry
//! defines may come from any `envFrom` Secret whose prefix it starts with: when the user may not
//! `get` such a Secret the variable is hidden — conservatively, since it may as well come from a
//! ConfigMap with the same prefix. An explicit entry is hidden when it reads a Secret the user may
//! not get (`secretKeyRef`) or expands a hidden variable.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Container;

/// One explicit `env` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Explicit {
    name: String,
    /// `valueFrom.secretKeyRef.name`.
    secret: Option<String>,
    /// The names `$(NAME)` in its value refers to.
    refs: Vec<String>,
}

/// The Secret-backed env of one container, from its spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretEnvSources {
    explicit: Vec<Explicit>,
    /// `envFrom` Secret sources in order: (prefix, Secret name).
    env_from: Vec<(String, String)>,
}

impl SecretEnvSources {
    pub fn of(container: &Container) -> SecretEnvSources {
        let explicit = container
            .env
            .iter()
            .flatten()
            .map(|e| Explicit {
                name: e.name.clone(),
                secret: e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .map(|s| s.name.clone()),
                refs: e.value.as_deref().map(references).unwrap_or_default(),
            })
            .collect();
        let env_from = container
            .env_from
            .iter()
            .flatten()
            .filter_map(|source| {
                let secret = source.secret_ref.as_ref()?;
                Some((
                    source.prefix.clone().unwrap_or_default(),
                    secret.name.clone(),
                ))
            })
            .collect();
        SecretEnvSources { explicit, env_from }
    }

    /// The Secrets whose `get` decides what the session sees.
    pub fn secrets(&self) -> BTreeSet<String> {
        self.explicit
            .iter()
            .filter_map(|e| e.secret.clone())
            .chain(self.env_from.iter().map(|(_, s)| s.clone()))
            .collect()
    }

    /// The variables hidden when the Secrets of `denied` (name → why the user may not get it) are
    /// not the user's to read.
    pub fn hidden(&self, denied: &BTreeMap<String, String>) -> HiddenEnv {
        let prefixes: Vec<(String, String)> = self
            .env_from
            .iter()
            .filter_map(|(prefix, secret)| {
                let why = denied.get(secret)?;
                let from = if prefix.is_empty() {
                    "envFrom".to_owned()
                } else {
                    format!("envFrom, prefix {prefix}")
                };
                Some((prefix.clone(), format!("{why} ({from})")))
            })
            .collect();
        let mut hidden = HiddenEnv {
            exact: BTreeMap::new(),
            explicit: BTreeSet::new(),
            prefixes,
        };
        for e in &self.explicit {
            let why = match &e.secret {
                Some(secret) => denied.get(secret).cloned(),
                None => e.refs.iter().find_map(|r| {
                    hidden
                        .why(r)
                        .map(|why| format!("refers to $({r}), hidden: {why}"))
                }),
            };
            // A later entry of the same name replaces an earlier one, as in the kubelet.
            match why {
                Some(why) => hidden.exact.insert(e.name.clone(), why),
                None => hidden.exact.remove(&e.name),
            };
            hidden.explicit.insert(e.name.clone());
        }
        hidden
    }
}

/// The variables a session must not see, with the reason for each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HiddenEnv {
    exact: BTreeMap<String, String>,
    /// Names explicit `env` entries define: never from `envFrom`.
    explicit: BTreeSet<String>,
    /// `envFrom` Secrets the user may not get: (prefix, why).
    prefixes: Vec<(String, String)>,
}

impl HiddenEnv {
    /// Why `name` is hidden, if it is.
    pub fn why(&self, name: &str) -> Option<&str> {
        if let Some(why) = self.exact.get(name) {
            return Some(why);
        }
        if self.explicit.contains(name) {
            return None;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map(|(_, why)| why.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

/// The names `$(NAME)` refers to in an env value, as the kubelet expands it (`$$` is an escaped
/// `$`; an unclosed `$(` is literal).
pub fn references(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            out.push(inner[..end].to_owned());
            rest = &inner[end + 1..];
        } else {
            rest = after;
        }
    }
    out
}
