//! Why a proxy class's config was not updated: the last failed translation
//! (or invalid snapshot) of each class, kept until a later translation of the
//! class succeeds, so that `weft proxy-status` can show it beside the class's
//! proxies instead of it being only logged. Envoy keeps its previous config
//! meanwhile; the record says which version that is.
//!
//! Bounded: one entry per registered class, dropped with the class.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use weft_translate::{ProxyIdentity, ProxyKind};

/// The last failure of one proxy class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassFailure {
    /// The class's virtual node or gateway, `mesh/<mesh>/virtualNode/<name>`
    /// (its proxies' node id).
    pub proxy: String,
    /// The options the class's proxies announce (listener mode, ports,
    /// addresses), as the class is keyed by them.
    pub options: String,
    /// The App Mesh resource the failure names, `virtualNode/<name>`: the
    /// one the error is about when it names one, else the class's own node
    /// or gateway.
    pub resource: String,
    /// Why.
    pub reason: String,
    /// When the failure happened (the first of a run of equal failures).
    pub at: SystemTime,
    /// The version of the snapshot the class's proxies are still served,
    /// if they were served one.
    pub serving_version: Option<String>,
}

/// `virtualNode/<name>` or `virtualGateway/<name>`.
pub(crate) fn own_resource(identity: &ProxyIdentity) -> String {
    let kind = match identity.kind {
        ProxyKind::VirtualNode => "virtualNode",
        ProxyKind::VirtualGateway => "virtualGateway",
    };
    format!("{kind}/{}", identity.name)
}

/// The failures of the proxy classes, by snapshot key. Cheap to clone: the
/// runtime records into it, the status endpoint reads it.
#[derive(Clone, Default)]
pub struct ClassFailures {
    by_key: Arc<Mutex<HashMap<String, ClassFailure>>>,
}

impl ClassFailures {
    /// The failure of the class under `key`, if its last translation failed.
    pub fn get(&self, key: &str) -> Option<ClassFailure> {
        self.by_key.lock().ok()?.get(key).cloned()
    }

    /// Every failing class's key and failure, by key.
    pub fn all(&self) -> Vec<(String, ClassFailure)> {
        let Ok(by_key) = self.by_key.lock() else {
            return Vec::new();
        };
        let mut all: Vec<_> = by_key.iter().map(|(k, f)| (k.clone(), f.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Records the failure of the class under `key`, replacing its previous
    /// one; an equal failure (same resource, reason and version served)
    /// keeps the time it was first seen.
    pub(crate) fn record(&self, key: &str, failure: ClassFailure) {
        let Ok(mut by_key) = self.by_key.lock() else {
            return;
        };
        match by_key.get_mut(key) {
            Some(known)
                if known.resource == failure.resource
                    && known.reason == failure.reason
                    && known.serving_version == failure.serving_version => {}
            _ => {
                by_key.insert(key.to_string(), failure);
            }
        }
    }

    /// Forgets the failure of the class under `key` (it was translated, or
    /// is gone).
    pub(crate) fn clear(&self, key: &str) {
        if let Ok(mut by_key) = self.by_key.lock() {
            by_key.remove(key);
        }
    }
}
