//! Request extractors whose failures speak the API's error format: a malformed body is a 400, a body of the
//! wrong shape a 422 naming the field, an oversized body a 413 — never axum's plain-text rejections.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::BytesRejection},
    http::{StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json =
            request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| {
                value.split(';').next().is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
            });
        let bytes = Bytes::from_request(request, state).await.map_err(body_error)?;
        if !is_json {
            return Err(ApiError::BadRequest("expected a JSON body with Content-Type: application/json".into()));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserialises JSON, naming the offending field when the shape is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|error| ApiError::BadRequest(format!("malformed JSON: {error}")))?;
    if let Some(field) = nul_in(&value, "") {
        return Err(ApiError::invalid(if field.is_empty() { "body" } else { &field }, NO_NUL));
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(&field, strip_position(&error.into_inner().to_string()))
    })
}

/// Text never holds NUL: no name, value or message needs it, and PostgreSQL cannot store it (in `text` or
/// `jsonb`), so letting one through would turn bad input into a server error on one backend only.
const NO_NUL: &str = "must not contain null (NUL) characters";

/// The dotted path of the first string (or key) holding a NUL, if any.
fn nul_in(value: &serde_json::Value, path: &str) -> Option<String> {
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match value {
        serde_json::Value::String(text) => text.contains('\0').then(|| path.to_owned()),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(index, item)| nul_in(item, &format!("{path}[{index}]")))
        }
        serde_json::Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            if key.contains('\0') { Some(join(&key.replace('\0', "\\0"))) } else { nul_in(item, &join(key)) }
        }),
        _ => None,
    }
}

/// serde's messages end with " at line 1 column 42", which means nothing to a client sending a field.
fn strip_position(message: &str) -> String {
    message.find(" at line ").map_or(message, |cut| &message[..cut]).to_owned()
}

pub(crate) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("the request body is larger than the server accepts".into())
    } else {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        if let Some((name, _)) = form_urlencoded::parse(query.as_bytes()).find(|(_, value)| value.contains('\0')) {
            return Err(ApiError::invalid(&name, NO_NUL));
        }
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|error| ApiError::invalid(&error.path().to_string(), error.into_inner().to_string()))
    }
}

/// A path parameter; a value that does not parse is a 404, since no resource has that address.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let not_found = || ApiError::NotFound("no resource at this address".into());
        let raw = axum::extract::RawPathParams::from_request_parts(parts, state).await.map_err(|_| not_found())?;
        if raw.iter().any(|(_, value)| value.contains('\0')) {
            return Err(not_found());
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|_| not_found())
    }
}
