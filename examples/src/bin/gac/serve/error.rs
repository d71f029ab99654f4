//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the
//! HTTP status that fits.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error a request gets back.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 only).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            param: None,
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request is malformed or a value is out of range.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_string),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 404: no such route or model.
    pub fn not_found(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_string),
            code: Some(if param == Some("model") {
                "model_not_found"
            } else {
                "not_found"
            }),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
    }

    /// 401: the API key is missing or wrong.
    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or wrong API key (send it as 'Authorization: Bearer KEY')",
            )
        }
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the limit of {limit} bytes"),
        )
    }

    /// 429: every slot is busy and the queue is full.
    pub fn busy(slots: usize, queue: usize) -> Self {
        Self {
            code: Some("server_busy"),
            retry_after: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "server_busy",
                format!("all {slots} slots are busy and the queue of {queue} is full; retry later"),
            )
        }
    }

    /// 503: the members are still loading or the server is shutting down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: a member failed during the generation.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The error object alone (also sent as a last event of a failed stream).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A gac-core error from a generation: the request's fault (400) or the server's (500).
impl From<gac_core::Error> for ApiError {
    fn from(e: gac_core::Error) -> Self {
        use gac_core::Error as E;
        match &e {
            E::EmptyPrompt => ApiError::invalid(None, e.to_string()),
            E::PromptTooLong { .. } => Self {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(None, e.to_string())
            },
            E::Config { field, .. } if field == "messages" || field == "prompt" => {
                ApiError::invalid(Some(field.as_str()), e.to_string())
            }
            E::Config { .. } => ApiError::invalid(None, e.to_string()),
            E::Setting { .. } => super::api::core_field(&e),
            _ => ApiError::internal(e.to_string()),
        }
    }
}
