//! How the controllers watch the cluster: the objects in their scope (namespace, shard), the
//! watch and list sizes, and how many reconciles of a kind run at once.

use kube::Api;
use kube::runtime::watcher;

use crate::controllers::config::ControllerConfig;
use crate::controllers::context::Context;
use crate::controllers::shard::shard_selector;

/// The watcher of this instance's objects of a kind: its shard's, in pages, with a server-side
/// timeout.
pub(crate) fn watcher_config(config: &ControllerConfig) -> watcher::Config {
    watcher::Config::default().labels(&shard_selector(config)).page_size(WATCH_LIST_PAGE).timeout(WATCH_TIMEOUT_SECS)
}

/// Seconds after which the API server ends each watch (the watcher opens the next one from
/// where it was). Shorter than kube's 290 so that the client's read timeout
/// ([`crate::operator::KUBE_READ_TIMEOUT`]), which must outlast a quiet watch, catches a
/// half-open connection within about a minute; one more watch request per kind a minute.
pub const WATCH_TIMEOUT_SECS: u32 = 60;

/// Objects per page of a watcher's (re)list. kube's default is 500; a page of 500 custom
/// objects with their status is held three times while it is read (the body's chunks, their
/// copy, the decoded list) beside the cache it is filling. 100 costs four more API-server
/// requests per 500 objects, once per relist, and never a cloud request.
pub const WATCH_LIST_PAGE: u32 = 100;

/// A kind's API in the watched scope: one namespace with `--watch-namespace`, else all.
pub fn scoped_api<K>(ctx: &Context) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match &ctx.config.watch_namespace {
        Some(ns) => Api::namespaced(ctx.clients.kube.clone(), ns),
        None => Api::all(ctx.clients.kube.clone()),
    }
}

/// What every kind's controller shares: bounded concurrency (see [`ControllerConfig::concurrency`]).
pub(crate) fn controller_config(config: &ControllerConfig) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(config.concurrency)
}
