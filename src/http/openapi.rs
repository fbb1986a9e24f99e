//! The OpenAPI 3.0 document of every REST route, built from the table in [`operations`] and
//! served at `GET /api/openapi.json`, and a self-contained interactive page at `GET /api/docs`
//! (no external scripts or styles).
//!
//! Routes mounted both at the root and under `/api` are documented at both paths. A test reads
//! the route registrations in `src/http/` and fails when one is missing here. The realtime
//! transports (`GET /ws`, `/socket.io/`) are not REST and are described in the document's
//! description instead.

use crate::state::AppState;
use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

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

    fn text(mut self, status: u16) -> Self {
        self.ok.push((status, None));
        self
    }

    fn errors(mut self, statuses: &[u16]) -> Self {
        self.errors.extend_from_slice(statuses);
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
fn id_input() -> Value {
    json!({"oneOf": [
        {"type": "integer", "format": "int64", "minimum": 1},
        {"type": "string", "pattern": "^[0-9]{1,18}$"}
    ]})
}

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

fn conversation_envelope() -> Value {
    object(
        &[("conversation", r("Conversation")), ("success", boolean())],
        &["conversation"],
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

fn send_body() -> Value {
    object(
        &[
            ("conversationId", id_input()),
            ("to", id_input()),
            ("content", string()),
            (
                "type",
                json!({"type": "string", "enum": ["text", "image", "audio", "file"]}),
            ),
            ("mediaUrl", string()),
            ("replyTo", id_input()),
            ("metadata", json!({"type": "object"})),
            (
                "clientMessageId",
                json!({"type": "string", "minLength": 1, "maxLength": 128}),
            ),
        ],
        &[],
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

fn cursor_query(o: Operation, default: &'static str) -> Operation {
    o.query("cursor", string(), "`nextCursor` of the previous page.")
        .query(
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": 100}),
            default,
        )
}

fn ice_answer() -> Value {
    object(
        &[
            ("success", boolean()),
            ("iceServers", array(r("IceServer"))),
        ],
        &["iceServers"],
    )
}

/// Every REST operation, in the order of the document.
pub fn operations() -> Vec<Operation> {
    use Access::{Admin, Bearer, Metrics, Public};
    use Mount::{Both, Root};
    let ok_flag = object(&[("success", boolean())], &["success"]);
    vec![
        op("get", "/ping", Root, "health", Public, "Liveness: `pong`").text(200),
        op(
            "get",
            "/health",
            Root,
            "health",
            Public,
            "Readiness: touches the database",
        )
        .ok(
            200,
            object(
                &[
                    ("status", string()),
                    ("db", string()),
                    ("uptime", json!({"type": "number"})),
                ],
                &["status", "db"],
            ),
        )
        .ok(
            503,
            object(
                &[
                    ("status", string()),
                    ("db", string()),
                    ("error", json!({"type": "object"})),
                ],
                &["status", "db"],
            ),
        ),
        op(
            "get",
            "/api/health",
            Root,
            "health",
            Public,
            "Seed 001 health: status, timestamp, uptime",
        )
        .ok(
            200,
            object(
                &[
                    ("status", string()),
                    ("timestamp", date_time()),
                    ("uptime", json!({"type": "number"})),
                ],
                &["status", "timestamp", "uptime"],
            ),
        ),
        op(
            "get",
            "/metrics",
            Root,
            "operations",
            Metrics,
            "Prometheus metrics (text format 0.0.4)",
        )
        .text(200),
        op(
            "get",
            "/api/openapi.json",
            Root,
            "operations",
            Public,
            "This document",
        )
        .ok(200, json!({"type": "object"})),
        op(
            "get",
            "/api/docs",
            Root,
            "operations",
            Public,
            "Interactive API page (HTML)",
        )
        .text(200),
        // Accounts and authentication.
        op(
            "post",
            "/auth/login",
            Both,
            "auth",
            Public,
            "Password login by phone or e-mail",
        )
        .body(
            object(
                &[
                    ("phone", string()),
                    ("email", string()),
                    ("password", string()),
                    ("deviceName", string()),
                ],
                &["password"],
            ),
            true,
        )
        .ok(200, r("TokenPair")),
        op(
            "post",
            "/auth/refresh",
            Both,
            "auth",
            Public,
            "Rotate a refresh token (single use)",
        )
        .body(
            object(&[("refreshToken", string())], &["refreshToken"]),
            true,
        )
        .ok(200, r("TokenPair")),
        op(
            "post",
            "/auth/logout",
            Both,
            "auth",
            Bearer,
            "Revoke the caller's device session",
        )
        .ok(
            200,
            object(
                &[("success", boolean()), ("revoked", boolean())],
                &["success"],
            ),
        ),
        op(
            "post",
            "/auth/send-otp",
            Both,
            "auth",
            Public,
            "Send a registration code",
        )
        .body(object(&[("phone", string())], &["phone"]), true)
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("message", string()),
                    ("expiresIn", integer()),
                ],
                &["success"],
            ),
        ),
        op(
            "post",
            "/auth/verify-otp-register",
            Both,
            "auth",
            Public,
            "Verify a registration code: creates the account and logs in",
        )
        .body(
            object(
                &[
                    ("phone", string()),
                    ("otp", string()),
                    ("name", string()),
                    ("email", string()),
                    ("password", string()),
                    ("deviceName", string()),
                ],
                &["phone", "otp"],
            ),
            true,
        )
        .ok(201, r("TokenPair")),
        op(
            "post",
            "/auth/send-otp-login",
            Both,
            "auth",
            Public,
            "Send a login code",
        )
        .body(object(&[("phone", string())], &["phone"]), true)
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("message", string()),
                    ("expiresIn", integer()),
                ],
                &["success"],
            ),
        ),
        op(
            "post",
            "/auth/verify-otp-login",
            Both,
            "auth",
            Public,
            "Log in with a code",
        )
        .body(
            object(
                &[
                    ("phone", string()),
                    ("otp", string()),
                    ("deviceName", string()),
                ],
                &["phone", "otp"],
            ),
            true,
        )
        .ok(200, r("TokenPair")),
        op(
            "get",
            "/users/profile",
            Both,
            "users",
            Bearer,
            "The caller's profile",
        )
        .ok(
            200,
            object(&[("user", r("User")), ("success", boolean())], &["user"]),
        ),
        op(
            "get",
            "/users/me",
            Both,
            "users",
            Bearer,
            "The caller's profile",
        )
        .ok(
            200,
            object(&[("user", r("User")), ("success", boolean())], &["user"]),
        ),
        op(
            "patch",
            "/users/me",
            Both,
            "users",
            Bearer,
            "Change name and/or avatar (`null` clears the avatar)",
        )
        .body(
            object(
                &[
                    ("name", string()),
                    ("avatar", nullable_string()),
                    ("avatarUrl", nullable_string()),
                ],
                &[],
            ),
            true,
        )
        .ok(
            200,
            object(&[("user", r("User")), ("success", boolean())], &["user"]),
        ),
        cursor_query(
            op(
                "get",
                "/users",
                Both,
                "users",
                Bearer,
                "Search users by name or phone",
            )
            .query("q", string(), "Text to search for."),
            "Page size (default 20).",
        )
        .ok(
            200,
            object(
                &[
                    ("users", array(r("User"))),
                    ("nextCursor", nullable_string()),
                ],
                &["users"],
            ),
        ),
        // Conversations and messages.
        cursor_query(
            op(
                "get",
                "/conversations",
                Both,
                "conversations",
                Bearer,
                "The caller's conversations, most recent first",
            ),
            "Page size (default 30).",
        )
        .ok(
            200,
            object(
                &[
                    ("conversations", array(r("Conversation"))),
                    ("nextCursor", nullable_string()),
                ],
                &["conversations"],
            ),
        ),
        op(
            "post",
            "/conversations",
            Both,
            "conversations",
            Bearer,
            "Create a group, or get or create a direct conversation",
        )
        .body(
            object(
                &[
                    (
                        "type",
                        json!({"type": "string", "enum": ["direct", "group"]}),
                    ),
                    ("title", string()),
                    ("participants", array(id_input())),
                    ("userId", id_input()),
                ],
                &[],
            ),
            true,
        )
        .ok(200, conversation_envelope())
        .ok(201, conversation_envelope()),
        op(
            "get",
            "/conversations/{id}",
            Both,
            "conversations",
            Bearer,
            "One conversation",
        )
        .ok(200, conversation_envelope()),
        op(
            "post",
            "/conversations/{id}/members",
            Both,
            "conversations",
            Bearer,
            "Add members to a group (owner, group admin or platform admin)",
        )
        .body(
            object(&[("userIds", array(id_input()))], &["userIds"]),
            true,
        )
        .ok(
            200,
            object(
                &[("success", boolean()), ("added", array(string()))],
                &["success", "added"],
            ),
        ),
        op(
            "delete",
            "/conversations/{id}/members/{user_id}",
            Both,
            "conversations",
            Bearer,
            "Remove a member (or leave)",
        )
        .ok(200, ok_flag.clone()),
        page_query(op(
            "get",
            "/conversations/{id}/messages",
            Both,
            "messages",
            Bearer,
            "A page of a conversation's messages",
        ))
        .ok(200, message_page()),
        op(
            "post",
            "/conversations/{id}/messages",
            Both,
            "messages",
            Bearer,
            "Send a message (acknowledged after its commit)",
        )
        .body(send_body(), true)
        .ok(201, message_envelope()),
        page_query(
            op(
                "get",
                "/messages",
                Both,
                "messages",
                Bearer,
                "A page of messages (seed 003)",
            )
            .query(
                "conversationId",
                json!({"type": "integer", "minimum": 1}),
                "The conversation.",
            ),
        )
        .ok(200, message_page()),
        op(
            "post",
            "/messages",
            Both,
            "messages",
            Bearer,
            "Send a message to a conversation or, with `to`, to a user (seed 003)",
        )
        .body(send_body(), true)
        .ok(201, message_envelope()),
        op(
            "patch",
            "/messages/{id}",
            Both,
            "messages",
            Bearer,
            "Edit an own message",
        )
        .body(object(&[("content", string())], &["content"]), true)
        .ok(200, message_envelope()),
        op(
            "delete",
            "/messages/{id}",
            Both,
            "messages",
            Bearer,
            "Delete a message (own, or any for moderators)",
        )
        .ok(200, message_envelope()),
        op(
            "get",
            "/team-chat/{role}",
            Both,
            "team chat",
            Bearer,
            "The team conversation of a role",
        )
        .ok(200, conversation_envelope()),
        page_query(op(
            "get",
            "/team-chat/{role}/messages",
            Both,
            "team chat",
            Bearer,
            "A page of a team conversation",
        ))
        .ok(200, message_page()),
        op(
            "post",
            "/team-chat/{role}/messages",
            Both,
            "team chat",
            Bearer,
            "Send to a team conversation",
        )
        .body(send_body(), true)
        .ok(201, message_envelope()),
        op(
            "delete",
            "/team-chat/{role}/messages/{message_id}",
            Both,
            "team chat",
            Bearer,
            "Delete a team message",
        )
        .ok(200, message_envelope()),
        op(
            "delete",
            "/messages/dm/{user_id}/messages/{message_id}",
            Both,
            "messages",
            Bearer,
            "Delete a message of the direct conversation with a user",
        )
        .ok(200, message_envelope()),
        // Calls.
        op(
            "get",
            "/ice-servers",
            Both,
            "calls",
            Bearer,
            "STUN/TURN servers with fresh TURN credentials",
        )
        .ok(200, ice_answer()),
        op(
            "get",
            "/ice-servers/{user_id}",
            Both,
            "calls",
            Bearer,
            "ICE servers for a user (self, or any for admins)",
        )
        .ok(200, ice_answer()),
        op(
            "post",
            "/turn-credentials",
            Both,
            "calls",
            Bearer,
            "TURN REST credentials (coturn `use-auth-secret`)",
        )
        .body(
            object(
                &[
                    ("userId", id_input()),
                    ("ttl", json!({"type": "integer", "minimum": 0})),
                ],
                &[],
            ),
            false,
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("username", string()),
                    ("credential", string()),
                    ("password", string()),
                    ("ttl", integer()),
                    ("expiresAt", integer()),
                    ("uris", array(string())),
                    ("iceServers", array(r("IceServer"))),
                ],
                &["username", "credential", "ttl"],
            ),
        ),
        op(
            "post",
            "/calls/initiate",
            Both,
            "calls",
            Bearer,
            "Start a call (1:1 with `to`, group with `conversationId`)",
        )
        .body(
            object(
                &[
                    ("to", id_input()),
                    ("conversationId", id_input()),
                    ("memberIds", array(id_input())),
                    (
                        "callType",
                        json!({"type": "string", "enum": ["audio", "voice", "video"]}),
                    ),
                    ("isVideo", boolean()),
                    ("sdpOffer", json!({"type": "object"})),
                    (
                        "provider",
                        json!({"type": "string", "enum": ["webrtc", "agora"]}),
                    ),
                ],
                &[],
            ),
            true,
        )
        .ok(
            201,
            object(
                &[
                    ("success", boolean()),
                    ("callId", string()),
                    (
                        "call",
                        object(
                            &[
                                ("callId", string()),
                                ("status", string()),
                                ("iceServers", array(r("IceServer"))),
                            ],
                            &["callId", "status"],
                        ),
                    ),
                ],
                &["callId", "call"],
            ),
        ),
        cursor_query(
            op(
                "get",
                "/calls/history",
                Both,
                "calls",
                Bearer,
                "The caller's calls, most recent first",
            ),
            "Page size (default 20).",
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("calls", array(r("Call"))),
                    ("nextCursor", nullable_string()),
                ],
                &["calls"],
            ),
        ),
        op(
            "post",
            "/calls/{id}/end",
            Both,
            "calls",
            Bearer,
            "End or cancel a call",
        )
        .body(object(&[("reason", string())], &[]), false)
        .ok(200, ok_flag.clone()),
        op(
            "get",
            "/calls/{id}",
            Both,
            "calls",
            Bearer,
            "One call with its participants",
        )
        .ok(
            200,
            object(&[("success", boolean()), ("call", r("Call"))], &["call"]),
        ),
        op(
            "get",
            "/admin/calls/stats",
            Both,
            "calls",
            Admin,
            "Call statistics (admin)",
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    (
                        "stats",
                        object(
                            &[
                                ("totalCalls", integer()),
                                ("activeCalls", integer()),
                                (
                                    "calls",
                                    array(object(
                                        &[
                                            ("roomName", string()),
                                            ("callId", string()),
                                            ("participants", array(integer())),
                                            ("callType", string()),
                                            ("duration", integer()),
                                            ("status", string()),
                                            ("startedAt", date_time()),
                                        ],
                                        &["roomName", "participants", "callType", "duration"],
                                    )),
                                ),
                            ],
                            &["totalCalls", "activeCalls"],
                        ),
                    ),
                ],
                &["stats"],
            ),
        ),
        op(
            "post",
            "/calls/admin/token",
            Both,
            "calls",
            Admin,
            "An Agora RTC token for a channel (admin)",
        )
        .body(
            object(
                &[
                    ("channelName", json!({"type": "string", "maxLength": 64})),
                    (
                        "uid",
                        json!({"type": "integer", "minimum": 0, "maximum": 4_294_967_295_u64}),
                    ),
                ],
                &[],
            ),
            false,
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("channelName", string()),
                    ("token", string()),
                    ("uid", integer()),
                    ("appId", string()),
                ],
                &["token", "channelName"],
            ),
        )
        .errors(&[400]),
        op(
            "post",
            "/media",
            Both,
            "media",
            Bearer,
            "Upload a file (type read from its bytes; images stripped of metadata)",
        )
        .body(
            object(
                &[("file", json!({"type": "string", "format": "binary"}))],
                &["file"],
            ),
            true,
        )
        .ok(201, r("Media"))
        .errors(&[408, 413, 415, 429]),
        media_download(
            "get",
            "/media/{id}",
            "A file (uploader, conversation members, or a signed URL)",
        ),
        media_download("get", "/media/{id}/thumbnail", "An image's thumbnail"),
        media_download(
            "head",
            "/media/{id}",
            "A file's headers (length, type, ETag)",
        ),
        media_download("head", "/media/{id}/thumbnail", "A thumbnail's headers"),
    ]
    .into_iter()
    .chain(dashboard_operations())
    .collect()
}

fn media_download(method: &'static str, path: &'static str, summary: &'static str) -> Operation {
    op(
        method,
        path,
        Mount::Both,
        "media",
        Access::BearerOrSigned,
        summary,
    )
    .query(
        "exp",
        integer(),
        "Signed URL: expiry (Unix seconds); with `sig`, no Authorization is needed.",
    )
    .query("sig", string(), "Signed URL: signature.")
    .errors(&[403, 416])
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
        429 => "Rate limited (see retryAfter)",
        503 => "A dependency (the database) is unavailable, or the server is overloaded (see retryAfter)",
        _ => "Error",
    }
}

/// Every documented `(method, path)` pair, with `/api` duplicates.
pub fn documented_routes() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for o in operations() {
        out.push((o.method.to_owned(), o.path.to_owned()));
        if o.mount == Mount::Both {
            out.push((o.method.to_owned(), format!("/api{}", o.path)));
        }
    }
    out
}

/// The whole document.
pub fn document() -> Value {
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

/// `GET /api/openapi.json`.
pub async fn openapi_json(_state: web::Data<AppState>) -> HttpResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| document().to_string());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body.clone())
}

/// `GET /api/docs`: a page that loads the document and lets one send requests with a token.
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

// Admin dashboard, seed 002 support conversations, seed 003 chat requests and contacts.

/// The shapes of the admin dashboard, chat request and support routes, added to [`components`]
/// (and the support owner of a conversation added to `Conversation`).
fn dashboard_components(mut base: Value) -> Value {
    let party = object(
        &[
            ("id", string()),
            ("_id", string()),
            ("name", string()),
            ("avatarUrl", nullable_string()),
            ("avatar", nullable_string()),
        ],
        &["id", "name"],
    );
    let chat_request = object(
        &[
            ("id", string()),
            ("_id", string()),
            ("fromUserId", string()),
            ("toUserId", string()),
            ("from", nullable_ref("ChatRequestParty")),
            ("to", nullable_ref("ChatRequestParty")),
            ("message", nullable_string()),
            ("status", chat_request_status()),
            ("conversationId", nullable_string()),
            ("createdAt", date_time()),
            ("respondedAt", nullable_date_time()),
        ],
        &["id", "fromUserId", "toUserId", "status", "createdAt"],
    );
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
        ("ChatRequestParty", party),
        ("ChatRequest", chat_request),
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

fn chat_request_status() -> Value {
    json!({"type": "string", "enum": ["pending", "accepted", "declined", "cancelled"]})
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
fn support_answer() -> Value {
    object(
        &[
            ("success", boolean()),
            ("conversation", r("DirectConversation")),
            ("messages", array(r("DirectMessage"))),
            ("unreadCount", integer()),
        ],
        &["success", "conversation", "messages", "unreadCount"],
    )
}

/// A message for a support conversation (the conversation comes from the route).
fn support_send_body() -> Value {
    object(
        &[
            ("content", string()),
            (
                "type",
                json!({"type": "string", "enum": ["text", "image", "audio", "file"]}),
            ),
            ("mediaUrl", string()),
            ("replyTo", id_input()),
            ("metadata", json!({"type": "object"})),
            (
                "clientMessageId",
                json!({"type": "string", "minLength": 1, "maxLength": 128}),
            ),
        ],
        &[],
    )
}

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

/// Seed 002's support conversations (staff side and admin side).
fn support_operations() -> Vec<Operation> {
    use Access::{Admin, Bearer};
    use Mount::Both;
    let tag = "support";
    vec![
        op(
            "get",
            "/conversations/admin",
            Both,
            tag,
            Bearer,
            "The caller's support conversation with the admins, with recent messages (not for admins)",
        )
        .ok(200, support_answer()),
        page_query(op(
            "get",
            "/conversations/admin/messages",
            Both,
            tag,
            Bearer,
            "A page of the caller's support conversation",
        ))
        .ok(200, message_page()),
        op(
            "post",
            "/conversations/admin/messages",
            Both,
            tag,
            Bearer,
            "Write to the admins",
        )
        .body(support_send_body(), true)
        .ok(201, message_envelope()),
        op(
            "get",
            "/admin/conversations/{user_id}",
            Both,
            tag,
            Admin,
            "The support conversation of a user (created on first use), with recent messages",
        )
        .ok(200, support_answer()),
        page_query(op(
            "get",
            "/admin/conversations/{user_id}/messages",
            Both,
            tag,
            Admin,
            "A page of a user's support conversation",
        ))
        .ok(200, message_page()),
        op(
            "post",
            "/admin/conversations/{user_id}/messages",
            Both,
            tag,
            Admin,
            "Reply in a user's support conversation",
        )
        .body(support_send_body(), true)
        .ok(201, message_envelope()),
        op(
            "post",
            "/admin/calls/initiate",
            Both,
            tag,
            Admin,
            "Call a user (Agora when configured and no provider is named)",
        )
        .body(
            object(
                &[
                    ("astrologerId", id_input()),
                    ("calleeId", id_input()),
                    ("to", id_input()),
                    (
                        "callType",
                        json!({"type": "string", "enum": ["audio", "voice", "video"]}),
                    ),
                    ("isVideo", boolean()),
                    (
                        "provider",
                        json!({"type": "string", "enum": ["webrtc", "agora", "auto"]}),
                    ),
                    (
                        "roomName",
                        json!({"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,128}$"}),
                    ),
                    ("sdpOffer", json!({"type": "object"})),
                ],
                &[],
            ),
            true,
        )
        .ok(
            201,
            object(
                &[
                    ("success", boolean()),
                    ("callId", string()),
                    (
                        "call",
                        object(
                            &[
                                ("callId", string()),
                                (
                                    "status",
                                    json!({"type": "string", "enum": ["ringing", "busy", "glare"]}),
                                ),
                                ("callType", string()),
                                ("iceServers", array(r("IceServer"))),
                                ("channelName", string()),
                                ("agoraToken", nullable_string()),
                                ("agora", json!({"type": "object"})),
                            ],
                            &["callId", "status", "callType", "iceServers"],
                        ),
                    ),
                    ("channelName", nullable_string()),
                    ("agoraToken", nullable_string()),
                ],
                &["success", "callId", "call"],
            ),
        ),
    ]
}

/// Seed 003's chat requests and contacts.
fn contact_operations() -> Vec<Operation> {
    use Access::Bearer;
    use Mount::Both;
    let request_answer = object(
        &[
            ("success", boolean()),
            ("request", r("ChatRequest")),
            ("conversation", nullable_ref("Conversation")),
        ],
        &["success", "request", "conversation"],
    );
    let created_request = object(
        &[
            ("success", boolean()),
            ("created", boolean()),
            ("request", r("ChatRequest")),
        ],
        &["success", "created", "request"],
    );
    let opened = object(
        &[
            ("success", boolean()),
            ("created", boolean()),
            ("conversation", r("Conversation")),
        ],
        &["success", "created", "conversation"],
    );
    let mut ops = vec![
        op(
            "post",
            "/chat-requests",
            Both,
            "chat requests",
            Bearer,
            "Ask a user to chat (201 new; 200 the pending request that already exists)",
        )
        .body(
            object(
                &[
                    ("to", id_input()),
                    (
                        "message",
                        json!({"type": "string", "nullable": true, "maxLength": 1000, "description": "A greeting (also `text` or `content`)."}),
                    ),
                ],
                &["to"],
            ),
            true,
        )
        .ok(200, created_request.clone())
        .ok(201, created_request),
        op(
            "get",
            "/chat-requests",
            Both,
            "chat requests",
            Bearer,
            "The caller's incoming and outgoing requests, newest first",
        )
        .query(
            "status",
            json!({"type": "string", "enum": ["all", "pending", "accepted", "declined", "cancelled"]}),
            "Only requests in this status (default all).",
        )
        .query(
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": 200}),
            "Most requests per list (default 100).",
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("incoming", array(r("ChatRequest"))),
                    ("outgoing", array(r("ChatRequest"))),
                ],
                &["success", "incoming", "outgoing"],
            ),
        ),
    ];
    for (path, summary) in [
        (
            "/chat-requests/{id}/accept",
            "Accept (recipient): opens the direct conversation; repeating it returns it again",
        ),
        ("/chat-requests/{id}/decline", "Decline (recipient)"),
        ("/chat-requests/{id}/cancel", "Withdraw (sender)"),
    ] {
        ops.push(
            op("post", path, Both, "chat requests", Bearer, summary)
                .ok(200, request_answer.clone()),
        );
    }
    let phone_item = json!({"oneOf": [
        {"type": "string"},
        object(
            &[("phone", string()), ("name", nullable_string())],
            &["phone"],
        ),
    ]});
    ops.push(
        op(
            "post",
            "/contacts/sync",
            Both,
            "contacts",
            Bearer,
            "Store address-book numbers and find the registered users among them",
        )
        .body(
            object(
                &[
                    (
                        "phones",
                        json!({"type": "array", "items": phone_item, "description": "Numbers (also `contacts`, `phoneNumbers` or `numbers`); at most CONTACTS_SYNC_MAX."}),
                    ),
                    (
                        "countryCode",
                        json!({"type": "string", "nullable": true, "pattern": "^\\s*(\\+?[1-9][0-9]{0,2})?\\s*$"}),
                    ),
                    ("replace", boolean()),
                ],
                &[],
            ),
            true,
        )
        .ok(
            200,
            object(
                &[
                    ("success", boolean()),
                    ("users", array(r("User"))),
                    ("matched", integer()),
                    ("stored", integer()),
                    ("invalid", array(string())),
                ],
                &["success", "users", "matched", "stored", "invalid"],
            ),
        ),
    );
    ops.push(
        op(
            "post",
            "/contacts/start-chat",
            Both,
            "contacts",
            Bearer,
            "Open the direct conversation with a user, by id or phone (contact policy applies)",
        )
        .body(
            object(
                &[
                    ("userId", id_input()),
                    ("phone", string()),
                    (
                        "countryCode",
                        json!({"type": "string", "nullable": true, "pattern": "^\\s*(\\+?[1-9][0-9]{0,2})?\\s*$"}),
                    ),
                ],
                &[],
            ),
            true,
        )
        .ok(200, opened.clone())
        .ok(201, opened),
    );
    ops
}

/// Every operation of the admin dashboard, support, chat request and contact routes.
fn dashboard_operations() -> Vec<Operation> {
    let mut ops = admin_operations();
    ops.extend(support_operations());
    ops.extend(contact_operations());
    ops
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
