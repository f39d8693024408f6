//! `Status` error bodies, spelled like kube-apiserver's.

use crate::resource::Kind;
use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn required(field: &str, detail: &str) -> Cause {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            reason: "FieldValueRequired".into(),
            message,
            field: field.into(),
        }
    }
    pub fn not_supported(field: &str, message: &str) -> Cause {
        Cause {
            reason: "FieldValueNotSupported".into(),
            message: message.into(),
            field: field.into(),
        }
    }
    pub fn forbidden(field: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden".into(),
            message: format!("Forbidden: {detail}"),
            field: field.into(),
        }
    }
    pub fn invalid(field: &str, value: &str, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {value:?}: {detail}"),
            field: field.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Details {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Value>,
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// A `Status` object with `status: Failure`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusBody {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Map<String, Value>,
    status: &'static str,
    pub message: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    pub code: u16,
}

/// An API error answer (boxed: it travels in `Result`s).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(Box<StatusBody>);

impl std::ops::Deref for ApiError {
    type Target = StatusBody;
    fn deref(&self) -> &StatusBody {
        &self.0
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: String, details: Option<Details>) -> ApiError {
        ApiError(Box::new(StatusBody {
            kind: "Status",
            api_version: "v1",
            metadata: Map::new(),
            status: "Failure",
            message,
            reason: reason.into(),
            details,
            code,
        }))
    }

    fn res_details(kind: Kind, name: &str) -> Details {
        Details {
            name: name.into(),
            group: kind.group().into(),
            kind: kind.resource().into(),
            ..Default::default()
        }
    }

    fn named(kind: Kind, name: &str) -> String {
        if name.is_empty() {
            kind.qualified_resource()
        } else {
            format!("{} {name:?}", kind.qualified_resource())
        }
    }

    pub fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} not found", ApiError::named(kind, name)),
            Some(ApiError::res_details(kind, name)),
        )
    }

    /// 404 for a URL no resource serves.
    pub fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(Details::default()),
        )
    }

    pub fn already_exists(kind: Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} already exists", ApiError::named(kind, name)),
            Some(ApiError::res_details(kind, name)),
        )
    }

    pub fn conflict(kind: Kind, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}: {why}",
                ApiError::named(kind, name)
            ),
            Some(ApiError::res_details(kind, name)),
        )
    }

    pub fn stale(kind: Kind, name: &str) -> ApiError {
        ApiError::conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(kind: Kind, name: &str, causes: Vec<Cause>) -> ApiError {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let list = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        // events.k8s.io Events are validated as core Events: the real server names them
        // plain "Event", without a group (trace: tests/fixtures/events-cluster-scoped.json).
        let (qualified, group) = match kind {
            Kind::Event => ("Event".to_string(), ""),
            _ => (kind.qualified_kind(), kind.group()),
        };
        ApiError::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {list}"),
            Some(Details {
                name: name.into(),
                group: group.into(),
                kind: kind.kind().into(),
                causes: causes
                    .into_iter()
                    .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                    .collect(),
                retry_after_seconds: None,
            }),
        )
    }

    /// What kube-apiserver answers when a JSON patch cannot be applied.
    pub fn patch_failed(message: String) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request".into(),
            Some(Details {
                causes: vec![serde_json::json!({
                    "reason": "UnexpectedServerResponse",
                    "message": message,
                })],
                ..Default::default()
            }),
        )
    }

    pub fn bad_request(message: String) -> ApiError {
        ApiError::new(400, "BadRequest", message, None)
    }

    pub fn method_not_allowed(message: String) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message, Some(Details::default()))
    }

    pub fn unsupported_media_type(ct: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, got {ct}"
            ),
            Some(Details::default()),
        )
    }

    pub fn expired(message: String) -> ApiError {
        ApiError::new(410, "Expired", message, None)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forbidden(
        kind: Kind,
        name: &str,
        user: &str,
        verb: &str,
        subresource: &str,
        namespace: Option<&str>,
    ) -> ApiError {
        let res = if subresource.is_empty() {
            kind.resource().to_string()
        } else {
            format!("{}/{subresource}", kind.resource())
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_string(),
        };
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} is forbidden: User {user:?} cannot {verb} resource {res:?} in API group {:?} {scope}",
                ApiError::named(kind, name),
                kind.group()
            ),
            Some(ApiError::res_details(kind, name)),
        )
    }

    /// A refusal by an admission plugin: `<resource> "<name>" is forbidden: <why>`.
    pub fn admission_forbidden(kind: Kind, name: &str, why: String) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("{} is forbidden: {why}", ApiError::named(kind, name)),
            Some(ApiError::res_details(kind, name)),
        )
    }

    /// An error injected by a test fault.
    pub fn injected(code: u16, reason: &str) -> ApiError {
        let message = match code {
            500 => "Internal error occurred: injected fault".to_string(),
            429 => "Too many requests, please try again later.".to_string(),
            503 => "the server is currently unable to handle the request".to_string(),
            504 => "the server was unable to return a response in the time allotted, but may still be processing the request".to_string(),
            _ => format!("injected fault ({code})"),
        };
        let details = Details {
            retry_after_seconds: if code == 429 { Some(1) } else { None },
            ..Default::default()
        };
        ApiError::new(code, reason, message, Some(details))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.0).unwrap_or_default()
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(&*self.0).unwrap_or(Value::Null)
    }
}
