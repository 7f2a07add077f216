//! TagResource, UntagResource and ListTagsForResource, on any resource
//! named by its ARN.

use serde_json::{json, Value};
use weft_model::keys;
use weft_model::shapes::TagRef;
use weft_store::{Compare, Op};

use super::operations::{page_limit, MAX_ATTEMPTS};
use super::records::encode;
use super::validate::{check_weft_tags, tags_from_input};
use super::Service;
use crate::error::ApiError;

/// Default page size of ListTagsForResource (the model's TagsLimit maximum).
const DEFAULT_TAGS_LIMIT: usize = 50;
/// Tags per resource, as the model's TagList allows.
const MAX_TAGS: usize = 50;

/// Adds `new` to `tags`: a key already there takes the new value, in its
/// place; more than [`MAX_TAGS`] in all is refused.
fn merge_tags(tags: &mut Vec<TagRef>, new: &[TagRef]) -> Result<(), ApiError> {
    for t in new {
        match tags.iter_mut().find(|x| x.key == t.key) {
            Some(existing) => existing.value = t.value.clone(),
            None => tags.push(t.clone()),
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::TooManyTags(format!(
            "A resource may have at most {MAX_TAGS} tags; this request would give it {}",
            tags.len()
        )));
    }
    Ok(())
}

/// The page of `tags` an input asks for: `nextToken` is the index of the
/// page's first tag.
fn tags_page(tags: &[TagRef], input: &Value) -> Result<Value, ApiError> {
    let limit = page_limit(input, DEFAULT_TAGS_LIMIT);
    let start = match input.get("nextToken").and_then(Value::as_str) {
        Some(t) => t.parse::<usize>().map_err(|_| {
            ApiError::BadRequest("Value at 'nextToken' is not a valid token".into())
        })?,
        None => 0,
    };
    let page: Vec<&TagRef> = tags.iter().skip(start).take(limit).collect();
    let mut out = json!({ "tags": page });
    if start + page.len() < tags.len() {
        out["nextToken"] = json!((start + page.len()).to_string());
    }
    Ok(out)
}

impl Service {
    /// Rewrites a resource's tags under the mesh guard.
    async fn change_tags(
        &self,
        input: &Value,
        change: impl Fn(&mut Vec<TagRef>) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let id = self.resource_from_arn(input)?;
        let key = keys::resource(&id);
        for _ in 0..MAX_ATTEMPTS {
            let ahead = self.read_ahead(&id, None, &[], true).await?;
            let turn = self.lock_mesh(&id.mesh).await;
            let guard = self.guard(&id.mesh, &ahead).await?;
            let Some((mut record, kv)) = self.load(&id, &ahead).await? else {
                return Err(ApiError::NotFound(format!("{} not found", id.describe())));
            };
            change(&mut record.tags)?;
            let ops = vec![
                Op::Put(key.clone(), encode(&record)?),
                guard.bump(guard.counts)?,
            ];
            let compares = vec![
                guard.compare,
                Compare::ModRevision(key.clone(), kv.mod_revision),
            ];
            if self.commit_turn(turn, compares, ops).await?.is_some() {
                return Ok(json!({}));
            }
        }
        Err(Self::contention(&id))
    }

    pub(super) async fn tag_resource(&self, input: &Value) -> Result<Value, ApiError> {
        let new = tags_from_input(input)?;
        check_weft_tags(self.resource_from_arn(input)?.kind, &new)?;
        self.change_tags(input, |tags| merge_tags(tags, &new)).await
    }

    pub(super) async fn untag_resource(&self, input: &Value) -> Result<Value, ApiError> {
        let keys: Vec<String> = input
            .get("tagKeys")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        self.change_tags(input, |tags| {
            tags.retain(|t| !keys.contains(&t.key));
            Ok(())
        })
        .await
    }

    pub(super) async fn list_tags(&self, input: &Value) -> Result<Value, ApiError> {
        let id = self.resource_from_arn(input)?;
        let Some(record) = self.load_durable(&id).await? else {
            return Err(ApiError::NotFound(format!("{} not found", id.describe())));
        };
        tags_page(&record.tags, input)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tag(key: &str, value: &str) -> TagRef {
        TagRef {
            key: key.into(),
            value: value.into(),
        }
    }

    fn tags(n: usize) -> Vec<TagRef> {
        (0..n).map(|i| tag(&format!("k{i}"), "v")).collect()
    }

    #[test]
    fn tagging_replaces_the_value_of_a_key_in_place_and_appends_new_keys() {
        let mut held = vec![tag("a", "1"), tag("b", "2")];
        merge_tags(&mut held, &[tag("c", "3"), tag("a", "9")]).unwrap();
        let pairs: Vec<(&str, &str)> = held
            .iter()
            .map(|t| (t.key.as_str(), t.value.as_str()))
            .collect();
        assert_eq!(pairs, [("a", "9"), ("b", "2"), ("c", "3")]);
    }

    #[test]
    fn tagging_past_fifty_tags_is_refused() {
        let mut held = tags(MAX_TAGS);
        // Changing a value adds no tag.
        merge_tags(&mut held, &[tag("k0", "new")]).unwrap();
        match merge_tags(&mut held, &[tag("one-more", "v")]) {
            Err(ApiError::TooManyTags(why)) => assert!(why.ends_with("give it 51"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tags_are_listed_in_pages_whose_token_is_the_next_index() {
        let held = tags(5);
        let first = tags_page(&held, &json!({"limit": 2})).unwrap();
        assert_eq!(
            first["tags"],
            json!([{"key": "k0", "value": "v"}, {"key": "k1", "value": "v"}])
        );
        assert_eq!(first["nextToken"], "2");
        let last = tags_page(&held, &json!({"limit": 2, "nextToken": "4"})).unwrap();
        assert_eq!(last["tags"], json!([{"key": "k4", "value": "v"}]));
        assert!(last.get("nextToken").is_none());
        let all = tags_page(&held, &json!({})).unwrap();
        assert_eq!(all["tags"].as_array().unwrap().len(), 5);
        assert!(all.get("nextToken").is_none());
    }

    #[test]
    fn a_tags_token_that_is_not_an_index_is_refused() {
        match tags_page(&tags(1), &json!({"nextToken": "abc"})) {
            Err(ApiError::BadRequest(why)) => {
                assert_eq!(why, "Value at 'nextToken' is not a valid token");
            }
            other => panic!("{other:?}"),
        }
    }
}
