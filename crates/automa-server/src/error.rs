//! The one error type of the API. Every handler returns it; its response is always `{"detail": ...}` with the
//! status DESIGN §8 names. Server faults are logged with their cause and answered with a generic message, so
//! internals never leak to clients.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use automa_core::InvalidField;
use automa_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{}", .0.message)]
    Unprocessable(InvalidField),
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_seconds: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// Unavailable for now: the client should retry after the given delay.
    #[error("{detail}")]
    Busy { detail: String, retry_after_seconds: u64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub detail: String,
    /// For validation errors: the field that was rejected (dotted for nested fields, e.g. `schedule.cron`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable(InvalidField::new(field, message))
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::NotFound(format!("{what} not found"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(message) | StoreError::InUse(message) => ApiError::Conflict(message),
            StoreError::Invalid(field) => ApiError::Unprocessable(field),
            other => ApiError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<InvalidField> for ApiError {
    fn from(field: InvalidField) -> Self {
        ApiError::Unprocessable(field)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
                ErrorBody { detail: "internal server error".into(), field: None }
            }
            ApiError::Unprocessable(invalid) => ErrorBody {
                detail: format!("{}: {}", invalid.field, invalid.message),
                field: Some(invalid.field.clone()),
            },
            other => ErrorBody { detail: other.to_string(), field: None },
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests { retry_after_seconds, .. } | ApiError::Busy { retry_after_seconds, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
            }
            _ => {}
        }
        response
    }
}

/// Maps the store's `NotFound` to a 404 that names what was missing.
pub fn missing(what: &'static str) -> impl FnOnce(StoreError) -> ApiError {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}
