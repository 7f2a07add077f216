//! API errors and how they travel: the App Mesh exception name in the
//! `x-amzn-ErrorType` header, the model's HTTP status, and a JSON `message`.
//! That is what the AWS SDKs read to raise the right exception type.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every error the App Mesh API answers, named after the model's exception shapes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    TooManyTags(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The exception shape name, as the SDKs expect it in `x-amzn-ErrorType`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequestException",
            ApiError::Conflict(_) => "ConflictException",
            ApiError::Forbidden(_) => "ForbiddenException",
            ApiError::NotFound(_) => "NotFoundException",
            ApiError::ResourceInUse(_) => "ResourceInUseException",
            ApiError::LimitExceeded(_) => "LimitExceededException",
            ApiError::TooManyTags(_) => "TooManyTagsException",
            ApiError::TooManyRequests(_) => "TooManyRequestsException",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailableException",
            ApiError::Internal(_) => "InternalServerErrorException",
        }
    }

    /// The HTTP status the model gives the exception shape.
    pub fn status(&self) -> StatusCode {
        let code = weft_model::schema()
            .shape(self.error_type())
            .and_then(|s| match &s.kind {
                weft_model::ShapeKind::Structure { error_status, .. } => *error_status,
                _ => None,
            })
            .unwrap_or(500);
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl ApiError {
    /// Whether the error was decided from what the store held (the resource
    /// is missing, exists, is in use, a quota is full, a reference is
    /// dangling) rather than from the request alone or the store's failure:
    /// such an answer is only given from a read that cannot have missed an
    /// acknowledged write.
    pub fn rests_on_reads(&self) -> bool {
        matches!(
            self,
            ApiError::BadRequest(_)
                | ApiError::Conflict(_)
                | ApiError::NotFound(_)
                | ApiError::ResourceInUse(_)
                | ApiError::LimitExceeded(_)
        )
    }
}

impl From<weft_store::StoreError> for ApiError {
    fn from(e: weft_store::StoreError) -> Self {
        match e {
            // Superseded: the answer rested on a decided write that was not
            // applied after all; the client tries again (as SDKs do on 503).
            weft_store::StoreError::Unavailable(m) | weft_store::StoreError::Superseded(m) => {
                ApiError::ServiceUnavailable(m)
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<weft_model::ValidationError> for ApiError {
    fn from(e: weft_model::ValidationError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error_type = self.error_type(), message = %self, "request failed");
        } else {
            tracing::debug!(error_type = self.error_type(), message = %self, "request rejected");
        }
        let body = serde_json::json!({ "message": self.to_string() }).to_string();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            "x-amzn-ErrorType",
            HeaderValue::from_static(self.error_type()),
        );
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        resp
    }
}
