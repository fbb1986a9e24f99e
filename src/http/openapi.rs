//! The OpenAPI 3.0 document of every REST route, served at `GET /api/openapi.json`, and a
//! self-contained interactive page at `GET /api/docs` (no external scripts or styles).
//!
//! The document is generated with utoipa from the code: each handler carries a
//! `#[utoipa::path]` next to its actix route attribute, its request and response bodies are
//! types deriving `ToSchema` (query strings `IntoParams`), and [`super::routes`] registers the
//! handlers through `utoipa_actix_web`, which collects the documentation of exactly what it
//! registers, at both mounts (the root and `/api`). utoipa writes OpenAPI 3.1; [`document`]
//! turns that into the 3.0 the document has always been (`nullable` instead of `null` types),
//! names each operation after its method and path, and marks operations without a security
//! requirement as public (`security: []`). The realtime transports (`GET /ws`, `/socket.io/`)
//! are not REST and are described in the document's description instead.

use crate::error::ErrorBody;
use actix_web::dev::{AppService, HttpServiceFactory};
use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_actix_web::AppExt;

/// The document's description: the realtime transports and the error envelope.
const DESCRIPTION: &str = "Chat and WebRTC call signaling. REST routes are listed here; the \
    realtime transports are `GET /ws` (WebSocket, JSON frames `{event, payload, id}`, token in \
    `?token=` or `Authorization: Bearer`) and Socket.IO v5 at `/socket.io/` (token in the \
    CONNECT auth payload). Every error is `{\"error\": {\"code\", \"message\"}}` with a stable \
    snake_case code.";

/// The document's frame; the operations come from the registered handlers.
#[derive(OpenApi)]
#[openapi(
    servers((url = "/")),
    tags(
        (name = "health"), (name = "operations"), (name = "auth"), (name = "users"),
        (name = "conversations"), (name = "messages"), (name = "team chat"), (name = "calls"),
        (name = "admin"), (name = "support"), (name = "chat requests"), (name = "contacts"),
    ),
    components(schemas(ErrorBody)),
    modifiers(&Frame),
)]
struct ApiDoc;

/// Title, version and description, and the two security schemes.
struct Frame;

impl Modify for Frame {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        api.info = InfoBuilder::new()
            .title("Switchboard")
            .version(env!("CARGO_PKG_VERSION"))
            .description(Some(DESCRIPTION))
            .build();
        let components = api.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".to_owned());
        bearer.description =
            Some("An access token from a login, refresh or OTP verification.".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        let mut metrics = Http::new(HttpAuthScheme::Bearer);
        metrics.description = Some("METRICS_TOKEN, when the server sets one.".to_owned());
        components.add_security_scheme("metricsToken", SecurityScheme::Http(metrics));
    }
}

/// What an error status means, in the document.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Malformed or invalid input",
        401 => "Missing, invalid or expired credentials",
        403 => "Not allowed",
        404 => "Not found",
        409 => "Conflicts with the current state",
        408 => "The request body stalled",
        413 => "Body or content too large",
        415 => "Unsupported media type (read from the bytes)",
        416 => "Range not satisfiable",
        429 => "Rate limited (see retryAfter)",
        503 => "A dependency (the database) is unavailable, or the server is overloaded (see retryAfter)",
        _ => "Error",
    }
}

/// Error statuses, each answered with the `Error` body.
fn error_responses(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|status| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build();
            let response = ResponseBuilder::new()
                .description(reason(*status))
                .content("application/json", content)
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// Declares a set of error statuses for `responses(...)` of `#[utoipa::path]`.
macro_rules! error_set {
    ($(#[$doc:meta])* $name:ident: $($status:literal),+) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(crate) struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                error_responses(&[$($status),+])
            }
        }
    };
}

error_set!(
    /// What a route behind a bearer token can answer besides success.
    Errors: 400, 401, 403, 404, 409, 429, 503
);
error_set!(
    /// [`Errors`], and 413 for a route that reads a body (also the public `/auth/*` routes).
    BodyErrors: 400, 401, 403, 404, 409, 413, 429, 503
);
error_set!(
    /// An upload: [`BodyErrors`], a stalled body (408) and a type that is not accepted (415).
    UploadErrors: 400, 401, 403, 404, 408, 409, 413, 415, 429, 503
);
error_set!(
    /// A file download (a bearer token or a signed URL): no rate limits or conflicts, but ranges.
    FileErrors: 400, 401, 403, 404, 416, 503
);
error_set!(
    /// `/metrics` with `METRICS_TOKEN` set and not given.
    MetricsErrors: 401
);

/// An id as clients send it in bodies: a positive integer or its decimal string.
#[derive(Debug)]
pub(crate) struct IdInput;

impl utoipa::PartialSchema for IdInput {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(1)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{1,18}$")),
            )
            .into()
    }
}

impl ToSchema for IdInput {}

/// A string, one of `values` (for `schema_with`).
pub(crate) fn string_enum(
    values: impl IntoIterator<Item = &'static str>,
) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values))
        .build()
}

/// Any JSON value, or null (for `schema_with`).
pub(crate) fn any_or_null() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::Null]))
        .build()
}

/// `{id}` of a path.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IdPath {
    /// An id (positive integer) or, for `role`, a team role name.
    pub id: String,
}

/// `{user_id}` of a path.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct UserIdPath {
    /// An id (positive integer) or, for `role`, a team role name.
    pub user_id: String,
}

/// `{success: true}`, the answer of actions with nothing else to say.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Done {
    /// Always true.
    pub success: bool,
}

impl Done {
    /// `{success: true}`.
    pub(crate) const OK: Done = Done { success: true };
}

/// `GET /metrics`, whose handler lives in [`super::metrics`]: registered and documented here.
#[derive(Debug)]
pub(crate) struct MetricsRoute;

/// Prometheus metrics (text format 0.0.4)
#[utoipa::path(
    impl_for = MetricsRoute,
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("metricsToken" = [])),
    responses(
        (status = 200, description = "Success", body = String, content_type = "text/plain"),
        MetricsErrors,
    ),
)]
fn register_metrics(config: &mut AppService) {
    web::resource("/metrics")
        .route(web::get().to(super::metrics::metrics))
        .register(config);
}

impl HttpServiceFactory for MetricsRoute {
    fn register(self, config: &mut AppService) {
        register_metrics(config);
    }
}

/// The generated part of the document: the frame and every operation that [`super::routes`]
/// registers.
pub(crate) fn generated() -> utoipa::openapi::OpenApi {
    let (_, collected) = actix_web::App::new()
        .into_utoipa_app()
        .configure(super::routes)
        .split_for_parts();
    let mut api = ApiDoc::openapi();
    api.merge(collected);
    api
}

/// `operationId` of a method and path: `post_api_auth_login` for `POST /api/auth/login`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            seg.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

/// OpenAPI 3.1 schemas as 3.0 writes them: `type: [T, "null"]` becomes `type: T` with
/// `nullable: true`, `oneOf: [S, {type: "null"}]` becomes `allOf: [S]` with `nullable: true`, a
/// one-way `oneOf` (utoipa's wrapper of a described field) becomes its schema, and keywords 3.0
/// does not have are dropped.
fn to_openapi_30(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("$ref") {
                // A reference stands alone in 3.0.
                map.retain(|key, _| key == "$ref");
                return;
            }
            if let Some(Value::Array(types)) = map.get("type") {
                let mut kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
                let nullable = kept.len() < types.len();
                match kept.len() {
                    1 => {
                        map.insert("type".to_owned(), kept.remove(0));
                    }
                    _ => {
                        map.remove("type");
                    }
                }
                if nullable {
                    map.insert("nullable".to_owned(), Value::Bool(true));
                }
            }
            let null_alternative = |alts: &Vec<Value>| {
                alts.len() == 2 && alts.iter().any(|a| a.get("type") == Some(&json!("null")))
            };
            if let Some(Value::Array(alts)) = map.get("oneOf") {
                if null_alternative(alts) {
                    let others: Vec<Value> = alts
                        .iter()
                        .filter(|a| a.get("type") != Some(&json!("null")))
                        .cloned()
                        .collect();
                    map.remove("oneOf");
                    map.insert("allOf".to_owned(), Value::Array(others));
                    map.insert("nullable".to_owned(), Value::Bool(true));
                }
            }
            if let Some(Value::Array(alts)) = map.get("oneOf") {
                if let [only] = alts.as_slice() {
                    let only = only.clone();
                    map.remove("oneOf");
                    match only {
                        Value::Object(inner) if !inner.contains_key("$ref") => {
                            for (key, value) in inner {
                                map.entry(key).or_insert(value);
                            }
                        }
                        other => {
                            map.insert("allOf".to_owned(), Value::Array(vec![other]));
                        }
                    }
                }
            }
            map.remove("propertyNames");
            map.remove("contentMediaType");
            map.remove("contentEncoding");
            for child in map.values_mut() {
                to_openapi_30(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_openapi_30),
        _ => {}
    }
}

/// The whole document, as served.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(generated()).unwrap_or_default();
    to_openapi_30(&mut doc);
    doc["openapi"] = json!("3.0.3");
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                op["operationId"] = json!(operation_id(method, path));
                if op.get("security").is_none() {
                    op["security"] = json!([]);
                }
                if op.get("parameters").is_none() {
                    op["parameters"] = json!([]);
                }
                // utoipa's actix integration also infers path parameters from `web::Path`
                // arguments: the declared one of each name (with its description) is kept.
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    let mut seen = std::collections::BTreeSet::new();
                    params.retain(|p| seen.insert((p["in"].to_string(), p["name"].to_string())));
                }
                // An optional body (`Option<T>`) is `required: false`, not a nullable schema.
                if let Some(content) = op
                    .get_mut("requestBody")
                    .and_then(|b| b.get_mut("content"))
                    .and_then(Value::as_object_mut)
                {
                    for media in content.values_mut() {
                        if let Some(schema) = media.get_mut("schema").and_then(Value::as_object_mut)
                        {
                            if schema.remove("nullable").is_some() {
                                if let Some(Value::Array(parts)) = schema.remove("allOf") {
                                    if let [only] = parts.as_slice() {
                                        *schema = only.as_object().cloned().unwrap_or_default();
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    doc
}

/// This document
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Success", body = Object)),
)]
#[get("/api/openapi.json")]
pub(crate) async fn openapi_json() -> HttpResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| document().to_string());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body.clone())
}

/// Interactive API page (HTML)
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Success", body = String, content_type = "text/html")),
)]
#[get("/api/docs")]
pub(crate) async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'",
        ))
        .body(include_str!("openapi_page.html"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn no_two_types_share_a_schema_name() {
        let seen = super::super::schemas_registered_by(|| {
            generated();
        });
        assert!(seen.len() > 100, "only {} schemas collected", seen.len());
        let mut by_name: BTreeMap<&str, Value> = BTreeMap::new();
        for (name, schema) in &seen {
            let json = serde_json::to_value(schema).unwrap();
            let first = by_name.entry(name).or_insert_with(|| json.clone());
            assert_eq!(
                *first, json,
                "two different types are both named {name} in the document: rename one \
                 (#[schema(as = ...)])"
            );
        }
    }

    #[test]
    fn operation_ids_are_unique_and_refs_resolve() {
        let doc = document();
        let mut ids = std::collections::HashSet::new();
        for (_, item) in doc["paths"].as_object().unwrap() {
            for (_, op) in item.as_object().unwrap() {
                assert!(ids.insert(op["operationId"].as_str().unwrap().to_owned()));
            }
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
    }

    #[test]
    fn utoipa_schemas_become_openapi_3_0() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "type": {"type": ["string", "null"], "description": "A property named type."},
                "last": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Message"}]},
                "one": {"oneOf": [{"type": "integer"}], "description": "Wrapped."},
                "map": {"type": "object", "propertyNames": {"type": "string"}},
                "any": {"type": ["null"]},
                "link": {"$ref": "#/components/schemas/User", "description": "Dropped."},
            },
        });
        to_openapi_30(&mut schema);
        assert_eq!(
            schema["properties"],
            json!({
                "type": {"type": "string", "nullable": true, "description": "A property named type."},
                "last": {"allOf": [{"$ref": "#/components/schemas/Message"}], "nullable": true},
                "one": {"type": "integer", "description": "Wrapped."},
                "map": {"type": "object"},
                "any": {"nullable": true},
                "link": {"$ref": "#/components/schemas/User"},
            })
        );
    }

    #[test]
    fn operations_are_named_after_method_and_path() {
        assert_eq!(
            operation_id("post", "/api/auth/login"),
            "post_api_auth_login"
        );
        assert_eq!(
            operation_id("delete", "/conversations/{id}/members/{user_id}"),
            "delete_conversations__id__members__user_id_"
        );
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        let login = &doc["paths"]["/api/auth/login"]["post"];
        assert_eq!(login["operationId"], "post_api_auth_login");
        assert_eq!(login["security"], json!([]));
        assert_eq!(
            doc["paths"]["/users/me"]["get"]["security"],
            json!([{"bearer": []}])
        );
    }
}
