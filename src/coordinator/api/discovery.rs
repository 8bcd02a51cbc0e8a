//! Discovery (`/apis`, the group, the APIResourceList) and the OpenAPI v2/v3 documents, all derived
//! from one table of the resources this server serves.

use serde_json::{Map, Value, json};

pub const GROUP: &str = "operator.metalbear.co";
pub const VERSION: &str = "v1";
pub const GROUP_VERSION: &str = "operator.metalbear.co/v1";

/// One entry of the APIResourceList.
#[derive(Clone, Copy, Debug)]
pub struct Resource {
    pub name: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
}

/// Everything served under `/apis/operator.metalbear.co/v1`.
pub const RESOURCES: &[Resource] = &[
    Resource {
        name: "mirrordoperators",
        singular: "mirrordoperator",
        kind: "MirrordOperator",
        namespaced: false,
        verbs: &["get", "list"],
    },
    Resource {
        name: "mirrordoperators/certificate",
        singular: "",
        kind: "MirrordOperator",
        namespaced: false,
        verbs: &["create"],
    },
    Resource {
        name: "mirrordclusteroperatorusercredentials",
        singular: "mirrordclusteroperatorusercredential",
        kind: "MirrordClusterOperatorUserCredential",
        namespaced: false,
        verbs: &["create"],
    },
    Resource {
        name: "targets",
        singular: "target",
        kind: "Target",
        namespaced: true,
        verbs: &["get", "list"],
    },
    Resource {
        name: "sessions",
        singular: "session",
        kind: "Session",
        namespaced: true,
        verbs: &["delete", "deletecollection", "get", "list"],
    },
];

/// `GET /apis`: the APIGroupList with our one group.
pub fn api_group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [api_group_body()],
    })
}

fn api_group_body() -> Value {
    json!({
        "name": GROUP,
        "versions": [{"groupVersion": GROUP_VERSION, "version": VERSION}],
        "preferredVersion": {"groupVersion": GROUP_VERSION, "version": VERSION},
    })
}

/// The media type of aggregated discovery (kube-apiserver ≥ 1.30 asks for it first and otherwise
/// falls back to one request per group-version).
pub const AGGREGATED_DISCOVERY_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for aggregated discovery v2.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// `GET /apis` with aggregated discovery: the APIGroupDiscoveryList of our group.
pub fn api_group_discovery_list() -> Value {
    let response_kind = |kind: &str| json!({"group": GROUP, "version": VERSION, "kind": kind});
    let resources: Vec<Value> = kinds()
        .map(|r| {
            let subresources: Vec<Value> = RESOURCES
                .iter()
                .filter_map(|s| {
                    let (parent, sub) = s.name.split_once('/')?;
                    (parent == r.name).then(|| {
                        json!({
                            "subresource": sub,
                            "responseKind": response_kind(s.kind),
                            "verbs": s.verbs,
                        })
                    })
                })
                .collect();
            json!({
                "resource": r.name,
                "responseKind": response_kind(r.kind),
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs,
                "subresources": subresources,
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [{
            "metadata": {"name": GROUP},
            "versions": [{"version": VERSION, "resources": resources, "freshness": "Current"}],
        }],
    })
}

/// `GET /apis/operator.metalbear.co`.
pub fn api_group() -> Value {
    let mut group = api_group_body();
    group["kind"] = json!("APIGroup");
    group["apiVersion"] = json!("v1");
    group
}

/// `GET /apis/operator.metalbear.co/v1`.
pub fn api_resource_list() -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": r.verbs,
            })
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": resources,
    })
}

/// Kinds that have a schema (subresource entries share their parent's kind).
fn kinds() -> impl Iterator<Item = &'static Resource> {
    RESOURCES.iter().filter(|r| !r.name.contains('/'))
}

fn gvk(kind: &str) -> Value {
    json!([{"group": GROUP, "version": VERSION, "kind": kind}])
}

/// An object schema: the usual envelope, free-form spec/status (their keys are documented in
/// docs/coordinator.md; preserving unknown fields keeps `kubectl explain`/`get -o` working).
fn object_schema(kind: &str, meta_ref: &str) -> Value {
    json!({
        "type": "object",
        "description": format!("{kind} ({GROUP_VERSION}), served by the mirrord-operator coordinator"),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"$ref": meta_ref},
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
        "x-kubernetes-group-version-kind": gvk(kind),
    })
}

fn list_schema(kind: &str, item_ref: &str, list_meta_ref: &str) -> Value {
    json!({
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"$ref": list_meta_ref},
            "items": {"type": "array", "items": {"$ref": item_ref}},
        },
        "x-kubernetes-group-version-kind": gvk(&format!("{kind}List")),
    })
}

fn definition_name(kind: &str) -> String {
    format!("co.metalbear.operator.v1.{kind}")
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";

/// One operation: (HTTP method, Kubernetes verb, response kind).
type Operation = (&'static str, &'static str, String);

/// The paths of a resource with their operations.
fn paths_of(r: &Resource) -> Vec<(String, Vec<Operation>)> {
    let base = format!("/apis/{GROUP_VERSION}");
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.name)
    } else {
        format!("{base}/{}", r.name)
    };
    if let Some((parent, sub)) = r.name.split_once('/') {
        return vec![(
            format!("{base}/{parent}/{{name}}/{sub}"),
            vec![("post", "create", r.kind.to_owned())],
        )];
    }
    let mut on_collection = Vec::new();
    let mut on_item = Vec::new();
    for verb in r.verbs {
        match *verb {
            "list" => on_collection.push(("get", "list", format!("{}List", r.kind))),
            "create" => on_collection.push(("post", "create", r.kind.to_owned())),
            "deletecollection" => {
                on_collection.push(("delete", "deletecollection", "Status".into()))
            }
            "get" => on_item.push(("get", "get", r.kind.to_owned())),
            "delete" => on_item.push(("delete", "delete", "Status".into())),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if !on_collection.is_empty() {
        out.push((collection.clone(), on_collection));
    }
    if !on_item.is_empty() {
        out.push((format!("{collection}/{{name}}"), on_item));
    }
    out
}

fn path_parameters(path: &str, v3: bool) -> Vec<Value> {
    ["namespace", "name"]
        .into_iter()
        .filter(|p| path.contains(&format!("{{{p}}}")))
        .map(|p| {
            let mut param = json!({"name": p, "in": "path", "required": true, "description": format!("{p} of the object")});
            if v3 {
                param["schema"] = json!({"type": "string"});
            } else {
                param["type"] = json!("string");
            }
            param
        })
        .collect()
}

fn response_ref(kind: &str, v3: bool) -> String {
    let name = if kind == "Status" {
        STATUS.to_owned()
    } else {
        definition_name(kind)
    };
    if v3 {
        format!("#/components/schemas/{name}")
    } else {
        format!("#/definitions/{name}")
    }
}

fn operations(r: &Resource, v3: bool) -> Map<String, Value> {
    let mut paths = Map::new();
    for (path, ops) in paths_of(r) {
        let mut item = Map::new();
        for (method, verb, kind) in ops {
            let schema = json!({"$ref": response_ref(&kind, v3)});
            let ok = if v3 {
                json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
            } else {
                json!({"description": "OK", "schema": schema})
            };
            let mut op = json!({
                "operationId": format!("{verb}{}", r.kind),
                "tags": [format!("{GROUP}_{VERSION}")],
                "responses": {"200": ok, "401": {"description": "Unauthorized"}},
                "x-kubernetes-action": if verb == "create" { "post" } else { verb },
                "x-kubernetes-group-version-kind": {"group": GROUP, "version": VERSION, "kind": r.kind},
            });
            if !v3 {
                op["produces"] = json!(["application/json"]);
                op["schemes"] = json!(["https"]);
            }
            item.insert(method.to_owned(), op);
        }
        item.insert(
            "parameters".into(),
            Value::Array(path_parameters(&path, v3)),
        );
        paths.insert(path, Value::Object(item));
    }
    paths
}

fn schemas(v3: bool) -> Map<String, Value> {
    let prefix = if v3 {
        "#/components/schemas/"
    } else {
        "#/definitions/"
    };
    let mut defs = Map::new();
    for r in kinds() {
        defs.insert(
            definition_name(r.kind),
            object_schema(r.kind, &format!("{prefix}{OBJECT_META}")),
        );
        if r.verbs.contains(&"list") {
            defs.insert(
                definition_name(&format!("{}List", r.kind)),
                list_schema(
                    r.kind,
                    &format!("{prefix}{}", definition_name(r.kind)),
                    &format!("{prefix}{LIST_META}"),
                ),
            );
        }
    }
    // Minimal copies of the meta types we reference, so the document resolves on its own.
    defs.insert(
        OBJECT_META.into(),
        json!({"type": "object", "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"},
            "generateName": {"type": "string"}, "uid": {"type": "string"},
            "creationTimestamp": {"type": "string", "format": "date-time"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}),
    );
    defs.insert(
        LIST_META.into(),
        json!({"type": "object", "properties": {
            "resourceVersion": {"type": "string"}, "continue": {"type": "string"}}}),
    );
    defs.insert(
        STATUS.into(),
        json!({"type": "object", "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "status": {"type": "string"}, "message": {"type": "string"},
            "reason": {"type": "string"}, "code": {"type": "integer", "format": "int32"}},
            "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "Status"}]}),
    );
    defs
}

fn all_paths(v3: bool) -> Map<String, Value> {
    RESOURCES.iter().flat_map(|r| operations(r, v3)).collect()
}

/// `GET /openapi/v2` (Swagger 2.0).
pub fn openapi_v2(version: &str) -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "mirrord-operator coordinator", "version": version},
        "paths": all_paths(false),
        "definitions": schemas(false),
    })
}

/// `GET /openapi/v3/apis/operator.metalbear.co/v1` (OpenAPI 3.0).
pub fn openapi_v3_group(version: &str) -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "mirrord-operator coordinator", "version": version},
        "paths": all_paths(true),
        "components": {"schemas": schemas(true)},
    })
}

/// `GET /openapi/v3`: the index, pointing at the group document with a content hash so the
/// aggregator caches it.
pub fn openapi_v3_index(group_hash: &str) -> Value {
    json!({
        "paths": {
            format!("apis/{GROUP_VERSION}"): {
                "serverRelativeURL": format!("/openapi/v3/apis/{GROUP_VERSION}?hash={group_hash}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ref_resolves() {
        for (doc, prefix, key) in [
            (openapi_v2("x"), "#/definitions/", "/definitions"),
            (
                openapi_v3_group("x"),
                "#/components/schemas/",
                "/components/schemas",
            ),
        ] {
            let text = doc.to_string();
            let defs = doc.pointer(key).unwrap().as_object().unwrap();
            for piece in text.split("\"$ref\":\"").skip(1) {
                let target = &piece[..piece.find('"').unwrap()];
                let name = target.strip_prefix(prefix).unwrap();
                assert!(defs.contains_key(name), "unresolved {target}");
            }
        }
    }

    #[test]
    fn discovery_names_the_operator_kind() {
        let list = api_resource_list();
        let resources = list["resources"].as_array().unwrap();
        assert!(
            resources
                .iter()
                .any(|r| r["kind"] == "MirrordOperator"
                    && !r["name"].as_str().unwrap().contains('/'))
        );
    }
}
