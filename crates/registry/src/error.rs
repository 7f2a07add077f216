//! Registry errors, named after Cloud Map's exception shapes, with the HTTP
//! status the model gives each and the extra members some of them carry.

use serde_json::{json, Map, Value};

/// Every error the registry answers.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request breaks a constraint of the model or of Cloud Map.
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NamespaceNotFound(String),
    /// A namespace of that name exists; carries its id and creator request id.
    #[error("{message}")]
    NamespaceAlreadyExists {
        message: String,
        namespace_id: String,
        creator_request_id: Option<String>,
    },
    #[error("{0}")]
    ServiceNotFound(String),
    /// A service of that name exists in the namespace.
    #[error("{message}")]
    ServiceAlreadyExists {
        message: String,
        service_id: String,
        service_arn: String,
        creator_request_id: Option<String>,
    },
    #[error("{0}")]
    InstanceNotFound(String),
    /// The resource still holds services or instances.
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    ResourceLimitExceeded(String),
    /// A `CreatorRequestId` reused for a different request.
    #[error("{message}")]
    DuplicateRequest {
        message: String,
        duplicate_operation_id: Option<String>,
    },
    /// The service has no `HealthCheckCustomConfig`.
    #[error("{0}")]
    CustomHealthNotFound(String),
    #[error("{0}")]
    OperationNotFound(String),
    /// TagResource, UntagResource or ListTagsForResource named an ARN of no
    /// namespace or service.
    #[error("{0}")]
    ResourceNotFound(String),
    /// A resource would carry more tags than allowed; carries its ARN.
    #[error("{message}")]
    TooManyTags {
        message: String,
        resource_name: String,
    },
    /// A service would carry more attributes than allowed.
    #[error("{0}")]
    ServiceAttributesLimitExceeded(String),
    /// Too many concurrent writers on one resource; the client retries.
    #[error("{0}")]
    RequestLimitExceeded(String),
    /// The json 1.1 target or the rpc-v2-cbor path names no served operation.
    #[error("{0}")]
    UnknownOperation(String),
    /// The request body is neither valid JSON nor valid CBOR as announced.
    #[error("{0}")]
    Serialization(String),
    /// The store refuses work (it failed earlier and protects its data).
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    /// The exception name clients map to an error type.
    pub fn error_type(&self) -> &'static str {
        match self {
            RegistryError::InvalidInput(_) => "InvalidInput",
            RegistryError::NamespaceNotFound(_) => "NamespaceNotFound",
            RegistryError::NamespaceAlreadyExists { .. } => "NamespaceAlreadyExists",
            RegistryError::ServiceNotFound(_) => "ServiceNotFound",
            RegistryError::ServiceAlreadyExists { .. } => "ServiceAlreadyExists",
            RegistryError::InstanceNotFound(_) => "InstanceNotFound",
            RegistryError::ResourceInUse(_) => "ResourceInUse",
            RegistryError::ResourceLimitExceeded(_) => "ResourceLimitExceeded",
            RegistryError::DuplicateRequest { .. } => "DuplicateRequest",
            RegistryError::CustomHealthNotFound(_) => "CustomHealthNotFound",
            RegistryError::OperationNotFound(_) => "OperationNotFound",
            RegistryError::ResourceNotFound(_) => "ResourceNotFoundException",
            RegistryError::TooManyTags { .. } => "TooManyTagsException",
            RegistryError::ServiceAttributesLimitExceeded(_) => {
                "ServiceAttributesLimitExceededException"
            }
            RegistryError::RequestLimitExceeded(_) => "RequestLimitExceeded",
            // The names AWS services answer for requests they cannot route or parse.
            RegistryError::UnknownOperation(_) => "UnknownOperationException",
            RegistryError::Serialization(_) => "SerializationException",
            RegistryError::ServiceUnavailable(_) => "ServiceUnavailable",
            RegistryError::Internal(_) => "InternalFailure",
        }
    }

    /// The HTTP status: the model's for its exception shapes, AWS's usual
    /// ones for the rest.
    pub fn status(&self) -> u16 {
        match self {
            RegistryError::UnknownOperation(_) | RegistryError::Serialization(_) => 400,
            RegistryError::ServiceUnavailable(_) => 503,
            RegistryError::Internal(_) => 500,
            other => status_from_model(other.error_type()).unwrap_or(400),
        }
    }

    /// The members of the exception shape, without `__type`.
    pub fn members(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("Message".into(), json!(self.to_string()));
        match self {
            RegistryError::NamespaceAlreadyExists {
                namespace_id,
                creator_request_id,
                ..
            } => {
                m.insert("NamespaceId".into(), json!(namespace_id));
                if let Some(c) = creator_request_id {
                    m.insert("CreatorRequestId".into(), json!(c));
                }
            }
            RegistryError::ServiceAlreadyExists {
                service_id,
                service_arn,
                creator_request_id,
                ..
            } => {
                m.insert("ServiceId".into(), json!(service_id));
                m.insert("ServiceArn".into(), json!(service_arn));
                if let Some(c) = creator_request_id {
                    m.insert("CreatorRequestId".into(), json!(c));
                }
            }
            RegistryError::DuplicateRequest {
                duplicate_operation_id: Some(id),
                ..
            } => {
                m.insert("DuplicateOperationId".into(), json!(id));
            }
            RegistryError::TooManyTags { resource_name, .. } => {
                m.insert("ResourceName".into(), json!(resource_name));
            }
            _ => {}
        }
        m
    }
}

fn status_from_model(shape: &str) -> Option<u16> {
    match crate::model::schema().shape(shape).map(|s| &s.kind) {
        Some(weft_model::ShapeKind::Structure { error_status, .. }) => *error_status,
        _ => None,
    }
}

impl From<weft_store::StoreError> for RegistryError {
    fn from(e: weft_store::StoreError) -> Self {
        match e {
            weft_store::StoreError::Unavailable(m) | weft_store::StoreError::Superseded(m) => {
                RegistryError::ServiceUnavailable(m)
            }
            other => RegistryError::Internal(other.to_string()),
        }
    }
}

/// A request the model refuses: Cloud Map's `InvalidInput`, its message in
/// AWS's form for one constraint ("1 validation error detected: Value at
/// 'Attributes.k' failed to satisfy constraint: …").
impl From<weft_model::ValidationError> for RegistryError {
    fn from(e: weft_model::ValidationError) -> Self {
        RegistryError::InvalidInput(format!("1 validation error detected: {e}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_come_from_the_model() {
        assert_eq!(
            RegistryError::NamespaceNotFound(String::new()).status(),
            404
        );
        assert_eq!(RegistryError::ResourceInUse(String::new()).status(), 409);
        assert_eq!(RegistryError::InvalidInput(String::new()).status(), 400);
        assert_eq!(
            RegistryError::RequestLimitExceeded(String::new()).status(),
            429
        );
        let dup = RegistryError::DuplicateRequest {
            message: "m".into(),
            duplicate_operation_id: Some("op".into()),
        };
        assert_eq!(dup.status(), 409);
        assert_eq!(RegistryError::ResourceNotFound(String::new()).status(), 404);
        let tags = RegistryError::TooManyTags {
            message: "m".into(),
            resource_name: "arn".into(),
        };
        assert_eq!(tags.status(), 400);
        assert_eq!(tags.members()["ResourceName"], "arn");
        assert_eq!(dup.members()["DuplicateOperationId"], "op");
    }

    #[test]
    fn a_request_the_model_refuses_is_invalid_input_in_cloud_maps_words() {
        let input = json!({"MaxResults": 0});
        let refused = crate::model::validate_input("ListNamespaces", &input).unwrap_err();
        let e = RegistryError::from(refused);
        assert_eq!(e.error_type(), "InvalidInput");
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.to_string(),
            "1 validation error detected: Value at 'MaxResults' failed to satisfy constraint: \
             Member must have value greater than or equal to 1"
        );
    }
}
