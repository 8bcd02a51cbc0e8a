//! The registry-mirror operator: `k8s.osp.tech/v1` RegistryMirror, its children and their reconcile.
