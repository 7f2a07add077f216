//! Service-level attributes (Get/Update/DeleteServiceAttributes) and
//! GetInstancesHealthStatus.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use weft_store::{Compare, Op};

use super::{attributes_of, encode, text, RegistryService, MAX_ATTEMPTS};
use crate::error::RegistryError;
use crate::keys;
use crate::records::{Instance, ServiceRecord};

/// Attributes a service may carry (the model's `ServiceAttributesMap` maximum).
const MAX_SERVICE_ATTRIBUTES: usize = 30;
/// GetInstancesHealthStatus answers at most this many instances by default.
const DEFAULT_HEALTH_PAGE: usize = 100;

impl RegistryService {
    pub(super) async fn get_service_attributes(
        &self,
        input: &Value,
    ) -> Result<Value, RegistryError> {
        let (s, _) = self.service(text(input, "ServiceId")?).await?;
        Ok(json!({ "ServiceAttributes": {
            "ServiceArn": s.arn,
            "ResourceOwner": self.config.account,
            "Attributes": s.attributes,
        }}))
    }

    /// Adds or replaces attributes; more than 30 in all is refused.
    pub(super) async fn update_service_attributes(
        &self,
        input: &Value,
    ) -> Result<Value, RegistryError> {
        let added = attributes_of(input, "Attributes");
        self.change_service(text(input, "ServiceId")?, |s| {
            s.attributes.extend(added.clone());
            if s.attributes.len() > MAX_SERVICE_ATTRIBUTES {
                return Err(RegistryError::ServiceAttributesLimitExceeded(format!(
                    "Service {} would carry {} attributes; at most {MAX_SERVICE_ATTRIBUTES} \
                     are allowed",
                    s.id,
                    s.attributes.len()
                )));
            }
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    /// Removes attributes; keys the service does not have are ignored.
    pub(super) async fn delete_service_attributes(
        &self,
        input: &Value,
    ) -> Result<Value, RegistryError> {
        let gone: BTreeSet<String> = input
            .get("Attributes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(String::from))
            .collect();
        self.change_service(text(input, "ServiceId")?, |s| {
            s.attributes.retain(|k, _| !gone.contains(k));
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    /// Rewrites a service record with `change` applied, retrying on races.
    pub(super) async fn change_service(
        &self,
        id: &str,
        change: impl Fn(&mut ServiceRecord) -> Result<(), RegistryError>,
    ) -> Result<ServiceRecord, RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let (mut s, kv) = self.service(id).await?;
            change(&mut s)?;
            let compares = vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            let ops = vec![Op::Put(kv.key.clone(), encode(&s)?)];
            if self.commit(compares, ops).await? {
                return Ok(s);
            }
        }
        Err(Self::contention())
    }

    /// The health of the listed instances, or of all of them, one page at a
    /// time: `UNKNOWN` for services without a custom health check.
    pub(super) async fn instances_health(&self, input: &Value) -> Result<Value, RegistryError> {
        let (s, _) = self.service(text(input, "ServiceId")?).await?;
        let wanted: Option<BTreeSet<String>> =
            input.get("Instances").and_then(Value::as_array).map(|ids| {
                ids.iter()
                    .filter_map(|i| i.as_str().map(String::from))
                    .collect()
            });
        if let Some(ids) = &wanted {
            for id in ids {
                if self.store.get(&keys::instance(&s.id, id)).await?.is_none() {
                    return Err(RegistryError::InstanceNotFound(format!(
                        "Instance {id} not found in service {}",
                        s.id
                    )));
                }
            }
        }
        let mut input = input.clone();
        if input.get("MaxResults").is_none() {
            input["MaxResults"] = json!(DEFAULT_HEALTH_PAGE);
        }
        let (page, next) = self
            .page::<Instance>(&input, &keys::instances(&s.id), |i| {
                wanted.as_ref().is_none_or(|ids| ids.contains(&i.id))
            })
            .await?;
        let status: BTreeMap<String, &str> = page
            .iter()
            .map(|i| (i.id.clone(), i.health.as_str()))
            .collect();
        let mut out = json!({ "Status": status });
        if let Some(t) = next {
            out["NextToken"] = json!(t);
        }
        Ok(out)
    }
}
