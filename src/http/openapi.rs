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
use serde_json::{json, Map, Value};
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
        pub struct $name;

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
pub struct IdInput;

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

/// Any JSON value, or null (for `schema_with`).
pub fn any_or_null() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::Null]))
        .build()
}

/// `{id}` of a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdPath {
    /// An id (positive integer) or, for `role`, a team role name.
    pub id: String,
}

/// `{user_id}` of a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserIdPath {
    /// An id (positive integer) or, for `role`, a team role name.
    pub user_id: String,
}

/// `{success: true}`, the answer of actions with nothing else to say.
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    /// Always true.
    pub success: bool,
}

impl Done {
    /// `{success: true}`.
    pub const OK: Done = Done { success: true };
}

/// `GET /metrics`, whose handler lives in [`super::metrics`]: registered and documented here.
#[derive(Debug)]
pub struct MetricsRoute;

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
pub fn generated() -> utoipa::openapi::OpenApi {
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
    merge_table(&mut doc);
    doc
}

/// This document
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "Success", body = Object)),
)]
#[get("/api/openapi.json")]
pub async fn openapi_json() -> HttpResponse {
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
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'",
        ))
        .body(include_str!("openapi_page.html"))
}

// The operations not generated yet, from the former hand-written table: added to the generated
// document with their schemas (a generated schema of the same name wins).

/// Adds the table's operations and the schemas they name to the generated document.
fn merge_table(doc: &mut Value) {
    let table = table_document();
    if let (Some(paths), Some(more)) = (doc["paths"].as_object_mut(), table["paths"].as_object()) {
        for (path, item) in more {
            let entry = paths.entry(path.clone()).or_insert_with(|| json!({}));
            if let (Some(entry), Some(item)) = (entry.as_object_mut(), item.as_object()) {
                for (method, op) in item {
                    entry.entry(method.clone()).or_insert_with(|| op.clone());
                }
            }
        }
    }
    if let (Some(schemas), Some(more)) = (
        doc["components"]["schemas"].as_object_mut(),
        table["components"]["schemas"].as_object(),
    ) {
        for (name, schema) in more {
            schemas
                .entry(name.clone())
                .or_insert_with(|| schema.clone());
        }
    }
}

/// Where a route is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mount {
    /// Only at the path as written.
    Root,
    /// At the path and under `/api` (the account, conversation and call routes).
    Both,
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A bearer access token.
    Bearer,
    /// A bearer access token of an `admin` (or `master`) user.
    Admin,
    /// `METRICS_TOKEN` when it is set.
    Metrics,
    /// A bearer access token, or a signed URL (`exp`, `sig`) in its place.
    BearerOrSigned,
}

/// One documented operation.
#[derive(Clone, Debug)]
pub struct Operation {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path as registered (`{name}` segments are path parameters).
    pub path: &'static str,
    /// Mount points.
    pub mount: Mount,
    /// Group in the document.
    pub tag: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Query parameters: name, JSON schema, description.
    pub query: Vec<(&'static str, Value, &'static str)>,
    /// Request body schema and whether a body is required.
    pub body: Option<(Value, bool)>,
    /// Success statuses with their body schema (`None`: plain text).
    pub ok: Vec<(u16, Option<Value>)>,
    /// Further error statuses this operation can answer (beyond the common ones).
    pub errors: Vec<u16>,
}

fn op(
    method: &'static str,
    path: &'static str,
    mount: Mount,
    tag: &'static str,
    access: Access,
    summary: &'static str,
) -> Operation {
    Operation {
        method,
        path,
        mount,
        tag,
        summary,
        access,
        query: Vec::new(),
        body: None,
        ok: Vec::new(),
        errors: Vec::new(),
    }
}

impl Operation {
    fn query(mut self, name: &'static str, schema: Value, description: &'static str) -> Self {
        self.query.push((name, schema, description));
        self
    }

    fn body(mut self, schema: Value, required: bool) -> Self {
        self.body = Some((schema, required));
        self
    }

    fn ok(mut self, status: u16, schema: Value) -> Self {
        self.ok.push((status, Some(schema)));
        self
    }
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn nullable_ref(name: &str) -> Value {
    json!({ "allOf": [r(name)], "nullable": true })
}

fn string() -> Value {
    json!({"type": "string"})
}

fn nullable_string() -> Value {
    json!({"type": "string", "nullable": true})
}

fn integer() -> Value {
    json!({"type": "integer", "format": "int64"})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn date_time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn nullable_date_time() -> Value {
    json!({"type": "string", "format": "date-time", "nullable": true})
}

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// An object with `properties`; the names in `required` must be present.
fn object(properties: &[(&str, Value)], required: &[&str]) -> Value {
    let props: Map<String, Value> = properties
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let mut o = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

/// An id as clients send it: a positive integer or its decimal string.
fn components() -> Value {
    let error = object(
        &[(
            "error",
            object(
                &[
                    (
                        "code",
                        json!({"type": "string", "enum": crate::error::ErrorCode::ALL}),
                    ),
                    ("message", string()),
                    ("retryAfter", integer()),
                ],
                &["code", "message"],
            ),
        )],
        &["error"],
    );
    let user = object(
        &[
            ("id", string()),
            ("uid", string()),
            ("_id", string()),
            ("name", string()),
            ("phone", nullable_string()),
            ("email", nullable_string()),
            ("avatar", nullable_string()),
            ("avatarUrl", nullable_string()),
            ("roles", array(string())),
            ("teamRoles", array(string())),
            ("banned", boolean()),
            ("lastSeen", nullable_date_time()),
            ("createdAt", date_time()),
        ],
        &["id", "name", "roles"],
    );
    let token_pair = object(
        &[
            ("accessToken", string()),
            ("token", string()),
            ("refreshToken", string()),
            ("expiresIn", integer()),
            ("sessionId", string()),
            ("user", r("User")),
        ],
        &["accessToken", "refreshToken", "expiresIn", "user"],
    );
    let message = object(
        &[
            ("id", string()),
            ("conversationId", string()),
            ("seq", integer()),
            ("change", integer()),
            ("senderId", nullable_string()),
            ("type", string()),
            ("content", string()),
            ("mediaUrl", nullable_string()),
            ("replyTo", nullable_string()),
            ("metadata", json!({"nullable": true})),
            ("clientMessageId", nullable_string()),
            ("createdAt", date_time()),
            ("editedAt", nullable_date_time()),
            ("deleted", boolean()),
            ("deletedAt", nullable_date_time()),
            ("_id", string()),
            ("from", nullable_string()),
            ("sender", nullable_string()),
            ("conversation", string()),
            ("text", string()),
            ("senderType", nullable_string()),
            ("recipientId", nullable_string()),
            ("recipientType", nullable_string()),
            ("media", media_summary()),
            ("legacyId", string()),
        ],
        &[
            "id",
            "conversationId",
            "seq",
            "type",
            "content",
            "createdAt",
        ],
    );
    let member = object(
        &[
            ("userId", string()),
            ("id", string()),
            ("_id", string()),
            ("role", string()),
            ("name", string()),
            ("avatarUrl", nullable_string()),
            ("avatar", nullable_string()),
            ("joinedAt", date_time()),
            ("deliveredUpTo", integer()),
            ("readUpTo", integer()),
        ],
        &["userId", "role"],
    );
    let conversation = object(
        &[
            ("id", string()),
            ("type", string()),
            ("title", nullable_string()),
            ("avatarUrl", nullable_string()),
            ("teamRole", nullable_string()),
            ("participantKey", nullable_string()),
            ("contextType", nullable_string()),
            ("contextId", nullable_string()),
            ("lastSeq", integer()),
            ("lastChange", integer()),
            ("_id", string()),
            ("members", array(r("Member"))),
            ("participants", array(r("Member"))),
            (
                "deliveredUpTo",
                json!({"type": "object", "additionalProperties": date_time()}),
            ),
            (
                "readUpTo",
                json!({"type": "object", "additionalProperties": date_time()}),
            ),
            ("lastMessage", nullable_ref("Message")),
            ("unreadCount", integer()),
            ("lastMessageAt", nullable_date_time()),
            ("createdAt", date_time()),
        ],
        &["id", "type", "members"],
    );
    let ice_server = object(
        &[
            (
                "urls",
                json!({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
            ),
            ("username", string()),
            ("credential", string()),
        ],
        &["urls"],
    );
    let call = object(
        &[
            ("id", string()),
            ("callId", string()),
            ("type", string()),
            ("callType", string()),
            ("provider", string()),
            ("channelName", nullable_string()),
            ("callerId", nullable_string()),
            ("conversationId", nullable_string()),
            ("status", string()),
            ("endReason", nullable_string()),
            ("endedBy", nullable_string()),
            ("createdAt", date_time()),
            ("answeredAt", nullable_date_time()),
            ("endedAt", nullable_date_time()),
            ("duration", integer()),
            (
                "participants",
                array(object(
                    &[
                        ("userId", string()),
                        ("role", string()),
                        ("status", string()),
                        ("joinedAt", nullable_date_time()),
                        ("leftAt", nullable_date_time()),
                    ],
                    &["userId", "role", "status"],
                )),
            ),
        ],
        &["id", "status", "participants"],
    );
    json!({
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "An access token from a login, refresh or OTP verification."},
            "metricsToken": {"type": "http", "scheme": "bearer",
                "description": "METRICS_TOKEN, when the server sets one."}
        },
        "schemas": {
            "Error": error,
            "User": user,
            "TokenPair": token_pair,
            "Message": message,
            "Media": media_schema(),
            "Member": member,
            "Conversation": conversation,
            "IceServer": ice_server,
            "Call": call,
            "DirectMessage": direct_message(),
            "DirectConversation": direct_conversation(),
        }
    })
}

/// What an upload answers.
fn media_schema() -> Value {
    object(
        &[
            ("id", string()),
            ("url", string()),
            ("contentType", string()),
            (
                "kind",
                json!({"type": "string", "enum": ["image", "audio", "video", "document"]}),
            ),
            ("size", integer()),
            ("sha256", string()),
            ("name", string()),
            ("width", integer()),
            ("height", integer()),
            ("durationMs", integer()),
            ("thumbnailUrl", string()),
        ],
        &["id", "url", "contentType", "kind", "size", "sha256"],
    )
}

/// A message's attachment (absent without one).
fn media_summary() -> Value {
    object(
        &[
            ("id", string()),
            ("url", string()),
            ("contentType", string()),
            ("kind", string()),
            ("size", integer()),
            ("name", string()),
            ("width", integer()),
            ("height", integer()),
            ("durationMs", integer()),
            ("thumbnailUrl", string()),
        ],
        &["id", "url", "contentType", "size"],
    )
}

fn party_type() -> Value {
    json!({"type": "string", "enum": ["user", "astrologer", "admin"]})
}

fn nullable_party_type() -> Value {
    json!({"type": "string", "nullable": true, "enum": ["user", "astrologer", "admin", null]})
}

/// Seed 002's `DirectMessage`: a Message with its app's fields added.
fn direct_message() -> Value {
    json!({"allOf": [r("Message"), object(
        &[
            ("_id", string()),
            ("messageType", string()),
            ("senderType", nullable_party_type()),
            ("recipientId", nullable_string()),
            ("recipientType", nullable_party_type()),
            ("status", json!({"type": "string", "enum": ["sent", "delivered", "read", "failed"]})),
            ("readAt", nullable_date_time()),
            ("deliveredAt", nullable_date_time()),
            ("isDeleted", boolean()),
            ("deletedBy", array(string())),
            ("updatedAt", date_time()),
        ],
        &["_id", "messageType", "status", "isDeleted"],
    )]})
}

/// Seed 002's `DirectConversation` (its `unreadCount` is a count per participant id).
fn direct_conversation() -> Value {
    object(
        &[
            ("_id", string()),
            ("id", string()),
            ("type", string()),
            ("title", nullable_string()),
            (
                "participants",
                array(object(
                    &[
                        ("id", string()),
                        ("type", party_type()),
                        ("name", string()),
                        ("profilePicture", nullable_string()),
                        ("joinedAt", date_time()),
                    ],
                    &["id", "type", "name", "joinedAt"],
                )),
            ),
            ("members", array(r("Member"))),
            (
                "conversationType",
                json!({"type": "string", "enum": ["admin_astrologer", "user_astrologer", "group"]}),
            ),
            ("lastMessage", nullable_ref("DirectMessage")),
            ("isActive", boolean()),
            (
                "unreadCount",
                json!({"type": "object", "additionalProperties": integer()}),
            ),
            (
                "contextType",
                json!({"type": "string", "enum": ["consultation", "service_request", "support", "general"]}),
            ),
            ("contextId", nullable_string()),
            ("createdAt", date_time()),
            ("updatedAt", date_time()),
        ],
        &[
            "_id",
            "participants",
            "conversationType",
            "unreadCount",
            "contextType",
            "isActive",
        ],
    )
}

fn message_envelope() -> Value {
    object(
        &[("message", r("Message")), ("success", boolean())],
        &["message"],
    )
}

fn message_page() -> Value {
    object(
        &[
            ("messages", array(r("Message"))),
            ("conversationId", string()),
            (
                "cursors",
                object(
                    &[
                        ("before", json!({"type": "integer", "nullable": true})),
                        ("after", json!({"type": "integer", "nullable": true})),
                    ],
                    &[],
                ),
            ),
            ("hasMore", boolean()),
        ],
        &["messages", "hasMore"],
    )
}

fn page_query(o: Operation) -> Operation {
    o.query(
        "before",
        json!({"type": "integer", "minimum": 0}),
        "Messages with a seq below this.",
    )
    .query(
        "after",
        json!({"type": "integer", "minimum": 0}),
        "Messages with a seq above this.",
    )
    .query(
        "limit",
        json!({"type": "integer", "minimum": 1, "maximum": 200}),
        "Page size (default 50).",
    )
}

/// Every REST operation the table still documents.
pub fn operations() -> Vec<Operation> {
    dashboard_operations()
}

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": {"type": "string"},
                "description": "An id (positive integer) or, for `role`, a team role name.",
            })
        })
        .collect()
}

fn describe(o: &Operation, path: &str) -> Value {
    let mut params = path_params(path);
    for (name, schema, description) in &o.query {
        params.push(json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description}));
    }
    let mut responses = Map::new();
    for (status, schema) in &o.ok {
        let content = match schema {
            Some(s) => json!({"application/json": {"schema": s}}),
            None => json!({"text/plain": {"schema": {"type": "string"}}}),
        };
        let text = match o.path {
            "/api/docs" => json!({"text/html": {"schema": {"type": "string"}}}),
            _ => content,
        };
        responses.insert(
            status.to_string(),
            json!({"description": "Success", "content": text}),
        );
    }
    // Errors every operation of its kind can answer, all as `{error: {code, message}}`.
    let mut errors: Vec<u16> = vec![400, 404, 503];
    if o.access != Access::Public {
        errors.push(401);
    }
    if matches!(o.access, Access::Bearer | Access::Admin) {
        errors.extend([403, 409, 429]);
    }
    if o.path.starts_with("/auth/") {
        errors.extend([401, 403, 409, 429]);
    }
    if o.body.is_some() {
        errors.push(413);
    }
    errors.extend(&o.errors);
    if matches!(
        o.path,
        "/ping" | "/api/health" | "/api/openapi.json" | "/api/docs"
    ) {
        errors.clear();
    }
    if o.path == "/health" || o.path == "/metrics" {
        errors.retain(|s| *s == 401);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        responses
            .entry(status.to_string())
            .or_insert_with(|| json!({"description": reason(status), "content": {"application/json": {"schema": r("Error")}}}));
    }
    let mut out = json!({
        "operationId": operation_id(o.method, path),
        "summary": o.summary,
        "tags": [o.tag],
        "parameters": params,
        "responses": responses,
    });
    match o.access {
        Access::Public => out["security"] = json!([]),
        Access::Bearer | Access::Admin => out["security"] = json!([{"bearer": []}]),
        Access::Metrics => out["security"] = json!([{}, {"metricsToken": []}]),
        Access::BearerOrSigned => out["security"] = json!([{"bearer": []}, {}]),
    }
    if let Some((schema, required)) = &o.body {
        out["requestBody"] = match o.path {
            // An upload: a form with a `file` part, or the file itself.
            "/media" => json!({"required": true, "content": {
                "multipart/form-data": {"schema": schema},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }}),
            _ => json!({"required": required, "content": {"application/json": {"schema": schema}}}),
        };
    }
    if o.path.starts_with("/media/") {
        // The file itself, in its own content type; a range of it; not modified.
        let file = json!({"*/*": {"schema": {"type": "string", "format": "binary"}}});
        out["responses"]["200"] = json!({"description": "The file", "content": file});
        out["responses"]["206"] =
            json!({"description": "The requested range of the file", "content": file});
        out["responses"]["304"] = json!({"description": "Not modified (If-None-Match)"});
        out["responses"]["416"] = json!({"description": "Range not satisfiable",
            "content": {"application/json": {"schema": r("Error")}}});
    }
    out
}

/// The table's part of the document.
fn table_document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for o in operations() {
        let mut at = vec![o.path.to_owned()];
        if o.mount == Mount::Both {
            at.push(format!("/api{}", o.path));
        }
        for path in at {
            let item = paths.entry(path.clone()).or_insert_with(|| json!({}));
            item[o.method] = describe(&o, &path);
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Switchboard",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Chat and WebRTC call signaling. REST routes are listed here; the \
                realtime transports are `GET /ws` (WebSocket, JSON frames \
                `{event, payload, id}`, token in `?token=` or `Authorization: Bearer`) and \
                Socket.IO v5 at `/socket.io/` (token in the CONNECT auth payload). Every error \
                is `{\"error\": {\"code\", \"message\"}}` with a stable snake_case code.",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "health"}, {"name": "operations"}, {"name": "auth"}, {"name": "users"},
            {"name": "conversations"}, {"name": "messages"}, {"name": "team chat"},
            {"name": "calls"}, {"name": "admin"}, {"name": "support"},
            {"name": "chat requests"}, {"name": "contacts"}
        ],
        "paths": paths,
        "components": dashboard_components(components()),
    })
}

// Admin dashboard, seed 002 support conversations, seed 003 chat requests and contacts.

/// The shapes of the admin dashboard, chat request and support routes, added to [`components`]
/// (and the support owner of a conversation added to `Conversation`).
fn dashboard_components(mut base: Value) -> Value {
    let admin_user = json!({"allOf": [
        r("User"),
        object(
            &[
                ("bannedAt", nullable_date_time()),
                ("banReason", nullable_string()),
                ("online", boolean()),
                ("connections", integer()),
            ],
            &["online", "connections"],
        ),
    ]});
    let connection = object(
        &[
            ("key", integer()),
            ("deviceSession", nullable_string()),
            ("transport", string()),
            ("dialect", string()),
        ],
        &["key", "transport", "dialect"],
    );
    let device_session = object(
        &[
            ("id", string()),
            ("deviceName", nullable_string()),
            ("userAgent", nullable_string()),
            ("ip", nullable_string()),
            ("createdAt", date_time()),
            ("lastUsedAt", date_time()),
            ("revokedAt", nullable_date_time()),
            ("revokedReason", nullable_string()),
            ("liveConnections", integer()),
        ],
        &["id", "createdAt", "lastUsedAt", "liveConnections"],
    );
    let audit_entry = object(
        &[
            ("id", string()),
            ("actorId", nullable_string()),
            ("action", string()),
            ("targetType", string()),
            ("targetId", nullable_string()),
            ("details", json!({"nullable": true})),
            ("ip", nullable_string()),
            ("createdAt", date_time()),
        ],
        &["id", "action", "targetType", "createdAt"],
    );
    let call_summary = object(
        &[
            ("callId", string()),
            ("callerId", string()),
            ("calleeIds", array(string())),
            ("group", boolean()),
            ("answered", boolean()),
            ("call", nullable_ref("Call")),
        ],
        &["callId", "callerId", "calleeIds", "group", "answered"],
    );
    let counts = json!({"type": "object", "additionalProperties": integer()});
    let stats = object(
        &[
            ("onlineUsers", integer()),
            (
                "connections",
                object(
                    &[
                        ("total", integer()),
                        ("byTransport", counts.clone()),
                        ("byDialect", counts.clone()),
                        (
                            "byTransportAndDialect",
                            array(object(
                                &[
                                    ("transport", string()),
                                    ("dialect", string()),
                                    ("count", integer()),
                                ],
                                &["transport", "dialect", "count"],
                            )),
                        ),
                    ],
                    &["total", "byTransport", "byDialect", "byTransportAndDialect"],
                ),
            ),
            ("activeCalls", integer()),
            ("activeConversations", integer()),
            (
                "messages",
                object(
                    &[("lastMinute", integer()), ("today", integer())],
                    &["lastMinute", "today"],
                ),
            ),
            (
                "calls",
                object(
                    &[("today", integer()), ("todayByOutcome", counts)],
                    &["today", "todayByOutcome"],
                ),
            ),
            (
                "users",
                object(
                    &[("total", integer()), ("banned", integer())],
                    &["total", "banned"],
                ),
            ),
            ("generatedAt", date_time()),
        ],
        &[
            "onlineUsers",
            "connections",
            "activeCalls",
            "activeConversations",
            "messages",
            "calls",
            "users",
            "generatedAt",
        ],
    );
    let added = [
        ("AdminUser", admin_user),
        ("Connection", connection),
        ("DeviceSession", device_session),
        ("AuditEntry", audit_entry),
        ("CallSummary", call_summary),
        ("Stats", stats),
    ];
    if let Some(schemas) = base["schemas"].as_object_mut() {
        for (name, schema) in added {
            schemas.insert(name.to_owned(), schema);
        }
    }
    if let Some(props) = base["schemas"]["Conversation"]["properties"].as_object_mut() {
        props.insert("supportUserId".to_owned(), nullable_string());
    }
    base
}

/// `{success, user, closedConnections}` of the role and ban changes.
fn admin_user_change() -> Value {
    object(
        &[
            ("success", boolean()),
            ("user", r("AdminUser")),
            ("closedConnections", integer()),
        ],
        &["success", "user", "closedConnections"],
    )
}

/// A support conversation with its newest messages and the caller's unread count.
/// A message for a support conversation (the conversation comes from the route).
/// `{success, <list>: [...], nextCursor}` of the admin lists.
fn admin_page(list: &str, item: &str) -> Value {
    object(
        &[
            ("success", boolean()),
            (list, array(r(item))),
            ("nextCursor", nullable_string()),
        ],
        &["success", list, "nextCursor"],
    )
}

fn admin_limit(o: Operation, default: &'static str) -> Operation {
    o.query(
        "limit",
        json!({"type": "integer", "minimum": 1, "maximum": 200}),
        default,
    )
}

fn id_query() -> Value {
    json!({"type": "string", "pattern": "^[0-9]{1,18}$"})
}

/// The admin dashboard (`/admin/…`).
fn admin_operations() -> Vec<Operation> {
    use Access::Admin;
    use Mount::Both;
    let tag = "admin";
    vec![
        op(
            "get",
            "/admin/stats",
            Both,
            tag,
            Admin,
            "Live and daily counts: users online, connections by transport and dialect, calls, messages",
        )
        .ok(
            200,
            object(
                &[("success", boolean()), ("stats", r("Stats"))],
                &["success", "stats"],
            ),
        ),
        admin_limit(
            op(
                "get",
                "/admin/users",
                Both,
                tag,
                Admin,
                "Search users by ascending id, with filters",
            )
            .query(
                "q",
                string(),
                "Name, phone or e-mail contains this (also `search` or `query`).",
            )
            .query("role", string(), "Holds this role.")
            .query("teamRole", string(), "Holds this team role.")
            .query("banned", boolean(), "Banned (true) or not (false).")
            .query(
                "online",
                boolean(),
                "With (true) or without (false) a live connection.",
            )
            .query("cursor", id_query(), "`nextCursor` of the previous page."),
            "Page size (default 50).",
        )
        .ok(200, admin_page("users", "AdminUser")),
        op(
            "get",
            "/admin/users/{id}",
            Both,
            tag,
            Admin,
            "One user with device sessions, live connections and current call",
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("user", r("AdminUser")),
                    ("devices", array(r("DeviceSession"))),
                    ("connections", array(r("Connection"))),
                    ("activeCallId", nullable_string()),
                ],
                &["success", "user", "devices", "connections", "activeCallId"],
            ),
        ),
        op(
            "patch",
            "/admin/users/{id}/roles",
            Both,
            tag,
            Admin,
            "Replace roles and/or team roles (users who lose a role are disconnected)",
        )
        .body(roles_body(), true)
        .ok(200, admin_user_change()),
        op(
            "put",
            "/admin/users/{id}/roles",
            Both,
            tag,
            Admin,
            "Replace roles and/or team roles (same as PATCH)",
        )
        .body(roles_body(), true)
        .ok(200, admin_user_change()),
        op(
            "post",
            "/admin/users/{id}/ban",
            Both,
            tag,
            Admin,
            "Ban a user: ends their call, refuses their tokens, closes their sockets",
        )
        .body(object(&[("reason", nullable_string())], &[]), false)
        .ok(200, admin_user_change()),
        op(
            "post",
            "/admin/users/{id}/unban",
            Both,
            tag,
            Admin,
            "Lift a ban",
        )
        .ok(
            200,
            object(
                &[("success", boolean()), ("user", r("AdminUser"))],
                &["success", "user"],
            ),
        ),
        op(
            "post",
            "/admin/users/{id}/logout",
            Both,
            tag,
            Admin,
            "Sign a user out everywhere: revoke device sessions and earlier tokens, close sockets",
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("revokedSessions", integer()),
                    ("closedConnections", integer()),
                ],
                &["success", "revokedSessions", "closedConnections"],
            ),
        ),
        admin_limit(
            op(
                "get",
                "/admin/conversations",
                Both,
                tag,
                Admin,
                "Search conversations, newest first",
            )
            .query(
                "q",
                string(),
                "Title, or a member's name or phone, contains this (also `search` or `query`).",
            )
            .query(
                "type",
                json!({"type": "string", "enum": ["direct", "group", "team", "support"]}),
                "Conversation type (also `kind`).",
            )
            .query("userId", id_query(), "Has this member.")
            .query("contextType", string(), "Carries this context type.")
            .query("cursor", id_query(), "`nextCursor` of the previous page."),
            "Page size (default 30, at most 100).",
        )
        .ok(200, admin_page("conversations", "Conversation")),
        page_query(
            op(
                "get",
                "/admin/messages",
                Both,
                tag,
                Admin,
                "Read any conversation's messages (recorded in the audit log)",
            )
            .query(
                "conversationId",
                json!({"type": "integer", "minimum": 1}),
                "The conversation (required).",
            ),
        )
        .ok(200, message_page()),
        op(
            "delete",
            "/admin/messages/{id}",
            Both,
            tag,
            Admin,
            "Delete any message (fans out `message:deleted`)",
        )
        .ok(200, message_envelope()),
        op(
            "get",
            "/admin/calls/live",
            Both,
            tag,
            Admin,
            "Calls in progress with their parties",
        )
        .ok(
            200,
            object(
                &[("success", boolean()), ("calls", array(r("CallSummary")))],
                &["success", "calls"],
            ),
        ),
        admin_limit(
            op(
                "get",
                "/admin/calls",
                Both,
                tag,
                Admin,
                "Call history, newest first, with filters",
            )
            .query("status", string(), "Final or current status.")
            .query("userId", id_query(), "A party of the call.")
            .query(
                "callType",
                json!({"type": "string", "enum": ["audio", "video"]}),
                "Audio or video.",
            )
            .query("since", date_time(), "Started at or after.")
            .query("until", date_time(), "Started before.")
            .query(
                "cursor",
                json!({"type": "string", "pattern": "^[0-9]{1,18}_.+$"}),
                "`nextCursor` of the previous page.",
            ),
            "Page size (default 50).",
        )
        .ok(200, admin_page("calls", "Call")),
        op(
            "post",
            "/admin/calls/{id}/end",
            Both,
            tag,
            Admin,
            "End a live call for every party (reason `admin`)",
        )
        .body(
            object(
                &[(
                    "reason",
                    json!({"type": "string", "nullable": true, "description": "A note for the audit log."}),
                )],
                &[],
            ),
            false,
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("callId", string()),
                    ("reason", json!({"type": "string", "enum": ["admin"]})),
                ],
                &["success", "callId", "reason"],
            ),
        ),
        admin_limit(
            op(
                "get",
                "/admin/audit",
                Both,
                tag,
                Admin,
                "The audit log of admin actions, newest first",
            )
            .query("actorId", id_query(), "The admin who acted.")
            .query("action", string(), "Action, e.g. `user.ban`.")
            .query("targetType", string(), "`user`, `conversation`, `message` or `call`.")
            .query("targetId", string(), "Id of the target.")
            .query("cursor", id_query(), "`nextCursor` of the previous page."),
            "Page size (default 50).",
        )
        .ok(200, admin_page("entries", "AuditEntry")),
    ]
}

fn role_list() -> Value {
    json!({
        "type": "array",
        "maxItems": 32,
        "items": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
    })
}

fn roles_body() -> Value {
    let mut body = object(&[("roles", role_list()), ("teamRoles", role_list())], &[]);
    body["anyOf"] = json!([{"required": ["roles"]}, {"required": ["teamRoles"]}]);
    body
}

/// Every operation of the admin dashboard, support, chat request and contact routes.
fn dashboard_operations() -> Vec<Operation> {
    admin_operations()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

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
}
