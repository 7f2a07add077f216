//! The mesh guard: one key per mesh that every write in the mesh rewrites
//! and commits under, so that writes in one mesh are serialized by the
//! store's compare, and whose value counts the mesh's resources for the
//! quotas. Writers of one mesh also take turns on a lock, which only spares
//! them attempts lost to each other.

use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use weft_model::keys;
use weft_model::kind::{Kind, ResourceId};
use weft_store::{Compare, Op, ReadAhead, Revision, Txn, TxnOutcome};

use super::records::encode;
use super::Service;
use crate::error::ApiError;

/// How many locks the meshes' writers are spread over.
pub(super) const WRITE_LOCKS: usize = 64;

/// How many resources of each kind a mesh holds: the value of the mesh's
/// guard key, rewritten by every write in the mesh (which CASes the guard
/// anyway), so the counts always match the keys, even across a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MeshCounts {
    #[serde(default)]
    vn: u64,
    #[serde(default)]
    vs: u64,
    #[serde(default)]
    vr: u64,
    #[serde(default)]
    rt: u64,
    #[serde(default)]
    vg: u64,
    #[serde(default)]
    gr: u64,
}

impl MeshCounts {
    /// The counts a guard value holds; `None` for a value that holds none
    /// (an empty one) or cannot be read, so that the mesh is counted from
    /// its keys instead.
    fn decode(value: &[u8]) -> Option<MeshCounts> {
        if value.is_empty() {
            return None;
        }
        serde_json::from_slice(value).ok()
    }

    /// The count of `kind` (meshes are not counted here: 0).
    pub(super) fn of(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Mesh => 0,
            Kind::VirtualNode => self.vn,
            Kind::VirtualService => self.vs,
            Kind::VirtualRouter => self.vr,
            Kind::Route => self.rt,
            Kind::VirtualGateway => self.vg,
            Kind::GatewayRoute => self.gr,
        }
    }

    pub(super) fn of_mut(&mut self, kind: Kind) -> &mut u64 {
        match kind {
            // Not counted; a scratch slot keeps the match total.
            Kind::Mesh | Kind::VirtualNode => &mut self.vn,
            Kind::VirtualService => &mut self.vs,
            Kind::VirtualRouter => &mut self.vr,
            Kind::Route => &mut self.rt,
            Kind::VirtualGateway => &mut self.vg,
            Kind::GatewayRoute => &mut self.gr,
        }
    }

    /// Every resource in the mesh.
    pub(super) fn total(&self) -> u64 {
        self.vn + self.vs + self.vr + self.rt + self.vg + self.gr
    }
}

/// A mesh's guard as one write read it.
pub(super) struct Guard {
    pub(super) key: String,
    /// Holds while nothing in the mesh changed since the read.
    pub(super) compare: Compare,
    /// The mesh's resource counts at the read.
    pub(super) counts: MeshCounts,
}

impl Guard {
    /// The op that rewrites the guard with `counts`: every write in the
    /// mesh includes it, so that concurrent writes conflict.
    pub(super) fn bump(&self, counts: MeshCounts) -> Result<Op, ApiError> {
        Ok(Op::Put(self.key.clone(), encode(&counts)?))
    }
}

/// The lock, of `locks`, that the writers of `mesh` take turns on.
fn lock_slot(mesh: &str, locks: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    mesh.hash(&mut hasher);
    (hasher.finish() % locks as u64) as usize
}

impl Service {
    /// Reads the mesh's guard: the compare every write in the mesh commits
    /// under, and the mesh's resource counts it carries. A guard that
    /// carries no counts is counted here from the mesh's keys; the write's
    /// [`Guard::bump`] then stores the counts.
    pub(super) async fn guard(&self, mesh: &str, ahead: &ReadAhead) -> Result<Guard, ApiError> {
        let key = keys::guard(mesh);
        let (compare, counts) = match self.store.get_latest_ahead(&key, ahead).await? {
            Some(kv) => (
                Compare::ModRevision(key.clone(), kv.mod_revision),
                MeshCounts::decode(&kv.value),
            ),
            None => (Compare::Absent(key.clone()), None),
        };
        let counts = match counts {
            Some(counts) => counts,
            None => self.count_mesh(mesh).await?,
        };
        Ok(Guard {
            key,
            compare,
            counts,
        })
    }

    /// Counts the resources of a mesh, kind by kind, in the latest state.
    /// Consistent with a guard read just before: any write in between
    /// changes the guard, so a commit under it fails and the write retries.
    async fn count_mesh(&self, mesh: &str) -> Result<MeshCounts, ApiError> {
        let mut counts = MeshCounts::default();
        for kind in Kind::ALL {
            if kind != Kind::Mesh {
                let n = self.count(keys::scope_prefix(kind, mesh, None)).await?;
                *counts.of_mut(kind) = n as u64;
            }
        }
        Ok(counts)
    }

    /// The compare a new mesh is created under: the account's meshes guard
    /// as read now. Every mesh create rewrites it, so a mesh created after
    /// this read (which the quota check may not have counted) fails the
    /// commit.
    pub(super) async fn meshes_guard(&self, ahead: &ReadAhead) -> Result<Compare, ApiError> {
        Ok(
            match self
                .store
                .get_latest_ahead(keys::MESHES_GUARD, ahead)
                .await?
            {
                Some(kv) => Compare::ModRevision(kv.key, kv.mod_revision),
                None => Compare::Absent(keys::MESHES_GUARD.to_string()),
            },
        )
    }

    /// Takes the turn of writers in `mesh`: held from the read of the mesh's
    /// guard to the decision of the write's transaction (not its fsync), so
    /// that writers in one mesh follow each other rather than race and
    /// retry. Correctness does not rest on it — the guard's compare does —
    /// it only avoids wasted attempts. Meshes share a fixed set of locks.
    pub(super) async fn lock_mesh(&self, mesh: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let slot = lock_slot(mesh, self.write_locks.len());
        self.write_locks[slot].lock().await
    }

    /// Commits a write decided under `turn` (see [`Service::lock_mesh`]):
    /// releases the turn as soon as the transaction is decided, then waits
    /// until it is durable. The revision written at; `None` if a compare
    /// failed (nothing written).
    pub(super) async fn commit_turn(
        &self,
        turn: tokio::sync::MutexGuard<'_, ()>,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<Option<Revision>, ApiError> {
        let (outcome, durable) = self.store.txn_deferred(Txn { compares, ops }).await?;
        drop(turn);
        match outcome {
            TxnOutcome::Committed(_) => match durable.await {
                Ok(revision) => Ok(Some(revision)),
                // Batched with a write that did not hold: decided again.
                Err(weft_store::StoreError::Superseded(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
            // Retried at once: the retry's own commit waits for durability.
            TxnOutcome::Conflict(_) => Ok(None),
        }
    }

    /// The answer to a write that lost the race in its mesh on every attempt.
    pub(super) fn contention(id: &ResourceId) -> ApiError {
        ApiError::TooManyRequests(format!(
            "Too many concurrent changes in mesh \"{}\"; retry",
            id.mesh
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_guard_value_without_counts_reads_as_none() {
        assert_eq!(MeshCounts::decode(b""), None);
        assert_eq!(MeshCounts::decode(b"not json"), None);
        // Kinds missing from the value count 0.
        let counts = MeshCounts::decode(br#"{"vn":3,"rt":1}"#).unwrap();
        assert_eq!(counts.of(Kind::VirtualNode), 3);
        assert_eq!(counts.of(Kind::Route), 1);
        assert_eq!(counts.of(Kind::GatewayRoute), 0);
        assert_eq!(counts.total(), 4);
    }

    #[test]
    fn each_kind_in_a_mesh_has_its_own_count_and_the_mesh_itself_has_none() {
        let mut counts = MeshCounts::default();
        let kinds = Kind::ALL.into_iter().filter(|k| *k != Kind::Mesh);
        for (n, kind) in kinds.clone().enumerate() {
            *counts.of_mut(kind) = n as u64 + 1;
        }
        for (n, kind) in kinds.enumerate() {
            assert_eq!(counts.of(kind), n as u64 + 1, "{kind:?}");
        }
        assert_eq!(counts.of(Kind::Mesh), 0);
        assert_eq!(counts.total(), 1 + 2 + 3 + 4 + 5 + 6);
    }

    #[test]
    fn a_bump_stores_the_counts_it_is_given_under_the_guard_key() {
        let guard = Guard {
            key: keys::guard("apps"),
            compare: Compare::Absent(keys::guard("apps")),
            counts: MeshCounts::default(),
        };
        let mut counts = guard.counts;
        *counts.of_mut(Kind::VirtualService) += 2;
        let Op::Put(key, value) = guard.bump(counts).unwrap() else {
            panic!("a bump is a put");
        };
        assert_eq!(key, keys::guard("apps"));
        assert_eq!(MeshCounts::decode(&value), Some(counts));
    }

    #[test]
    fn a_mesh_always_takes_its_turn_on_the_same_lock() {
        for mesh in ["apps", "", "a-much-longer-mesh-name", "ünïcode"] {
            let slot = lock_slot(mesh, WRITE_LOCKS);
            assert!(slot < WRITE_LOCKS);
            assert_eq!(slot, lock_slot(mesh, WRITE_LOCKS), "{mesh}");
        }
        assert_eq!(lock_slot("apps", 1), 0);
    }

    #[tokio::test]
    async fn a_commit_under_a_guard_fails_once_another_write_bumped_it() {
        let (_dir, service) = super::super::tests::service().await;
        let first = service.guard("apps", &ReadAhead::default()).await.unwrap();
        let second = service.guard("apps", &ReadAhead::default()).await.unwrap();
        assert_eq!(first.compare, Compare::Absent(keys::guard("apps")));
        let bump = |g: &Guard| vec![g.bump(g.counts).unwrap()];
        let turn = service.lock_mesh("apps").await;
        let won = service
            .commit_turn(turn, vec![first.compare.clone()], bump(&first))
            .await
            .unwrap();
        assert!(won.is_some());
        let turn = service.lock_mesh("apps").await;
        let lost = service
            .commit_turn(turn, vec![second.compare.clone()], bump(&second))
            .await
            .unwrap();
        assert_eq!(lost, None);
        // Read again, the guard holds the revision the winner wrote at.
        let again = service.guard("apps", &ReadAhead::default()).await.unwrap();
        assert_eq!(
            again.compare,
            Compare::ModRevision(keys::guard("apps"), won.unwrap())
        );
    }

    #[tokio::test]
    async fn a_guard_without_counts_is_counted_from_the_mesh_s_keys() {
        let (_dir, service) = super::super::tests::service().await;
        let node =
            |name: &str| keys::resource(&ResourceId::in_mesh(Kind::VirtualNode, "apps", name));
        let ops = vec![
            Op::Put(keys::guard("apps"), Bytes::new()),
            Op::Put(node("a"), Bytes::from_static(b"{}")),
            Op::Put(node("b"), Bytes::from_static(b"{}")),
        ];
        service
            .store
            .txn(Txn {
                compares: vec![],
                ops,
            })
            .await
            .unwrap();
        let guard = service.guard("apps", &ReadAhead::default()).await.unwrap();
        assert_eq!(guard.counts.of(Kind::VirtualNode), 2);
        assert_eq!(guard.counts.total(), 2);
    }
}
