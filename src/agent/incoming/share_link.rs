//! Share links (protocol 1.29, `ClientMessage::ShareLink`): the coordinator registers a session's
//! key with the agent; a request whose query carries `mirrord-session=<registered key>` gets
//! `mirrord-session=<key>` added to its `baggage` header before filters see it, so a link opened
//! in a browser reaches the session whose filter matches that baggage (and the app propagates the
//! baggage to the calls it makes). Keys belong to the session that registered them and go when it
//! closes. Pure logic, no I/O.

use std::collections::{HashMap, HashSet};

use http::header::HeaderValue;

/// The query parameter and baggage member name.
pub const PARAM: &str = "mirrord-session";

const BAGGAGE_HEADER: &str = "baggage";

/// Registered keys and the sessions that registered them.
#[derive(Debug, Default)]
pub struct ShareKeys {
    keys: HashMap<String, HashSet<u64>>,
}

impl ShareKeys {
    pub fn register(&mut self, key: String, session: u64) {
        self.keys.entry(key).or_default().insert(session);
    }

    pub fn remove(&mut self, key: &str, session: u64) {
        if let Some(owners) = self.keys.get_mut(key) {
            owners.remove(&session);
            if owners.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// A session closed: its keys go.
    pub fn drop_session(&mut self, session: u64) {
        self.keys.retain(|_, owners| {
            owners.remove(&session);
            !owners.is_empty()
        });
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The registered key the request's query names, if any.
    pub fn registered_key(&self, uri: &http::Uri) -> Option<String> {
        if self.keys.is_empty() {
            return None;
        }
        let key = form_urlencoded::parse(uri.query()?.as_bytes())
            .find(|(name, _)| name == PARAM)
            .map(|(_, value)| value.into_owned())?;
        self.keys.contains_key(&key).then_some(key)
    }

    /// Adds `mirrord-session=<key>` to the request's baggage when its query names a registered
    /// key (and the baggage does not carry that member already). Returns whether it did.
    pub fn apply(&self, uri: &http::Uri, headers: &mut http::HeaderMap) -> bool {
        let Some(key) = self.registered_key(uri) else {
            return false;
        };
        let member = format!("{PARAM}={key}");
        let existing: Vec<String> = headers
            .get_all(BAGGAGE_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let has_member = existing
            .iter()
            .flat_map(|v| v.split(','))
            .any(|m| m.split(';').next().unwrap_or("").trim() == member);
        if has_member {
            return false;
        }
        // Keys with bytes a header cannot carry are never turned into baggage.
        let value = match existing.is_empty() {
            true => HeaderValue::from_str(&member),
            false => HeaderValue::from_str(&format!("{},{member}", existing.join(","))),
        };
        let Ok(value) = value else { return false };
        headers.insert(BAGGAGE_HEADER, value);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(keys: &ShareKeys, uri: &str, baggage: &[&str]) -> (bool, Vec<String>) {
        let mut headers = http::HeaderMap::new();
        for b in baggage {
            headers.append(BAGGAGE_HEADER, b.parse().unwrap());
        }
        let changed = keys.apply(&uri.parse().unwrap(), &mut headers);
        let values = headers
            .get_all(BAGGAGE_HEADER)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        (changed, values)
    }

    #[test]
    fn registered_key_in_the_query_becomes_baggage() {
        let mut keys = ShareKeys::default();
        keys.register("k1".into(), 7);
        assert_eq!(
            apply(&keys, "/shop?mirrord-session=k1&x=1", &[]),
            (true, vec!["mirrord-session=k1".to_owned()])
        );
        // Appended to existing baggage (several header lines become one list).
        assert_eq!(
            apply(&keys, "/?mirrord-session=k1", &["a=1", "b=2"]),
            (true, vec!["a=1,b=2,mirrord-session=k1".to_owned()])
        );
        // Already there (with properties): unchanged.
        assert_eq!(
            apply(
                &keys,
                "/?mirrord-session=k1",
                &["a=1, mirrord-session=k1;p=x"]
            ),
            (false, vec!["a=1, mirrord-session=k1;p=x".to_owned()])
        );
    }

    #[test]
    fn unknown_or_missing_keys_change_nothing() {
        let mut keys = ShareKeys::default();
        keys.register("k1".into(), 7);
        assert_eq!(apply(&keys, "/?mirrord-session=k2", &[]), (false, vec![]));
        assert_eq!(apply(&keys, "/?session=k1", &[]), (false, vec![]));
        assert_eq!(
            apply(&keys, "/k1", &["a=1"]),
            (false, vec!["a=1".to_owned()])
        );
    }

    #[test]
    fn keys_belong_to_their_sessions() {
        let mut keys = ShareKeys::default();
        keys.register("k1".into(), 1);
        keys.register("k1".into(), 2);
        keys.register("k2".into(), 2);
        keys.drop_session(2);
        assert!(
            apply(&keys, "/?mirrord-session=k1", &[]).0,
            "session 1 still holds k1"
        );
        assert!(!apply(&keys, "/?mirrord-session=k2", &[]).0);
        keys.remove("k1", 1);
        assert!(keys.is_empty());
    }
}
