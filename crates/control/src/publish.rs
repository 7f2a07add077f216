//! Publication: translates a proxy class's mesh for it, encodes the result
//! through the shared pool, sets it in the ADS server's snapshot cache, and
//! records what it was computed from — or, when that fails, why.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use weft_model::keys;
use weft_translate::{identity_notice, MeshSnapshot, SharedResources, TranslateError, Translator};
use weft_xds::SnapshotCache;

use crate::classes::{Classes, ProxyClass};
use crate::deps::{dependencies, Dependencies, DepsMemo, MeshChanges};
use crate::encoded::EncodedPool;
use crate::failures::{own_resource, ClassFailure, ClassFailures};
use crate::index::MeshIndex;

/// What is published for each class, and what it was computed from.
pub(crate) struct Publisher {
    /// The ADS server's cache, where each class's snapshot goes.
    pub(crate) cache: SnapshotCache,
    /// What each class's last published config was computed from.
    pub(crate) deps: Dependencies,
    /// Encoded resources shared between classes and kept between changes.
    pub(crate) encoded: EncodedPool,
    /// Why the config of a class was last not updated, until it is.
    pub(crate) failures: ClassFailures,
    /// When the store changes being published reached the control plane; the snapshots carry
    /// it, so that the ADS server can time each proxy's convergence. `None` outside a refresh
    /// driven by the change feed (a load, a proxy's first connection).
    pub(crate) origin: Option<std::time::Instant>,
}

impl Publisher {
    pub(crate) fn new(cache: SnapshotCache) -> Self {
        Self {
            cache,
            deps: Dependencies::default(),
            encoded: EncodedPool::default(),
            failures: ClassFailures::default(),
            origin: None,
        }
    }

    /// Computes the snapshot of one class on its own (its first proxy has
    /// connected) from `mesh`, the current snapshot of its mesh `escaped`.
    pub(crate) fn publish(
        &mut self,
        key: &str,
        class: &ProxyClass,
        escaped: &str,
        mesh: &Arc<MeshSnapshot>,
    ) {
        let mut memo = self.deps.take_memo(escaped, mesh);
        self.publish_with(key, class, &mut Translator::new(mesh), &mut memo);
        self.deps.keep_memo(escaped.to_string(), memo);
        self.encoded.end_round();
    }

    /// Recomputes the snapshot of one proxy class with the translator (and
    /// dependency memo) of its mesh's current snapshot, shared by the classes
    /// of one refresh.
    fn publish_with(
        &mut self,
        key: &str,
        class: &ProxyClass,
        translator: &mut Translator<'_>,
        memo: &mut DepsMemo,
    ) {
        let mesh = translator.snapshot();
        self.deps
            .set(key, dependencies(mesh, &class.identity, memo));
        let translated = translator.translate_shared(&class.identity, &class.options);
        self.settle(key, class, translated);
        // Served, but without what the mesh asks for (mesh-wide mutual TLS for a proxy with no
        // Weft identity): said beside the proxy in `weft proxy-status`, as a failure is.
        // Only when it was published: a failure to publish says more.
        let published = self.failures.get(key).is_none();
        if let Some(reason) = identity_notice(mesh, &class.identity, &class.options) {
            if let Some(snapshot) = self.cache.snapshot(key).filter(|_| published) {
                tracing::warn!(%key, %reason, "proxy served without mesh-wide mutual TLS");
                self.failures.record(
                    key,
                    ClassFailure {
                        proxy: class.identity.to_string(),
                        options: format!("{:?}", class.options),
                        resource: own_resource(&class.identity),
                        reason,
                        at: SystemTime::now(),
                        serving_version: Some(snapshot.version().to_string()),
                    },
                );
            }
        }
    }

    /// Publishes the translation of one class, or records why its config is
    /// not updated (see [`ClassFailures`]); a published one clears that.
    pub(crate) fn settle(
        &mut self,
        key: &str,
        class: &ProxyClass,
        translated: Result<SharedResources, TranslateError>,
    ) {
        let (resource, reason) = match translated {
            Ok(resources) => match self.encoded.snapshot(resources) {
                Ok(snapshot) => {
                    let snapshot = match self.origin {
                        Some(at) => snapshot.with_origin(at),
                        None => snapshot,
                    };
                    self.cache.set_snapshot(key, Arc::new(snapshot));
                    self.failures.clear(key);
                    return;
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "translated resources are not a valid snapshot");
                    (
                        None,
                        format!("the translated resources are not a valid snapshot: {e}"),
                    )
                }
            },
            Err(
                e @ (TranslateError::VirtualNodeNotFound { .. }
                | TranslateError::VirtualGatewayNotFound { .. }),
            ) => {
                // The proxy's node or gateway does not exist (yet): it waits
                // with no config. One deleted while its proxies are served
                // leaves them on their last config: that is a failure to say.
                if self.cache.snapshot(key).is_none() {
                    self.failures.clear(key);
                    return;
                }
                (e.resource(), e.to_string())
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "translation failed");
                (e.resource(), e.to_string())
            }
        };
        self.failures.record(
            key,
            ClassFailure {
                proxy: class.identity.to_string(),
                options: format!("{:?}", class.options),
                resource: resource.unwrap_or_else(|| own_resource(&class.identity)),
                reason,
                at: SystemTime::now(),
                serving_version: self.cache.snapshot(key).map(|s| s.version().to_string()),
            },
        );
    }

    /// The classes a burst of changes affects (see [`Publisher::refresh`]).
    pub(crate) fn affected(
        &self,
        classes: &Classes,
        changes: &BTreeMap<String, MeshChanges>,
        registry_changed: &BTreeSet<String>,
    ) -> Vec<(String, ProxyClass)> {
        classes.matching(|key, class| {
            let escaped = keys::escape(&class.identity.mesh);
            registry_changed.contains(&escaped)
                || changes
                    .get(&escaped)
                    .is_some_and(|c| self.deps.affected(key, c))
        })
    }

    /// Recomputes the proxies whose config a burst of changes can have
    /// changed: in each mesh with changes, the classes that depend on a
    /// changed resource (every class on a change of the mesh record), and the
    /// proxies of the meshes whose Cloud Map instances changed
    /// (`registry_changed`).
    pub(crate) fn refresh(
        &mut self,
        classes: &Classes,
        index: &MeshIndex,
        changes: &BTreeMap<String, MeshChanges>,
        registry_changed: &BTreeSet<String>,
    ) {
        if changes.is_empty() && registry_changed.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let affected = self.affected(classes, changes, registry_changed);
        let published = affected.len();
        // One translator (and dependency memo) per mesh for the whole refresh:
        // what the classes share, such as the clusters of route targets, is
        // built once.
        let meshes: HashMap<String, Arc<MeshSnapshot>> = affected
            .iter()
            .map(|(_, class)| keys::escape(&class.identity.mesh))
            .collect::<BTreeSet<String>>()
            .into_iter()
            .filter_map(|escaped| {
                let mesh = index.mesh(&escaped)?;
                Some((escaped, mesh))
            })
            .collect();
        let mut work: HashMap<&str, (Translator<'_>, DepsMemo)> = meshes
            .iter()
            .map(|(escaped, mesh)| {
                let memo = self.deps.take_memo(escaped, mesh);
                (escaped.as_str(), (Translator::new(mesh), memo))
            })
            .collect();
        for (key, class) in &affected {
            let escaped = keys::escape(&class.identity.mesh);
            // No such mesh (yet): the proxy waits with no config.
            if let Some((translator, memo)) = work.get_mut(escaped.as_str()) {
                self.publish_with(key, class, translator, memo);
            }
        }
        for (escaped, (_, memo)) in work {
            self.deps.keep_memo(escaped.to_string(), memo);
        }
        drop(meshes);
        // The snapshots just replaced may have held the last users of some
        // encoded resources (none were replaced if nothing was published).
        if published > 0 {
            self.encoded.sweep();
        }
        tracing::debug!(
            published,
            encoded = self.encoded.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "proxy classes recomputed"
        );
    }

    /// Lets go of what the forgotten classes `gone` held (their snapshots
    /// are already out of the cache), and of the encoded resources no
    /// snapshot or stream holds any more.
    pub(crate) fn forget(&mut self, gone: &[String]) {
        for key in gone {
            self.deps.remove(key);
            self.failures.clear(key);
        }
        // Also when no class went: the sweep after a refresh cannot free the
        // resources of the snapshots it replaced while streams still send
        // them; once they have moved on, only the pool holds them.
        self.encoded.sweep();
        if !gone.is_empty() {
            tracing::info!(
                forgotten = gone.len(),
                encoded = self.encoded.len(),
                "idle proxy classes forgotten"
            );
        }
    }
}
