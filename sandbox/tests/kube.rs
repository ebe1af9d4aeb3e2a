//! The in-process Kubernetes API server (`sim::kube`) against real clients: kubectl 1.32 (on
//! PATH) and 1.35 (`KUBECTL_135`), kube-rs's `Api`, `Controller`, `watcher`, `reflector` and
//! `finalizer()`, and the official Python client (`CRABGLAMP_PYTHON`); and raw HTTP with
//! malformed requests, none of which may crash it.
//!
//! One test binary (links are slow here); each scenario starts its own server on a free port.

#[path = "kube/builtins.rs"]
mod builtins;
#[path = "kube/common.rs"]
mod common;
#[path = "kube/consistency.rs"]
mod consistency;
#[path = "kube/helm.rs"]
mod helm;
#[path = "kube/kubectl.rs"]
mod kubectl;
#[path = "kube/python.rs"]
mod python;
#[path = "kube/robustness.rs"]
mod robustness;
#[path = "kube/runtime.rs"]
mod runtime;
#[path = "kube/sandbox.rs"]
mod sandbox;
