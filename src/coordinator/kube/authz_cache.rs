//! A short-lived cache of authorization decisions in front of SubjectAccessReview, as kube-apiserver's
//! delegating authorizer keeps one for aggregated API servers: without it every request through the
//! aggregator costs a second round trip to kube-apiserver. Only allowances are reused, for `ttl`: a
//! revoked RoleBinding takes effect within `ttl`, a granted one at once (denials and errors are
//! never cached, so someone just given access does not wait).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

use super::reviews::{ReviewObserver, access_review};
use crate::coordinator::api::state::{
    Authorizer, AuthorizerError, Decision, Identity, ResourceAttributes,
};

/// Entries kept at most; past it expired entries are dropped, and if none had expired, all.
const MAX_ENTRIES: usize = 4096;

/// The decisions by review (pure: the time is an argument).
#[derive(Debug, Default)]
pub struct DecisionCache {
    entries: HashMap<String, (Decision, Instant)>,
}

impl DecisionCache {
    /// The decision stored for `key` less than `ttl` before `now`.
    pub fn get(&self, key: &str, now: Instant, ttl: Duration) -> Option<Decision> {
        self.entries
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < ttl)
            .map(|(decision, _)| decision.clone())
    }

    pub fn put(&mut self, key: String, decision: Decision, now: Instant, ttl: Duration) {
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&key) {
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (decision, now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `inner`, with its decisions reused for `ttl`.
pub struct CachedAuthorizer<A> {
    inner: A,
    ttl: Duration,
    cache: Mutex<DecisionCache>,
    observer: Arc<dyn ReviewObserver>,
}

impl<A: Authorizer> CachedAuthorizer<A> {
    pub fn new(inner: A, ttl: Duration, observer: Arc<dyn ReviewObserver>) -> Self {
        CachedAuthorizer {
            inner,
            ttl,
            cache: Mutex::new(DecisionCache::default()),
            observer,
        }
    }
}

/// The cache key: the whole review kube-apiserver would be asked (user, groups, extra, attributes).
fn key(identity: &Identity, attributes: &ResourceAttributes) -> String {
    serde_json::to_string(&access_review(identity, attributes).spec).unwrap_or_default()
}

impl<A: Authorizer> Authorizer for CachedAuthorizer<A> {
    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        attributes: &'a ResourceAttributes,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>> {
        Box::pin(async move {
            if self.ttl.is_zero() {
                return self.inner.authorize(identity, attributes).await;
            }
            let key = key(identity, attributes);
            let cached = self
                .cache
                .lock()
                .map(|c| c.get(&key, Instant::now(), self.ttl))
                .unwrap_or_default();
            if let Some(decision) = cached {
                self.observer.reviewed("subjectaccessreview", "cached");
                return Ok(decision);
            }
            let decision = self.inner.authorize(identity, attributes).await?;
            if decision == Decision::Allow
                && let Ok(mut cache) = self.cache.lock()
            {
                cache.put(key, Decision::Allow, Instant::now(), self.ttl);
            }
            Ok(decision)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting {
        calls: AtomicUsize,
        allow: bool,
    }

    impl Authorizer for Counting {
        fn authorize<'a>(
            &'a self,
            _: &'a Identity,
            _: &'a ResourceAttributes,
        ) -> BoxFuture<'a, Result<Decision, AuthorizerError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let decision = if self.allow {
                Decision::Allow
            } else {
                Decision::Deny {
                    reason: "no".into(),
                }
            };
            Box::pin(async move { Ok(decision) })
        }
    }

    struct Nobody;
    impl ReviewObserver for Nobody {
        fn reviewed(&self, _: &'static str, _: &'static str) {}
    }

    fn identity(user: &str) -> Identity {
        Identity {
            user: user.into(),
            groups: vec!["devs".into()],
            ..Default::default()
        }
    }

    fn list_targets(namespace: &str) -> ResourceAttributes {
        ResourceAttributes {
            verb: "list",
            group: "operator.metalbear.co",
            version: "v1",
            resource: "targets",
            subresource: None,
            namespace: Some(namespace.into()),
            name: None,
        }
    }

    fn counting(allow: bool, ttl: Duration) -> CachedAuthorizer<Counting> {
        CachedAuthorizer::new(
            Counting {
                calls: AtomicUsize::new(0),
                allow,
            },
            ttl,
            Arc::new(Nobody),
        )
    }

    #[tokio::test]
    async fn reuses_an_allowance_for_the_same_review_only() {
        let cached = counting(true, Duration::from_secs(10));
        let (jane, a) = (identity("jane"), list_targets("a"));
        assert_eq!(cached.authorize(&jane, &a).await.unwrap(), Decision::Allow);
        assert_eq!(cached.authorize(&jane, &a).await.unwrap(), Decision::Allow);
        assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 1);
        // Another user, another namespace: asked again.
        cached.authorize(&identity("bob"), &a).await.unwrap();
        cached.authorize(&jane, &list_targets("b")).await.unwrap();
        assert_eq!(cached.inner.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn denials_are_asked_every_time_and_ttl_zero_disables_the_cache() {
        let denied = counting(false, Duration::from_secs(10));
        let (jane, a) = (identity("jane"), list_targets("a"));
        for _ in 0..2 {
            assert!(matches!(
                denied.authorize(&jane, &a).await.unwrap(),
                Decision::Deny { .. }
            ));
        }
        assert_eq!(denied.inner.calls.load(Ordering::SeqCst), 2);
        let uncached = counting(true, Duration::ZERO);
        for _ in 0..2 {
            uncached.authorize(&jane, &a).await.unwrap();
        }
        assert_eq!(uncached.inner.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let ttl = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut cache = DecisionCache::default();
        cache.put("k".into(), Decision::Allow, t0, ttl);
        assert_eq!(
            cache.get("k", t0 + Duration::from_secs(9), ttl),
            Some(Decision::Allow)
        );
        assert_eq!(cache.get("k", t0 + ttl, ttl), None);
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(format!("k{i}"), Decision::Allow, t0, ttl);
        }
        assert!(cache.len() <= MAX_ENTRIES);
        assert!(!cache.is_empty());
    }
}
