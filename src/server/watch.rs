//! Watch-fed in-memory stores (kube-runtime reflectors) of one kind across all namespaces, for
//! components that read objects per request without calling the API server.

use futures::StreamExt;
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use super::shutdown::Shutdown;

/// Starts watching every `K` of the cluster into a store that fills in the background, until
/// `shutdown`. A failing watch (no CRD yet, API server away) is logged with `kind` and retried
/// with backoff.
pub fn watch_all<K>(client: Client, kind: &'static str, shutdown: Shutdown) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.take_until(shutdown.wait()));
        while let Some(item) = stream.next().await {
            if let Err(error) = item {
                tracing::warn!(%error, kind, "watch error; retrying with backoff");
            }
        }
    });
    store
}

/// A ready store holding exactly `objects` (tests, and running without a cluster).
pub fn fixed_store<K>(objects: impl IntoIterator<Item = K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::{api::ObjectMeta, client::Body};

    use super::*;

    /// The store fills from the initial list, and the watch task ends on shutdown.
    #[tokio::test]
    async fn watch_all_fills_from_the_list_and_stops_on_shutdown() {
        let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (trigger, shutdown) = crate::server::shutdown::channel();
        let store = watch_all::<Namespace>(client, "Namespace", shutdown);

        let (request, send) = tokio::time::timeout(Duration::from_secs(10), api.next_request())
            .await
            .expect("a list within 10s")
            .expect("client alive");
        assert_eq!(request.uri().path(), "/api/v1/namespaces");
        let list = serde_json::json!({
            "kind": "NamespaceList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "7"},
            "items": [{"metadata": {"name": "team-a", "resourceVersion": "7"}}],
        });
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&list).unwrap(),
        )));
        tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready())
            .await
            .expect("ready within 10s")
            .unwrap();
        assert!(store.get(&reflector::ObjectRef::new("team-a")).is_some());

        // Then it watches from the list's version; shutdown drops that request.
        let (request, _send) = tokio::time::timeout(Duration::from_secs(10), api.next_request())
            .await
            .expect("a watch within 10s")
            .expect("client alive");
        assert!(request.uri().query().unwrap_or("").contains("watch=true"));
        trigger.trigger();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while api.next_request().await.is_some() {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "the watch task kept the client after shutdown"
        );
    }

    #[tokio::test]
    async fn fixed_store_is_ready_with_its_objects() {
        let namespace = |name: &str| Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let store = fixed_store([namespace("a"), namespace("b")]);
        store.wait_until_ready().await.unwrap();
        assert_eq!(store.state().len(), 2);
        assert!(store.get(&reflector::ObjectRef::new("b")).is_some());
        assert!(fixed_store::<Namespace>([]).state().is_empty());
    }
}
