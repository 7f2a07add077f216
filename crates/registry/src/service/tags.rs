//! TagResource, UntagResource and ListTagsForResource on namespaces and
//! services, named by ARN.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use weft_store::{Compare, Op};

use super::{encode, tags_of, text, RegistryService, MAX_ATTEMPTS, MAX_TAGS};
use crate::error::RegistryError;
use crate::keys;
use crate::records::{NamespaceRecord, ServiceRecord, Tag};

/// What an ARN names.
enum Resource {
    Namespace,
    Service,
}

/// A record that carries tags.
trait Tagged: Serialize + DeserializeOwned {
    fn tags_mut(&mut self) -> &mut Vec<Tag>;
    fn arn(&self) -> &str;
}

impl Tagged for NamespaceRecord {
    fn tags_mut(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
    fn arn(&self) -> &str {
        &self.arn
    }
}

impl Tagged for ServiceRecord {
    fn tags_mut(&mut self) -> &mut Vec<Tag> {
        &mut self.tags
    }
    fn arn(&self) -> &str {
        &self.arn
    }
}

impl RegistryService {
    /// The namespace or service an ARN names, or ResourceNotFoundException.
    fn resource(&self, arn: &str) -> Result<(Resource, String), RegistryError> {
        let missing = || RegistryError::ResourceNotFound(format!("Resource {arn} not found"));
        let prefix = self.arn("");
        let rest = arn.strip_prefix(&prefix).ok_or_else(|| {
            if arn.starts_with("arn:") {
                missing()
            } else {
                RegistryError::InvalidInput(format!("{arn} is not an ARN"))
            }
        })?;
        match rest.split_once('/') {
            Some(("namespace", id)) if !id.contains('/') => {
                Ok((Resource::Namespace, keys::namespace(id)))
            }
            Some(("service", id)) if !id.contains('/') => {
                Ok((Resource::Service, keys::service(id)))
            }
            _ => Err(missing()),
        }
    }

    /// Rewrites the tags of the resource `arn` names with `change`.
    async fn retag(&self, arn: &str, change: impl Fn(&mut Vec<Tag>)) -> Result<(), RegistryError> {
        match self.resource(arn)? {
            (Resource::Namespace, key) => {
                self.retag_record::<NamespaceRecord>(arn, &key, change)
                    .await
            }
            (Resource::Service, key) => self.retag_record::<ServiceRecord>(arn, &key, change).await,
        }
    }

    async fn retag_record<T: Tagged>(
        &self,
        arn: &str,
        key: &str,
        change: impl Fn(&mut Vec<Tag>),
    ) -> Result<(), RegistryError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some((mut record, kv)) = self.load::<T>(key).await? else {
                return Err(RegistryError::ResourceNotFound(format!(
                    "Resource {arn} not found"
                )));
            };
            change(record.tags_mut());
            let n = record.tags_mut().len();
            if n > MAX_TAGS {
                return Err(RegistryError::TooManyTags {
                    message: format!("{arn} would carry {n} tags; at most {MAX_TAGS} are allowed"),
                    resource_name: record.arn().to_string(),
                });
            }
            let compares = vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            let ops = vec![Op::Put(kv.key.clone(), encode(&record)?)];
            if self.commit(compares, ops).await? {
                return Ok(());
            }
        }
        Err(Self::contention())
    }

    /// Adds tags, replacing the values of keys already there.
    pub(super) async fn tag_resource(&self, input: &Value) -> Result<Value, RegistryError> {
        let arn = text(input, "ResourceARN")?;
        let added = tags_of(input)?;
        self.retag(arn, |tags| {
            for tag in &added {
                match tags.iter_mut().find(|t| t.key == tag.key) {
                    Some(t) => t.value = tag.value.clone(),
                    None => tags.push(tag.clone()),
                }
            }
        })
        .await?;
        Ok(json!({}))
    }

    /// Removes tags by key; keys the resource does not carry are ignored.
    pub(super) async fn untag_resource(&self, input: &Value) -> Result<Value, RegistryError> {
        let arn = text(input, "ResourceARN")?;
        let gone: BTreeSet<String> = input
            .get("TagKeys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(String::from))
            .collect();
        self.retag(arn, |tags| tags.retain(|t| !gone.contains(&t.key)))
            .await?;
        Ok(json!({}))
    }

    pub(super) async fn list_tags(&self, input: &Value) -> Result<Value, RegistryError> {
        let arn = text(input, "ResourceARN")?;
        let missing = || RegistryError::ResourceNotFound(format!("Resource {arn} not found"));
        let tags = match self.resource(arn)? {
            (Resource::Namespace, key) => {
                self.load::<NamespaceRecord>(&key)
                    .await?
                    .ok_or_else(missing)?
                    .0
                    .tags
            }
            (Resource::Service, key) => {
                self.load::<ServiceRecord>(&key)
                    .await?
                    .ok_or_else(missing)?
                    .0
                    .tags
            }
        };
        Ok(json!({ "Tags": tags }))
    }
}
