//! Errors as Kubernetes reports them: a `metav1.Status` body with a reason and code.

use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, kind: &str, name: &str, group: &str) -> ApiError {
        let mut d = json!({"name": name, "kind": kind});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        self.details = Some(d);
        self
    }

    /// `pods "web" not found`
    pub fn not_found(plural: &str, group: &str, name: &str) -> ApiError {
        let what = qualified(plural, group);
        ApiError::new(404, "NotFound", format!("{what} \"{name}\" not found")).with_details(plural, name, group)
    }

    pub fn already_exists(plural: &str, group: &str, name: &str) -> ApiError {
        let what = qualified(plural, group);
        ApiError::new(409, "AlreadyExists", format!("{what} \"{name}\" already exists"))
            .with_details(plural, name, group)
    }

    pub fn conflict(plural: &str, group: &str, name: &str) -> ApiError {
        let what = qualified(plural, group);
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(plural, name, group)
    }

    /// 422 with field causes: `Deployment.apps "x" is invalid: spec.replicas: Invalid value: -1: must be ...`
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<(String, String)>) -> ApiError {
        let what = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        let list = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join(", ");
        let message = if causes.len() == 1 {
            format!("{what} \"{name}\" is invalid: {list}")
        } else {
            format!("{what} \"{name}\" is invalid: [{list}]")
        };
        let mut e = ApiError::new(422, "Invalid", message).with_details(kind, name, group);
        if let Some(d) = e.details.as_mut() {
            d["causes"] = causes
                .iter()
                .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
                .collect::<Vec<_>>()
                .into();
        }
        e
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got {content_type}"))
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    pub fn not_found_path() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl From<etcd_client::Error> for ApiError {
    fn from(e: etcd_client::Error) -> ApiError {
        let text = e.to_string();
        if text.contains("required revision has been compacted") {
            return ApiError::gone(format!("too old resource version: {text}"));
        }
        if text.contains("etcdserver: request is too large") || text.contains("message length too large") {
            // The object fits the API server's body limit but not the store's request
            // limit (or even its gRPC message limit, 512 KiB above that, as etcd's).
            return ApiError::new(413, "RequestEntityTooLarge", "etcdserver: request is too large");
        }
        ApiError::unavailable(format!("the store did not answer: {text}"))
    }
}
