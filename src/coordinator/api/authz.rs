//! The SubjectAccessReview attributes of each route: the verb and resource kube-apiserver's own
//! request-info parser derives from the same path, so one RBAC rule means the same thing to
//! kube-apiserver (which checks first) and to us (defence in depth).

use super::{
    discovery::{GROUP, VERSION},
    state::ResourceAttributes,
};

fn attributes(
    verb: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    namespace: Option<&str>,
    name: Option<&str>,
) -> ResourceAttributes {
    ResourceAttributes {
        verb,
        group: GROUP,
        version: VERSION,
        resource,
        subresource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    }
}

/// `GET mirrordoperators` / `GET mirrordoperators/{name}`.
pub fn operator(name: Option<&str>) -> ResourceAttributes {
    let verb = if name.is_some() { "get" } else { "list" };
    attributes(verb, "mirrordoperators", None, None, name)
}

/// `POST mirrordoperators/{name}/certificate` (legacy credential).
pub fn operator_certificate(name: &str) -> ResourceAttributes {
    attributes(
        "create",
        "mirrordoperators",
        Some("certificate"),
        None,
        Some(name),
    )
}

/// `POST mirrordclusteroperatorusercredentials`.
pub fn user_credential() -> ResourceAttributes {
    attributes(
        "create",
        "mirrordclusteroperatorusercredentials",
        None,
        None,
        None,
    )
}

/// `GET namespaces/{ns}/targets` (list) or `…/targets/{name}` (get; also the non-proxy connect).
/// `name` is the last path segment as sent (`deployment.web`), which is what an RBAC
/// `resourceNames` entry must match.
pub fn target(namespace: &str, name: Option<&str>) -> ResourceAttributes {
    let verb = if name.is_some() { "get" } else { "list" };
    attributes(verb, "targets", None, Some(namespace), name)
}

/// `GET proxy/namespaces/{ns}/targets/{name}`: kube-apiserver reads the `proxy/` prefix as the
/// `proxy` verb.
pub fn target_proxy(namespace: &str, name: &str) -> ResourceAttributes {
    attributes("proxy", "targets", None, Some(namespace), Some(name))
}

/// `GET [namespaces/{ns}/]sessions[/{name}]`.
pub fn sessions_read(namespace: Option<&str>, name: Option<&str>) -> ResourceAttributes {
    let verb = if name.is_some() { "get" } else { "list" };
    attributes(verb, "sessions", None, namespace, name)
}

/// `DELETE [namespaces/{ns}/]sessions/{name}`.
pub fn session_delete(namespace: Option<&str>, name: &str) -> ResourceAttributes {
    attributes("delete", "sessions", None, namespace, Some(name))
}

/// `DELETE [namespaces/{ns}/]sessions`.
pub fn sessions_delete_collection(namespace: Option<&str>) -> ResourceAttributes {
    attributes("deletecollection", "sessions", None, namespace, None)
}

/// The extra right to end sessions other users opened: `delete` (one) or `deletecollection`
/// (all) on the `sessions/others` subresource. Users hold `delete`/`deletecollection` on
/// `sessions` for their own sessions; admins are granted `sessions/others` as well.
pub fn sessions_of_others(verb: &'static str, namespace: Option<&str>) -> ResourceAttributes {
    attributes(verb, "sessions", Some("others"), namespace, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_kube_apiserver() {
        assert_eq!(operator(Some("operator")).verb, "get");
        assert_eq!(operator(None).verb, "list");
        let cert = operator_certificate("operator");
        assert_eq!(
            (cert.verb, cert.resource, cert.subresource),
            ("create", "mirrordoperators", Some("certificate"))
        );
        assert_eq!(target("default", None).verb, "list");
        let t = target("default", Some("deployment.web"));
        assert_eq!((t.verb, t.name.as_deref()), ("get", Some("deployment.web")));
        let p = target_proxy("ns", "deployment.web");
        assert_eq!((p.verb, p.namespace.as_deref()), ("proxy", Some("ns")));
        assert_eq!(sessions_delete_collection(None).verb, "deletecollection");
        assert_eq!(session_delete(None, "12").verb, "delete");
        assert_eq!(sessions_read(Some("a"), None).verb, "list");
        assert_eq!(sessions_read(None, Some("A")).verb, "get");
        assert_eq!(
            user_credential().resource,
            "mirrordclusteroperatorusercredentials"
        );
        assert_eq!(
            sessions_of_others("delete", None).subresource,
            Some("others")
        );
    }

    #[test]
    fn denial_text_names_what_is_missing() {
        let text = target_proxy("default", "deployment.web").to_string();
        assert_eq!(
            text,
            "proxy targets \"deployment.web\" in API group \"operator.metalbear.co\" in the namespace \"default\""
        );
    }
}
