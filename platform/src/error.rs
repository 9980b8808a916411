//! The one public error type of the API and its mapping to RFC 9457 problem+json.
//!
//! Handlers and the application layer return [`ApiError`]; this module is the only place
//! that turns an error into an HTTP status and body. Internal errors keep their chain for
//! the log and answer a generic 500 whose body names the request id and nothing else.
//!
//! The request id: [`crate::api`] gives every request one (`x-request-id`, kept when the
//! caller sends one), records it on the request's log span, and runs the request inside
//! [`request_scope`], so that a problem built while answering it can carry it
//! (`request_id`, on 5xx answers: the one a person reads out to the operator, who finds
//! the log lines by it).

use axum::{
    Json,
    extract::{
        FromRequest, Request,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field, such as `domain` or `aliases[1]`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// RFC 9457 problem details, as every error response carries them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The request's id (its `x-request-id`), on 5xx answers: every log line of the
    /// request carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `future` (the rest of a request's handling) with `request_id` as the id the
/// problems built inside it name.
pub async fn request_scope<F: std::future::Future>(request_id: String, future: F) -> F::Output {
    REQUEST_ID.scope(request_id, future).await
}

/// The id of the request being answered, inside [`request_scope`].
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("invalid fields")]
    Invalid(Vec<FieldError>),
    #[error("authentication required")]
    Unauthorized(&'static str),
    #[error("not allowed")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("conflict: {detail}")]
    Conflict {
        detail: String,
        field: Option<&'static str>,
    },
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    /// A dependency (the database) is unreachable for now: 503 with Retry-After.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    pub fn conflict(field: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self::Conflict {
            detail: detail.into(),
            field,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> Problem {
        let status = self.status();
        let (slug, detail, errors) = match self {
            Self::BadRequest(detail) => ("bad-request", detail.clone(), vec![]),
            Self::Invalid(errors) => (
                "invalid-fields",
                "one or more fields are invalid".to_owned(),
                errors.clone(),
            ),
            Self::Unauthorized(detail) => ("unauthorized", (*detail).to_owned(), vec![]),
            Self::Forbidden(detail) => ("forbidden", (*detail).to_owned(), vec![]),
            Self::NotFound(what) => ("not-found", format!("{what} not found"), vec![]),
            Self::Conflict { detail, field } => (
                "conflict",
                detail.clone(),
                field
                    .map(|f| vec![FieldError::new(f, detail.clone())])
                    .unwrap_or_default(),
            ),
            Self::PayloadTooLarge => (
                "payload-too-large",
                "the request body is too large".to_owned(),
                vec![],
            ),
            Self::UnsupportedMediaType => (
                "unsupported-media-type",
                "send the body as application/json".to_owned(),
                vec![],
            ),
            Self::TooManyRequests { retry_after_secs } => (
                "too-many-requests",
                format!("too many attempts; retry after {retry_after_secs} s"),
                vec![],
            ),
            Self::Unavailable(_) => (
                "unavailable",
                "the database is unreachable for now; retry shortly".to_owned(),
                vec![],
            ),
            Self::Internal(_) => (
                "internal",
                "an internal error occurred; the request id identifies it in the logs".to_owned(),
                vec![],
            ),
        };
        Problem {
            kind: format!("https://pressdock.dev/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail,
            errors,
            request_id: status.is_server_error().then(current_request_id).flatten(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(err) => tracing::error!(error = format!("{err:#}"), "request failed"),
            Self::Unavailable(err) => {
                tracing::warn!(error = format!("{err:#}"), "dependency unavailable")
            }
            _ => {}
        }
        let status = self.status();
        let mut response = (status, Json(self.problem())).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::TooManyRequests { retry_after_secs } = self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response
    }
}

/// The connection broke or no connection could be had: the database (or the router in
/// front of it) is failing over or down. Clients may retry.
fn database_unreachable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
    )
}

impl From<anyhow::Error> for ApiError {
    /// A handler's error with context: a broken database connection anywhere in its chain
    /// is still a 503 to retry (a Galera writer failing over cuts sessions), not a 500.
    fn from(err: anyhow::Error) -> Self {
        let unreachable = err
            .chain()
            .any(|cause| cause.downcast_ref().is_some_and(database_unreachable));
        if unreachable {
            Self::Unavailable(err)
        } else {
            Self::Internal(err)
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if database_unreachable(&err) {
            Self::Unavailable(anyhow::Error::new(err).context("database"))
        } else {
            Self::Internal(anyhow::Error::new(err).context("database"))
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::JsonDataError(err) => {
                // serde_path_to_error renders "path: message"; split it into the field.
                let text = std::error::Error::source(&err)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| err.body_text());
                match text.split_once(": ") {
                    Some((path, message)) if !path.contains(' ') => {
                        Self::field(path, message.to_owned())
                    }
                    _ => Self::field("body", text),
                }
            }
            JsonRejection::JsonSyntaxError(err) => Self::BadRequest(format!(
                "the body is not valid JSON: {}",
                std::error::Error::source(&err)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            )),
            JsonRejection::BytesRejection(err) => {
                if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Self::PayloadTooLarge
                } else {
                    Self::BadRequest("the body could not be read".to_owned())
                }
            }
            _ => Self::BadRequest("the body could not be read".to_owned()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        Self::NotFound("resource")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        let message = text.trim_start_matches("Failed to deserialize query string: ");
        Self::field("query", message.to_owned())
    }
}

/// A JSON object body whose rejections are problem+json with the field named.
///
/// Every request body of the API is an object: serde would also build a struct from an
/// array (`[]` is a `RebalanceRequest` with every field defaulted), which the OpenAPI
/// document does not allow, so anything but an object is 422 naming `body`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Self::Rejection::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|err| {
                if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest("the body could not be read".to_owned())
                }
            })?;
        let is_object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) if is_object => Ok(Self(value)),
            Err(err @ JsonRejection::JsonSyntaxError(_)) => Err(err.into()),
            _ if !is_object => Err(ApiError::field("body", "must be a JSON object")),
            Ok(Json(value)) => Ok(Self(value)),
            Err(err) => Err(err.into()),
        }
    }
}

/// `application/json` or `application/*+json`, as axum's `Json` accepts.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// Query string whose rejections are problem+json.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Path parameters whose rejections are problem+json.
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_database_connection_under_context_is_a_503_and_other_errors_are_500() {
        let cut = anyhow::Error::new(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "expected to read 4 bytes, got 0 bytes at EOF",
        )))
        .context("reading the certificates to serve");
        let api = ApiError::from(cut);
        assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = api.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");

        let refused = anyhow::Error::new(sqlx::Error::RowNotFound).context("reading a row");
        assert_eq!(
            ApiError::from(refused).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let plain = anyhow::anyhow!("a stored certificate does not open");
        assert_eq!(
            ApiError::from(plain).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
