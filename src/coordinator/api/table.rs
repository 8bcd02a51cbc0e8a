//! `meta.k8s.io/v1` `Table` answers, so that `kubectl get targets|sessions|mirrordoperators`
//! prints useful columns. kubectl asks with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,…`;
//! any other client gets the objects.

use serde_json::{Value, json};

pub const TABLE_MEDIA_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// Whether an `Accept` header asks for a `meta.k8s.io/v1` Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && params.contains(&"v=v1")
    })
}

struct Column {
    name: &'static str,
    kind: &'static str,
    description: &'static str,
    cell: fn(&Value) -> Value,
}

fn columns(kind: &str) -> Option<Vec<Column>> {
    let name = Column {
        name: "Name",
        kind: "string",
        description: "metadata.name",
        cell: |o| o["metadata"]["name"].clone(),
    };
    Some(match kind {
        "Target" => vec![
            name,
            Column {
                name: "Available",
                kind: "boolean",
                description: "a Running pod with an injected agent exists",
                cell: |o| o["status"]["available"].clone(),
            },
            Column {
                name: "Ready Pods",
                kind: "string",
                description: "Running pods with an injected agent",
                cell: |o| {
                    let pods: Vec<&str> = o["status"]["ready_pods"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    json!(pods.join(","))
                },
            },
        ],
        "Session" => vec![
            name,
            Column {
                name: "User",
                kind: "string",
                description: "who opened the session",
                cell: |o| o["spec"]["session"]["user"].clone(),
            },
            Column {
                name: "Target",
                kind: "string",
                description: "the session's target",
                cell: |o| o["spec"]["session"]["target"].clone(),
            },
            Column {
                name: "Duration",
                kind: "string",
                description: "how long the session has run",
                cell: |o| {
                    let secs = o["spec"]["session"]["duration_secs"].as_u64().unwrap_or(0);
                    json!(
                        humantime::format_duration(std::time::Duration::from_secs(secs))
                            .to_string()
                    )
                },
            },
        ],
        "MirrordOperator" => vec![
            name,
            Column {
                name: "Version",
                kind: "string",
                description: "spec.operator_version",
                cell: |o| o["spec"]["operator_version"].clone(),
            },
            Column {
                name: "License Expires",
                kind: "string",
                description: "spec.license.expire_at",
                cell: |o| o["spec"]["license"]["expire_at"].clone(),
            },
            Column {
                name: "Sessions",
                kind: "integer",
                description: "live sessions",
                cell: |o| json!(o["status"]["sessions"].as_array().map_or(0, Vec::len)),
            },
        ],
        _ => return None,
    })
}

/// The Table for an object or a list answer; `None` for kinds without columns.
pub fn to_table(doc: &Value) -> Option<Value> {
    let kind = doc["kind"].as_str()?;
    let (item_kind, items): (&str, Vec<&Value>) = match kind.strip_suffix("List") {
        Some(item_kind) => (item_kind, doc["items"].as_array()?.iter().collect()),
        None => (kind, vec![doc]),
    };
    let columns = columns(item_kind)?;
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            let mut d = json!({"name": c.name, "type": c.kind, "format": "", "description": c.description, "priority": 0});
            if c.name == "Name" {
                d["format"] = json!("name");
            }
            d
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            json!({
                "cells": columns.iter().map(|c| (c.cell)(item)).collect::<Vec<_>>(),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": item["metadata"],
                },
            })
        })
        .collect();
    Some(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": definitions,
        "rows": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kubectl_accept() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn builds_rows_for_lists_and_objects() {
        let list = json!({"kind": "TargetList", "items": [
            {"metadata": {"name": "deploy.web.container.app"}, "status": {"available": true, "ready_pods": ["a", "b"]}}
        ]});
        let table = to_table(&list).unwrap();
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["deploy.web.container.app", true, "a,b"])
        );
        let operator = json!({"kind": "MirrordOperator", "metadata": {"name": "operator"},
            "spec": {"operator_version": "3.250.0", "license": {"expire_at": "2030-01-01"}},
            "status": {"sessions": [{}]}});
        assert_eq!(
            to_table(&operator).unwrap()["rows"][0]["cells"],
            json!(["operator", "3.250.0", "2030-01-01", 1])
        );
        assert!(to_table(&json!({"kind": "Status"})).is_none());
    }
}
