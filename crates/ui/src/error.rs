//! The dashboard's errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What can go wrong serving the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// Reading the store failed.
    #[error("reading the store: {0}")]
    Store(#[from] weft_store::StoreError),
    /// A stored record is not the JSON it should be.
    #[error("a stored record does not parse: {0}")]
    Record(#[from] serde_json::Error),
    /// The request has no valid session.
    #[error("no dashboard session: open the URL `weft dashboard` prints")]
    Unauthenticated,
    /// The login token is unknown, used or expired.
    #[error("the login token is unknown, already used or expired: run `weft dashboard` again")]
    BadLoginToken,
    /// Too many live-refresh connections are open.
    #[error("too many dashboard connections are open; close a tab and retry")]
    TooManyConnections,
    /// The operating system's random generator failed.
    #[error("no randomness for a token: {0}")]
    Random(String),
    /// Something asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::Store(_) | UiError::Record(_) | UiError::Random(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            UiError::Unauthenticated | UiError::BadLoginToken => StatusCode::UNAUTHORIZED,
            UiError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
        };
        (
            status,
            axum::Json(serde_json::json!({"message": self.to_string()})),
        )
            .into_response()
    }
}
