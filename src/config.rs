//! Settings: one struct, read from an optional TOML file and then from environment variables
//! (the environment wins). Every field documents its variable and default; `.env.example` lists
//! the same table. [`Config::validate`] refuses unsafe combinations with a message an operator
//! can act on.

use crate::policy::{ContactPolicy, ContactRules};
use crate::realtime::dialect::Dialect;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Group-commit writers of a cluster node when `WRITE_SHARDS` is not set.
const CLUSTER_WRITE_SHARDS: usize = 1;

/// A secret string whose `Debug` output is masked so it never reaches a log line.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            write!(f, "\"***\" ({} bytes)", self.0.len())
        }
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// How one-time codes reach the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtpSenderKind {
    /// Write the code to the log (development).
    Log,
    /// POST `{phone, code, purpose, expiresInSecs}` as JSON to `OTP_WEBHOOK_URL` (an SMS gateway).
    Webhook,
}

impl FromStr for OtpSenderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "log" => Ok(Self::Log),
            "webhook" => Ok(Self::Webhook),
            other => Err(format!(
                "unknown OTP sender `{other}` (expected `log` or `webhook`)"
            )),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" | "pretty" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format `{other}` (expected `text` or `json`)"
            )),
        }
    }
}

/// A comma-separated list in the environment, an array in TOML.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl FromStr for List {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(
            s.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// Every setting of the server. Field docs name the environment variable and the default.
#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL` — PostgreSQL connection URL. Required.
    pub database_url: Secret,
    /// `DB_POOL_SIZE` — connections in the pool; also the bound on concurrent queries. Default 16.
    pub db_pool_size: u32,
    /// `DB_ACQUIRE_TIMEOUT_MS` — how long a request waits for a pooled connection before it is
    /// answered 503 `unavailable`. Default 2000.
    pub db_acquire_timeout: Duration,
    /// `DB_CHECK_IDLE_MS` — a pooled connection idle longer than this (or whose last work failed)
    /// is checked with `SELECT 1` before it is handed out; one used more recently is trusted.
    /// 0 checks every checkout. Default 1000.
    pub db_check_idle: Duration,
    /// `JWT_SECRET` — HMAC key for access tokens, OTP digests and TURN credentials; at least
    /// 32 bytes unless `SWITCHBOARD_DEV=1`. Required.
    pub jwt_secret: Secret,
    /// `SWITCHBOARD_DEV` — development mode: allows a short `JWT_SECRET`. Default false.
    pub dev_mode: bool,
    /// `BIND` — listen address of the HTTP/WebSocket server. Default `127.0.0.1:8080`.
    pub bind: String,
    /// `LISTEN` — several listen addresses, comma-separated, each optionally with the dialect
    /// its connections speak when they name none: `0.0.0.0:449=worldmates,0.0.0.0:3001=aist`.
    /// Every listener serves the whole API. When set, it replaces `BIND`. Default empty.
    pub listen: List,
    /// `HTTP_WORKERS` — threads accepting and serving HTTP and WebSocket connections, which
    /// also run the conversation and call actors; 0 means one per CPU core. Default 0.
    pub http_workers: usize,
    /// `MAX_CONNECTIONS` — most open client connections (WebSocket, Socket.IO and HTTP) of this
    /// process, divided evenly over the workers; past it, new connections wait in the listen
    /// backlog. Default 200000 (100 000 sockets with room for HTTP keep-alive and reconnects
    /// whose old socket has not timed out yet).
    pub max_connections: usize,
    /// `LISTEN_BACKLOG` — queue of connections not yet accepted; the kernel caps it at
    /// `net.core.somaxconn`. Default 4096.
    pub listen_backlog: u32,
    /// `ALLOWED_ORIGINS` — comma-separated CORS allow-list (exact origins). Default empty
    /// (no cross-origin browser access).
    pub allowed_origins: List,
    /// `ACCESS_TOKEN_TTL_SECS` — lifetime of access tokens. Default 900 (15 minutes).
    pub access_token_ttl: Duration,
    /// `REFRESH_TOKEN_TTL_SECS` — lifetime of refresh tokens. Default 2592000 (30 days).
    pub refresh_token_ttl: Duration,
    /// `PASSWORD_MIN_LENGTH` — minimum password length for new passwords. Default 8.
    pub password_min_length: usize,
    /// `OTP_SENDER` — `log` or `webhook`. Default `log`.
    pub otp_sender: OtpSenderKind,
    /// `OTP_WEBHOOK_URL` — where the `webhook` sender POSTs codes. Default empty.
    pub otp_webhook_url: String,
    /// `OTP_WEBHOOK_TIMEOUT_MS` — timeout of one webhook delivery. Default 5000.
    pub otp_webhook_timeout: Duration,
    /// `OTP_TTL_SECS` — how long a code stays valid. Default 300.
    pub otp_ttl: Duration,
    /// `OTP_MAX_ATTEMPTS` — wrong guesses before a code is burnt. Default 5.
    pub otp_max_attempts: i32,
    /// `OTP_RESEND_COOLDOWN_SECS` — minimum gap between two codes for one phone. Default 60.
    pub otp_resend_cooldown: Duration,
    /// `OTP_LENGTH` — digits in a code (4–10). Default 6.
    pub otp_length: usize,
    /// `MAX_JSON_BODY_BYTES` — largest accepted JSON request body. Default 262144.
    pub max_json_body_bytes: usize,
    /// `LOG_FORMAT` — `text` or `json`. Default `text`. (`RUST_LOG` sets levels.)
    pub log_format: LogFormat,
    /// `SHUTDOWN_TIMEOUT_SECS` — grace period for in-flight work on SIGTERM. Default 10.
    pub shutdown_timeout: Duration,
    /// `HEARTBEAT_INTERVAL_SECS` — how often the server pings an idle WebSocket. Default 25.
    pub heartbeat_interval: Duration,
    /// `CLIENT_TIMEOUT_SECS` — a socket silent (no frame, no pong) this long is closed. Default 60.
    pub client_timeout: Duration,
    /// `MAX_FRAME_BYTES` — largest accepted WebSocket frame. Default 65536.
    pub max_frame_bytes: usize,
    /// `OUTBOUND_QUEUE` — events queued for one connection before it counts as a slow consumer
    /// and is disconnected. Default 1024.
    pub outbound_queue: usize,
    /// `MAX_REALTIME_CONNECTIONS` — most open realtime connections (`/ws` sockets and Socket.IO
    /// sessions); upgrades over it are refused at once with 503 and `Retry-After`. 0 means the
    /// process's open-file limit less `FD_RESERVE`. Default 0.
    pub max_realtime_connections: usize,
    /// `FD_RESERVE` — descriptors kept free beyond `MAX_REALTIME_CONNECTIONS` when that is derived
    /// from the open-file limit: health checks, admins' requests, database connections and the
    /// refusals themselves. Default 512.
    pub fd_reserve: usize,
    /// `SOCKET_CLOSE_GRACE_MS` — how long a closed realtime connection (cut off as a slow
    /// consumer, timed out, refused) may take to finish its closing handshake before it is
    /// aborted and its descriptor released, whatever the peer does. Default 5000.
    pub socket_close_grace: Duration,
    /// `FRAME_RATE_PER_SEC` — sustained inbound frames per connection. Default 50.
    pub frame_rate_per_sec: u32,
    /// `FRAME_BURST` — inbound frame burst per connection. Default 100.
    pub frame_burst: u32,
    /// `MESSAGE_RATE_PER_MIN` — messages a user may send per minute (all devices). Default 120.
    pub message_rate_per_min: u32,
    /// `MESSAGE_BURST` — message burst per user. Default 30.
    pub message_burst: u32,
    /// `MAX_CONTENT_CHARS` — longest message text. Default 10000.
    pub max_content_chars: usize,
    /// `TYPING_TIMEOUT_SECS` — a typing indicator without a refresh expires after this. Default 6.
    pub typing_timeout: Duration,
    /// `CONVERSATION_IDLE_SECS` — an idle conversation actor stops after this. Default 300.
    pub conversation_idle: Duration,
    /// `WRITE_BATCH_MAX` — most messages committed in one transaction. Default 512.
    pub write_batch_max: usize,
    /// `WRITE_QUEUE` — messages waiting for a commit before sends are refused. Default 20000.
    pub write_queue: usize,
    /// `WRITE_SHARDS` — parallel group-commit writers (each uses one connection). Default 2;
    /// in cluster mode (`REDIS_URL` set) 1.
    pub write_shards: usize,
    /// `WRITE_IN_FLIGHT` — batches one writer may have committing at once, on conversations
    /// no other of them holds (each uses one connection). Default 1.
    pub write_in_flight: usize,
    /// `GAP_READ_RETRY_MS` — how long a conversation keeps trying to read messages that a
    /// failed batch committed after all (or, in cluster mode, that another node's delivery
    /// missed) before leaving its members to catch up with `sync`. Default 10000.
    pub gap_read_retry: Duration,
    /// `CALL_SAVE_BATCH` — most calls whose states one statement writes. Default 64.
    pub call_save_batch: usize,
    /// `CALL_SAVE_QUEUE` — call states waiting to be written before savers wait for room.
    /// Default 4096.
    pub call_save_queue: usize,
    /// `REDIS_URL` — Redis (7 or later) shared by the nodes of one service; unset: one node,
    /// no Redis. Set: cluster mode (events, presence and kicks reach every node).
    pub redis_url: Secret,
    /// `REDIS_PREFIX` — prefix of every key and channel this service uses in Redis; two
    /// services (or test runs) on one Redis use different ones. Default `switchboard`.
    pub redis_prefix: String,
    /// `NODE_ID` — this node's name in the cluster. Default: host name, process id and a
    /// random suffix (a restarted node is a new node).
    pub node_id: String,
    /// `NODE_HEARTBEAT_MS` — how often a node refreshes its heartbeat and looks for dead
    /// nodes. Default 2000.
    pub node_heartbeat: Duration,
    /// `NODE_TTL_MS` — a node whose heartbeat is older than this is dead: its devices go
    /// offline. Default 10000.
    pub node_ttl: Duration,
    /// `CLUSTER_GAP_WAIT_MS` — how long a node waits for a message seq another node has not
    /// delivered yet before reading it from the database. Default 50.
    pub cluster_gap_wait: Duration,
    /// `CLUSTER_PUBLISH_INTERVAL_MS` — least time between the starts of two publishes of a
    /// node's queued events to Redis: under load, events queued meanwhile go out together in
    /// the next one; the first after a quiet spell goes at once. 0: publish as soon as the last
    /// publish was answered. Default 2.
    pub cluster_publish_interval: Duration,
    /// `CLUSTER_OWNED_WRITES` — each conversation's messages are written by one node (chosen
    /// by hashing the conversation over the live nodes); a send with a `clientMessageId` that
    /// arrives elsewhere is forwarded to that node. Default false: the forwarding hop cost more
    /// delivery latency than the lock waits it saves, measured on two nodes.
    pub cluster_owned_writes: bool,
    /// `CLUSTER_FORWARD_TIMEOUT_MS` — how long a forwarded send waits for the writing node
    /// before this node writes it itself (its key finds the other node's copy, if any).
    /// Default 2000.
    pub cluster_forward_timeout: Duration,
    /// `CLUSTER_LIMIT_TIMEOUT_MS` — longest wait for Redis's answer to a cluster-wide rate-limit
    /// check on a send or a call; past it (or at once while the connection is down) the node's
    /// own limiter decides alone. Default 250.
    pub cluster_limit_timeout: Duration,
    /// `CLUSTER_QUEUE` — events waiting to be published to the other nodes; when full
    /// (Redis slow or away) further cross-node deliveries are dropped and counted, and those
    /// clients catch up with `sync`. Default 65536.
    pub cluster_queue: usize,
    /// `RING_TIMEOUT_SECS` — an unanswered call becomes `missed` after this. Default 40.
    pub ring_timeout: Duration,
    /// `CALL_RECONNECT_GRACE_SECS` — how long a call waits for a party whose device dropped.
    /// Default 15.
    pub call_reconnect_grace: Duration,
    /// `CALL_RATE_PER_HOUR` — calls a user may start per hour. Default 30.
    pub call_rate_per_hour: u32,
    /// `LEGACY_IDS_REFRESH_SECS` — how often the server checks whether `legacy_ids` changed (an
    /// import running while it serves) and reloads its copy when it did. Default 10.
    pub legacy_ids_refresh: Duration,
    /// `CALL_BURST` — calls a user may start in a burst. Default 5.
    pub call_burst: u32,
    /// `STUN_URLS` — STUN servers handed to clients. Default Google's public STUN servers.
    pub stun_urls: List,
    /// `TURN_URLS` — TURN servers (e.g. `turn:turn.example.com:3478?transport=udp`). Default empty.
    pub turn_urls: List,
    /// `TURN_SECRET` — coturn `static-auth-secret` for TURN REST credentials. Default empty.
    pub turn_secret: Secret,
    /// `TURN_TTL_SECS` — lifetime of TURN credentials (also the cap for requested TTLs).
    /// Default 86400.
    pub turn_ttl: Duration,
    /// `AGORA_APP_ID` — enables the `agora` call provider together with the certificate.
    /// Default empty.
    pub agora_app_id: String,
    /// `AGORA_APP_CERTIFICATE` — signs Agora RTC tokens. Default empty.
    pub agora_app_certificate: Secret,
    /// `AGORA_TOKEN_TTL_SECS` — lifetime of Agora RTC tokens and their privileges. Default 3600.
    pub agora_token_ttl: Duration,
    /// `SOCKETIO_PING_INTERVAL_MS` — Engine.IO ping period at `/socket.io/`. Default 25000.
    pub socketio_ping_interval: Duration,
    /// `SOCKETIO_PING_TIMEOUT_MS` — how long an Engine.IO pong may take. Default 20000.
    pub socketio_ping_timeout: Duration,
    /// `SOCKETIO_MAX_PAYLOAD` — largest Engine.IO payload (POST body, frame, poll). Default 1000000.
    pub socketio_max_payload: usize,
    /// `SOCKETIO_CONNECT_TIMEOUT_MS` — a Socket.IO connection that joins no namespace within this
    /// is closed. Default 45000.
    pub socketio_connect_timeout: Duration,
    /// `SOCKETIO_AUTH_TIMEOUT_MS` — a Socket.IO client that connected without a token must send
    /// `authenticate` (seed 000) within this, or it is disconnected. Default 10000.
    pub socketio_auth_timeout: Duration,
    /// `SOCKETIO_RECOVERY_SECS` — how long a dropped Socket.IO session can come back with its
    /// private id and offset (connection state recovery) and be replayed what it missed. 0 turns
    /// recovery off (no private ids, no offsets). Default 120.
    pub socketio_recovery: Duration,
    /// `SOCKETIO_RECOVERY_MAX_EVENTS` — most events one recovery replays; a session that missed
    /// more comes back as a fresh one (`recovered: false`). Also the most unconfirmed events a
    /// live session remembers. Default 1000.
    pub socketio_recovery_max_events: usize,
    /// `SOCKETIO_RECOVERY_PER_USER` — most dropped sessions kept for one user (the oldest go
    /// first). Default 20.
    pub socketio_recovery_per_user: usize,
    /// `SOCKETIO_RECOVERY_MAX_SESSIONS` — most dropped sessions kept in all; past it a dropped
    /// session is not kept (its client reconnects fresh). Default 200000.
    pub socketio_recovery_max_sessions: usize,
    /// `SOCKETIO_RECOVERY_WAIT_MS` — how long a recovering client's CONNECT waits, at most, for
    /// its old transport on this node to be torn down and its session kept (a client can come
    /// back before the server noticed it left). Default 3000.
    pub socketio_recovery_wait: Duration,
    /// `PUBLIC_URL` — the address clients reach this server at (`https://chat.example.com`),
    /// the base of the media URLs in upload answers and messages. Unset: an upload answer uses
    /// the request's own host, and messages carry paths (`/api/media/...`).
    pub public_url: String,
    /// `MEDIA_STORE` — where uploads are kept: `local` (a directory, `MEDIA_DIR`) or `s3` (any
    /// S3-compatible store, `MEDIA_S3_*`). Default `local`.
    pub media_store: MediaStore,
    /// `MEDIA_DIR` — the directory of the `local` store (created when missing). Default
    /// `.dev/media`; the systemd unit sets its `StateDirectory`.
    pub media_dir: String,
    /// `MEDIA_S3_BUCKET` — the bucket of the `s3` store.
    pub media_s3_bucket: String,
    /// `MEDIA_S3_ENDPOINT` — the S3 endpoint (`http://` allowed, for a store on a private
    /// network); empty: AWS itself.
    pub media_s3_endpoint: String,
    /// `MEDIA_S3_REGION` — the bucket's region. Default `us-east-1`.
    pub media_s3_region: String,
    /// `MEDIA_S3_ACCESS_KEY_ID` — the S3 access key id.
    pub media_s3_access_key_id: String,
    /// `MEDIA_S3_SECRET_ACCESS_KEY` — the S3 secret key.
    pub media_s3_secret_access_key: Secret,
    /// `MEDIA_URL_TTL_SECS` — how long a signed media URL works (it is renewed every time a
    /// message is read again). Default 86400.
    pub media_url_ttl: Duration,
    /// `MAX_UPLOAD_BYTES_IMAGE` — the largest image upload (JPEG, PNG, GIF, WebP). Default
    /// 20 MiB.
    pub max_upload_bytes_image: u64,
    /// `MAX_UPLOAD_BYTES_AUDIO` — the largest audio upload (voice notes: AAC/M4A, Ogg/Opus, MP3,
    /// WAV, FLAC, AMR). Default 50 MiB.
    pub max_upload_bytes_audio: u64,
    /// `MAX_UPLOAD_BYTES_VIDEO` — the largest video upload (MP4, WebM, QuickTime). Default
    /// 200 MiB.
    pub max_upload_bytes_video: u64,
    /// `MAX_UPLOAD_BYTES_DOCUMENT` — the largest document upload (PDF, Office, ZIP). Default
    /// 50 MiB.
    pub max_upload_bytes_document: u64,
    /// `MEDIA_QUOTA_BYTES` — what one user may keep stored in all (uploads no message uses any
    /// more are removed after `MEDIA_GC_GRACE_SECS`). Default 1 GiB.
    pub media_quota_bytes: u64,
    /// `MEDIA_MAX_IMAGE_PIXELS` — the largest image (width × height) that is accepted: its
    /// header is read before anything is decoded, so a decompression bomb is refused unread.
    /// Default 40 000 000.
    pub media_max_image_pixels: u64,
    /// `MEDIA_THUMBNAIL_PX` — the longest side of an image's thumbnail. Default 320.
    pub media_thumbnail_px: u32,
    /// `MEDIA_UPLOADS_IN_FLIGHT` — uploads received at once by this process; more are answered
    /// 503 with `Retry-After`. Images are held in memory while they are read, so this times
    /// `MAX_UPLOAD_BYTES_IMAGE` bounds that memory. Default 16.
    pub media_uploads_in_flight: usize,
    /// `MEDIA_UPLOADS_PER_USER` — uploads one user may have running at once (more: 429
    /// `rate_limited`), so one client cannot take every `MEDIA_UPLOADS_IN_FLIGHT` slot.
    /// Default 4.
    pub media_uploads_per_user: usize,
    /// `MEDIA_PROCESS_CONCURRENCY` — images examined, stripped and thumbnailed at once (CPU
    /// work, on the blocking pool, off the event loop). Default 0: half the cores, at least 1,
    /// so the other half stays with the realtime traffic.
    pub media_process_concurrency: usize,
    /// `MEDIA_UPLOAD_BYTES_PER_SEC` — the rate at which this process takes in upload bodies, all
    /// uploads together (a token bucket of one second's worth); past it, uploads are read more
    /// slowly so messages and calls keep their latency. 0: no limit. Default 50 000 000.
    pub media_upload_bytes_per_sec: u64,
    /// `MEDIA_UPLOAD_IDLE_TIMEOUT_SECS` — an upload whose body stalls this long is cut (408).
    /// Default 30.
    pub media_upload_idle_timeout: Duration,
    /// `MEDIA_GC_GRACE_SECS` — how long an upload no message references is kept (from its
    /// upload, or from the deletion of the last message that used it). Default 86400.
    pub media_gc_grace: Duration,
    /// `MEDIA_GC_INTERVAL_SECS` — how often unreferenced media and orphaned objects are
    /// removed. Default 600.
    pub media_gc_interval: Duration,
    /// `MEDIA_ACCEL_REDIRECT` — with the `local` store behind nginx: the internal location
    /// (e.g. `/_media/`) that maps to `MEDIA_DIR`; downloads are then answered with
    /// `X-Accel-Redirect` after the access check and nginx sends the bytes. Empty: off.
    pub media_accel_redirect: String,
    /// `MEDIA_FOREIGN_URLS` — whether a message may carry a `mediaUrl` that is not one of this
    /// server's uploads (the legacy apps stored theirs elsewhere). Default true.
    pub media_foreign_urls: bool,
    /// `DEFAULT_DIALECT` — the dialect of connections that name none (`?dialect=` or the
    /// Socket.IO auth payload): `canonical`, `lonestar` (seed 000), `worldmates` (001),
    /// `astrology` (002), `backend2` (003) or `aist` (004). Default `canonical`.
    pub default_dialect: DialectSetting,
    /// `CONTACT_POLICY` — who may start a direct conversation or call with whom: `open`,
    /// `request` (strangers need an accepted chat request) or `roles` (`CONTACT_RULES`).
    /// Default `open`.
    pub contact_policy: ContactPolicy,
    /// `CONTACT_RULES` — the `roles` policy's ordered rules `FROM>TO[:linked]` (role names or
    /// `*`). Default `admin>*,*>admin,astrologer>*:linked,*>astrologer:linked`.
    pub contact_rules: ContactRules,
    /// `CONTACT_LINK_CONTEXTS` — conversation context types that link two users for
    /// `:linked` rules (`consultation`, `service_request`, `support`, `general`). Default empty:
    /// any shared direct or group conversation links them.
    pub contact_link_contexts: List,
    /// `CONTACTS_SYNC_MAX` — most phone numbers accepted by one `POST /contacts/sync`.
    /// Default 5000.
    pub contacts_sync_max: usize,
    /// `CONTACT_CACHE_TTL_SECS` — longest a cached contact-policy decision, user standing
    /// (exists, not banned) or conversation member list is used when starting a call. Changes
    /// made through the server invalidate them at once; this bounds the staleness of changes
    /// made around it (e.g. by hand in the database). 0 turns the cache off. Default 60.
    pub contact_cache_ttl: Duration,
    /// `CONTACT_CACHE_SIZE` — most entries of each kind in that cache (decisions, users,
    /// conversations). Default 100000.
    pub contact_cache_size: usize,
    /// `METRICS_TOKEN` — when set, `GET /metrics` requires `Authorization: Bearer <token>`.
    /// Default empty (open; keep `/metrics` off the public site in nginx).
    pub metrics_token: Secret,
    /// `TRUSTED_PROXIES` — comma-separated addresses or CIDR ranges of reverse proxies whose
    /// `X-Forwarded-For` names the client (device sessions, logs). Default `127.0.0.1,::1`.
    pub trusted_proxies: List,

    // Password hashing and authentication limits.
    /// `PASSWORD_HASH_THREADS` — password hashes and verifications (PBKDF2) that run at once,
    /// each on a blocking thread and never while holding a database connection. Default 2.
    pub password_hash_threads: usize,
    /// `PASSWORD_HASH_QUEUE` — password checks waiting for one of those threads; past it a
    /// login or registration is answered 503 `busy` with `Retry-After`. Default 64.
    pub password_hash_queue: usize,
    /// `AUTH_ACCOUNT_MAX_FAILURES` — wrong passwords or codes for one account (phone or
    /// e-mail), from any address, before that account is locked. Default 10.
    pub auth_account_max_failures: u32,
    /// `AUTH_ADDRESS_MAX_FAILURES` — wrong passwords or codes from one client address (an IPv6
    /// client counts by its /64), for any accounts, before that address is locked. Default 30.
    pub auth_address_max_failures: u32,
    /// `AUTH_FAILURE_WINDOW_SECS` — failures older than this are forgotten, and so is a past
    /// lockout this long after it ended. Default 900.
    pub auth_failure_window: Duration,
    /// `AUTH_LOCKOUT_SECS` — the first lockout of an account or address; each further one
    /// within the window doubles. Default 60.
    pub auth_lockout: Duration,
    /// `AUTH_LOCKOUT_MAX_SECS` — the longest lockout. Default 3600.
    pub auth_lockout_max: Duration,
    /// `OTP_SENDS_PER_ADDRESS_PER_HOUR` — one-time codes one client address may have sent per
    /// hour, to any phones (that many at once, then evenly spread). Default 10.
    pub otp_sends_per_address_per_hour: u32,
    /// `OTP_SENDS_PER_MINUTE` — one-time codes the server sends per minute in all. Default 300.
    pub otp_sends_per_minute: u32,
    /// `AUTH_LIMITER_ENTRIES` — most accounts and most addresses the authentication limits
    /// remember each; past it, entries that are not locked go first, least recently seen
    /// first. Default 100000.
    pub auth_limiter_entries: usize,
    /// `LAST_SEEN_FLUSH_MS` — how often the last-seen times of users whose last connection
    /// closed are written (one UPDATE per flush). Default 1000.
    pub last_seen_flush: Duration,
    /// `LAST_SEEN_BATCH` — most users written by one last-seen UPDATE; this many waiting are
    /// written at once, without waiting for the interval. Default 1000.
    pub last_seen_batch: usize,
    /// `LAST_SEEN_BUFFER` — most users whose last-seen time may wait for a write (while the
    /// database is slow or down); past it further times are dropped and counted in
    /// `switchboard_last_seen_dropped_total` until a write succeeds. Default 100000.
    pub last_seen_buffer: usize,

    // Moving apps over from their legacy backends.
    /// `ACCEPT_LEGACY_SESSION_TOKENS` — access tokens an earlier backend signed with the same
    /// `JWT_SECRET` whose `sessionId` claim names a session Switchboard does not know are
    /// accepted as session-less tokens (signature, expiry, ban and forced-logout checks still
    /// apply) instead of being refused, so that app's users stay signed in across the switch.
    /// Default false.
    pub accept_legacy_session_tokens: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: Secret::default(),
            db_pool_size: 16,
            db_acquire_timeout: Duration::from_millis(2000),
            db_check_idle: Duration::from_millis(1000),
            jwt_secret: Secret::default(),
            dev_mode: false,
            bind: "127.0.0.1:8080".to_owned(),
            listen: List::default(),
            http_workers: 0,
            max_connections: 200_000,
            listen_backlog: 4096,
            allowed_origins: List::default(),
            access_token_ttl: Duration::from_secs(900),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            password_min_length: 8,
            otp_sender: OtpSenderKind::Log,
            otp_webhook_url: String::new(),
            otp_webhook_timeout: Duration::from_millis(5000),
            otp_ttl: Duration::from_secs(300),
            otp_max_attempts: 5,
            otp_resend_cooldown: Duration::from_secs(60),
            otp_length: 6,
            max_json_body_bytes: 256 * 1024,
            log_format: LogFormat::Text,
            shutdown_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(25),
            client_timeout: Duration::from_secs(60),
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            max_realtime_connections: 0,
            fd_reserve: 512,
            socket_close_grace: Duration::from_millis(5000),
            frame_rate_per_sec: 50,
            frame_burst: 100,
            message_rate_per_min: 120,
            message_burst: 30,
            max_content_chars: 10_000,
            typing_timeout: Duration::from_secs(6),
            conversation_idle: Duration::from_secs(300),
            write_batch_max: 512,
            write_queue: 20_000,
            write_shards: 2,
            write_in_flight: 1,
            gap_read_retry: Duration::from_millis(10_000),
            call_save_batch: 64,
            call_save_queue: 4096,
            redis_url: Secret::default(),
            redis_prefix: "switchboard".into(),
            node_id: String::new(),
            node_heartbeat: Duration::from_millis(2000),
            node_ttl: Duration::from_millis(10_000),
            cluster_gap_wait: Duration::from_millis(50),
            cluster_publish_interval: Duration::from_millis(2),
            cluster_owned_writes: false,
            cluster_forward_timeout: Duration::from_millis(2000),
            cluster_limit_timeout: Duration::from_millis(250),
            cluster_queue: 65_536,
            ring_timeout: Duration::from_secs(40),
            call_reconnect_grace: Duration::from_secs(15),
            call_rate_per_hour: 30,
            legacy_ids_refresh: Duration::from_secs(10),
            call_burst: 5,
            stun_urls: List(vec![
                "stun:stun.l.google.com:19302".to_owned(),
                "stun:stun1.l.google.com:19302".to_owned(),
            ]),
            turn_urls: List::default(),
            turn_secret: Secret::default(),
            turn_ttl: Duration::from_secs(86_400),
            agora_app_id: String::new(),
            agora_app_certificate: Secret::default(),
            agora_token_ttl: Duration::from_secs(3600),
            socketio_ping_interval: Duration::from_millis(25_000),
            socketio_ping_timeout: Duration::from_millis(20_000),
            socketio_max_payload: 1_000_000,
            socketio_connect_timeout: Duration::from_millis(45_000),
            socketio_auth_timeout: Duration::from_millis(10_000),
            socketio_recovery: Duration::from_secs(120),
            socketio_recovery_max_events: 1000,
            socketio_recovery_per_user: 20,
            socketio_recovery_max_sessions: 200_000,
            socketio_recovery_wait: Duration::from_millis(3000),
            public_url: String::new(),
            media_store: MediaStore::Local,
            media_dir: ".dev/media".into(),
            media_s3_bucket: String::new(),
            media_s3_endpoint: String::new(),
            media_s3_region: "us-east-1".into(),
            media_s3_access_key_id: String::new(),
            media_s3_secret_access_key: Secret::default(),
            media_url_ttl: Duration::from_secs(86_400),
            max_upload_bytes_image: 20 << 20,
            max_upload_bytes_audio: 50 << 20,
            max_upload_bytes_video: 200 << 20,
            max_upload_bytes_document: 50 << 20,
            media_quota_bytes: 1 << 30,
            media_max_image_pixels: 40_000_000,
            media_thumbnail_px: 320,
            media_uploads_in_flight: 16,
            media_uploads_per_user: 4,
            media_process_concurrency: 0,
            media_upload_bytes_per_sec: 50_000_000,
            media_upload_idle_timeout: Duration::from_secs(30),
            media_gc_grace: Duration::from_secs(86_400),
            media_gc_interval: Duration::from_secs(600),
            media_accel_redirect: String::new(),
            media_foreign_urls: true,
            default_dialect: DialectSetting(&crate::realtime::dialect::CANONICAL),
            contact_policy: ContactPolicy::Open,
            contact_rules: ContactRules::default(),
            contact_link_contexts: List::default(),
            contacts_sync_max: 5000,
            contact_cache_ttl: Duration::from_secs(60),
            contact_cache_size: 100_000,
            metrics_token: Secret::default(),
            trusted_proxies: List(vec!["127.0.0.1".to_owned(), "::1".to_owned()]),
            password_hash_threads: 2,
            password_hash_queue: 64,
            auth_account_max_failures: 10,
            auth_address_max_failures: 30,
            auth_failure_window: Duration::from_secs(900),
            auth_lockout: Duration::from_secs(60),
            auth_lockout_max: Duration::from_secs(3600),
            otp_sends_per_address_per_hour: 10,
            otp_sends_per_minute: 300,
            auth_limiter_entries: 100_000,

            last_seen_flush: Duration::from_millis(1000),
            last_seen_batch: 1000,
            last_seen_buffer: 100_000,
            accept_legacy_session_tokens: false,
        }
    }
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value had the wrong shape.
    #[error("invalid value for {key}: {reason}")]
    Invalid {
        /// The variable or TOML key.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The combination of settings is unsafe or incomplete.
    #[error("{0}")]
    Rejected(String),
}

/// Where raw setting values come from: a key's text, or nothing.
trait Source {
    fn get(&self, key: &str) -> Option<String>;
    fn describe(&self, key: &str) -> String;
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Source for Env<'_> {
    fn get(&self, key: &str) -> Option<String> {
        (self.0)(key).filter(|v| !v.is_empty())
    }
    fn describe(&self, key: &str) -> String {
        key.to_owned()
    }
}

struct Toml(toml::Table);

impl Source for Toml {
    fn get(&self, key: &str) -> Option<String> {
        let value = self.0.get(&key.to_ascii_lowercase())?;
        Some(match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
            other => scalar(other),
        })
    }
    fn describe(&self, key: &str) -> String {
        format!("{} (config file)", key.to_ascii_lowercase())
    }
}

fn scalar(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        // Nested arrays and tables are not settings; an empty value makes the parse fail loudly.
        toml::Value::Array(_) | toml::Value::Table(_) => String::from("<nested value>"),
    }
}

/// `MEDIA_STORE`: where uploads are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MediaStore {
    /// A directory (`MEDIA_DIR`).
    #[default]
    Local,
    /// An S3-compatible store (`MEDIA_S3_*`).
    S3,
}

impl FromStr for MediaStore {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "s3" => Ok(Self::S3),
            other => Err(format!("must be `local` or `s3`, not `{other}`")),
        }
    }
}

/// A dialect named in the settings (`DEFAULT_DIALECT`), found when they are read.
#[derive(Clone, Copy)]
pub struct DialectSetting(pub &'static Dialect);

impl fmt::Debug for DialectSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl FromStr for DialectSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Dialect::find(s)
            .map(Self)
            .ok_or_else(|| format!("`{s}` is not a known dialect"))
    }
}

fn parse<T: FromStr>(src: &dyn Source, key: &str, slot: &mut T) -> Result<(), ConfigError>
where
    T::Err: fmt::Display,
{
    if let Some(raw) = src.get(key) {
        *slot = raw
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                key: src.describe(key),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

fn parse_bool(src: &dyn Source, key: &str, slot: &mut bool) -> Result<(), ConfigError> {
    if let Some(raw) = src.get(key) {
        *slot = match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            other => {
                return Err(ConfigError::Invalid {
                    key: src.describe(key),
                    reason: format!("`{other}` is not a boolean"),
                })
            }
        };
    }
    Ok(())
}

fn parse_secs(src: &dyn Source, key: &str, slot: &mut Duration) -> Result<(), ConfigError> {
    let mut secs = slot.as_secs();
    parse(src, key, &mut secs)?;
    *slot = Duration::from_secs(secs);
    Ok(())
}

fn parse_millis(src: &dyn Source, key: &str, slot: &mut Duration) -> Result<(), ConfigError> {
    let mut ms = u64::try_from(slot.as_millis()).unwrap_or(u64::MAX);
    parse(src, key, &mut ms)?;
    *slot = Duration::from_millis(ms);
    Ok(())
}

impl Config {
    /// Whether the Agora call provider is configured.
    pub(crate) fn agora_enabled(&self) -> bool {
        !self.agora_app_id.is_empty() && !self.agora_app_certificate.is_empty()
    }

    /// Reads the optional TOML file, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, &|key| std::env::var(key).ok())
    }

    /// Like [`Config::load`] with an explicit environment (tests).
    pub(crate) fn load_from(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let mut shards_told = Env(env).get("WRITE_SHARDS").is_some();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
            let table = Toml(table);
            shards_told |= table.get("WRITE_SHARDS").is_some();
            config.apply(&table)?;
        }
        config.apply(&Env(env))?;
        // Every node's writers write to the one database: unless told otherwise, a cluster
        // node writes with one writer, so two nodes bring the database as many writers (and
        // batches as large) as one node does.
        if !config.redis_url.is_empty() && !shards_told {
            config.write_shards = CLUSTER_WRITE_SHARDS;
        }
        Ok(config)
    }

    fn apply(&mut self, src: &dyn Source) -> Result<(), ConfigError> {
        parse(src, "DATABASE_URL", &mut self.database_url)?;
        parse(src, "DB_POOL_SIZE", &mut self.db_pool_size)?;
        parse_millis(src, "DB_ACQUIRE_TIMEOUT_MS", &mut self.db_acquire_timeout)?;
        parse_millis(src, "DB_CHECK_IDLE_MS", &mut self.db_check_idle)?;
        parse(src, "JWT_SECRET", &mut self.jwt_secret)?;
        parse_bool(src, "SWITCHBOARD_DEV", &mut self.dev_mode)?;
        parse(src, "BIND", &mut self.bind)?;
        parse(src, "LISTEN", &mut self.listen)?;
        parse(src, "HTTP_WORKERS", &mut self.http_workers)?;
        parse(src, "MAX_CONNECTIONS", &mut self.max_connections)?;
        parse(src, "LISTEN_BACKLOG", &mut self.listen_backlog)?;
        parse(src, "ALLOWED_ORIGINS", &mut self.allowed_origins)?;
        parse_secs(src, "ACCESS_TOKEN_TTL_SECS", &mut self.access_token_ttl)?;
        parse_secs(src, "REFRESH_TOKEN_TTL_SECS", &mut self.refresh_token_ttl)?;
        parse(src, "PASSWORD_MIN_LENGTH", &mut self.password_min_length)?;
        parse(src, "OTP_SENDER", &mut self.otp_sender)?;
        parse(src, "OTP_WEBHOOK_URL", &mut self.otp_webhook_url)?;
        parse_millis(src, "OTP_WEBHOOK_TIMEOUT_MS", &mut self.otp_webhook_timeout)?;
        parse_secs(src, "OTP_TTL_SECS", &mut self.otp_ttl)?;
        parse(src, "OTP_MAX_ATTEMPTS", &mut self.otp_max_attempts)?;
        parse_secs(
            src,
            "OTP_RESEND_COOLDOWN_SECS",
            &mut self.otp_resend_cooldown,
        )?;
        parse(src, "OTP_LENGTH", &mut self.otp_length)?;
        parse(src, "MAX_JSON_BODY_BYTES", &mut self.max_json_body_bytes)?;
        parse(src, "LOG_FORMAT", &mut self.log_format)?;
        parse_secs(src, "SHUTDOWN_TIMEOUT_SECS", &mut self.shutdown_timeout)?;
        parse_secs(src, "HEARTBEAT_INTERVAL_SECS", &mut self.heartbeat_interval)?;
        parse_secs(src, "CLIENT_TIMEOUT_SECS", &mut self.client_timeout)?;
        parse(src, "MAX_FRAME_BYTES", &mut self.max_frame_bytes)?;
        parse(src, "OUTBOUND_QUEUE", &mut self.outbound_queue)?;
        parse(
            src,
            "MAX_REALTIME_CONNECTIONS",
            &mut self.max_realtime_connections,
        )?;
        parse(src, "FD_RESERVE", &mut self.fd_reserve)?;
        parse_millis(src, "SOCKET_CLOSE_GRACE_MS", &mut self.socket_close_grace)?;
        parse(src, "FRAME_RATE_PER_SEC", &mut self.frame_rate_per_sec)?;
        parse(src, "FRAME_BURST", &mut self.frame_burst)?;
        parse(src, "MESSAGE_RATE_PER_MIN", &mut self.message_rate_per_min)?;
        parse(src, "MESSAGE_BURST", &mut self.message_burst)?;
        parse(src, "MAX_CONTENT_CHARS", &mut self.max_content_chars)?;
        parse_secs(src, "TYPING_TIMEOUT_SECS", &mut self.typing_timeout)?;
        parse_secs(src, "CONVERSATION_IDLE_SECS", &mut self.conversation_idle)?;
        parse(src, "WRITE_BATCH_MAX", &mut self.write_batch_max)?;
        parse(src, "WRITE_QUEUE", &mut self.write_queue)?;
        parse(src, "WRITE_SHARDS", &mut self.write_shards)?;
        parse(src, "WRITE_IN_FLIGHT", &mut self.write_in_flight)?;
        parse_millis(src, "GAP_READ_RETRY_MS", &mut self.gap_read_retry)?;
        parse(src, "CALL_SAVE_BATCH", &mut self.call_save_batch)?;
        parse(src, "CALL_SAVE_QUEUE", &mut self.call_save_queue)?;
        self.apply_cluster(src)?;
        parse_secs(src, "RING_TIMEOUT_SECS", &mut self.ring_timeout)?;
        parse_secs(
            src,
            "CALL_RECONNECT_GRACE_SECS",
            &mut self.call_reconnect_grace,
        )?;
        parse(src, "CALL_RATE_PER_HOUR", &mut self.call_rate_per_hour)?;
        parse_secs(src, "LEGACY_IDS_REFRESH_SECS", &mut self.legacy_ids_refresh)?;
        parse(src, "CALL_BURST", &mut self.call_burst)?;
        parse(src, "STUN_URLS", &mut self.stun_urls)?;
        parse(src, "TURN_URLS", &mut self.turn_urls)?;
        parse(src, "TURN_SECRET", &mut self.turn_secret)?;
        parse_secs(src, "TURN_TTL_SECS", &mut self.turn_ttl)?;
        parse(src, "AGORA_APP_ID", &mut self.agora_app_id)?;
        parse(
            src,
            "AGORA_APP_CERTIFICATE",
            &mut self.agora_app_certificate,
        )?;
        parse_secs(src, "AGORA_TOKEN_TTL_SECS", &mut self.agora_token_ttl)?;
        parse_millis(
            src,
            "SOCKETIO_PING_INTERVAL_MS",
            &mut self.socketio_ping_interval,
        )?;
        parse_millis(
            src,
            "SOCKETIO_PING_TIMEOUT_MS",
            &mut self.socketio_ping_timeout,
        )?;
        parse(src, "SOCKETIO_MAX_PAYLOAD", &mut self.socketio_max_payload)?;
        parse_millis(
            src,
            "SOCKETIO_CONNECT_TIMEOUT_MS",
            &mut self.socketio_connect_timeout,
        )?;
        parse_millis(
            src,
            "SOCKETIO_AUTH_TIMEOUT_MS",
            &mut self.socketio_auth_timeout,
        )?;
        parse_secs(src, "SOCKETIO_RECOVERY_SECS", &mut self.socketio_recovery)?;
        parse(
            src,
            "SOCKETIO_RECOVERY_MAX_EVENTS",
            &mut self.socketio_recovery_max_events,
        )?;
        parse(
            src,
            "SOCKETIO_RECOVERY_PER_USER",
            &mut self.socketio_recovery_per_user,
        )?;
        parse(
            src,
            "SOCKETIO_RECOVERY_MAX_SESSIONS",
            &mut self.socketio_recovery_max_sessions,
        )?;
        parse_millis(
            src,
            "SOCKETIO_RECOVERY_WAIT_MS",
            &mut self.socketio_recovery_wait,
        )?;
        parse(src, "DEFAULT_DIALECT", &mut self.default_dialect)?;
        parse(src, "CONTACT_POLICY", &mut self.contact_policy)?;
        parse(src, "CONTACT_RULES", &mut self.contact_rules)?;
        parse(
            src,
            "CONTACT_LINK_CONTEXTS",
            &mut self.contact_link_contexts,
        )?;
        parse(src, "CONTACTS_SYNC_MAX", &mut self.contacts_sync_max)?;
        parse_secs(src, "CONTACT_CACHE_TTL_SECS", &mut self.contact_cache_ttl)?;
        parse(src, "CONTACT_CACHE_SIZE", &mut self.contact_cache_size)?;
        parse(src, "METRICS_TOKEN", &mut self.metrics_token)?;
        parse(src, "TRUSTED_PROXIES", &mut self.trusted_proxies)?;
        self.apply_media(src)?;
        self.apply_auth_limits(src)?;
        self.apply_migration(src)
    }

    /// Media upload settings.
    fn apply_media(&mut self, src: &dyn Source) -> Result<(), ConfigError> {
        parse(src, "PUBLIC_URL", &mut self.public_url)?;
        parse(src, "MEDIA_STORE", &mut self.media_store)?;
        parse(src, "MEDIA_DIR", &mut self.media_dir)?;
        parse(src, "MEDIA_S3_BUCKET", &mut self.media_s3_bucket)?;
        parse(src, "MEDIA_S3_ENDPOINT", &mut self.media_s3_endpoint)?;
        parse(src, "MEDIA_S3_REGION", &mut self.media_s3_region)?;
        parse(
            src,
            "MEDIA_S3_ACCESS_KEY_ID",
            &mut self.media_s3_access_key_id,
        )?;
        parse(
            src,
            "MEDIA_S3_SECRET_ACCESS_KEY",
            &mut self.media_s3_secret_access_key,
        )?;
        parse_secs(src, "MEDIA_URL_TTL_SECS", &mut self.media_url_ttl)?;
        parse(
            src,
            "MAX_UPLOAD_BYTES_IMAGE",
            &mut self.max_upload_bytes_image,
        )?;
        parse(
            src,
            "MAX_UPLOAD_BYTES_AUDIO",
            &mut self.max_upload_bytes_audio,
        )?;
        parse(
            src,
            "MAX_UPLOAD_BYTES_VIDEO",
            &mut self.max_upload_bytes_video,
        )?;
        parse(
            src,
            "MAX_UPLOAD_BYTES_DOCUMENT",
            &mut self.max_upload_bytes_document,
        )?;
        parse(src, "MEDIA_QUOTA_BYTES", &mut self.media_quota_bytes)?;
        parse(
            src,
            "MEDIA_MAX_IMAGE_PIXELS",
            &mut self.media_max_image_pixels,
        )?;
        parse(src, "MEDIA_THUMBNAIL_PX", &mut self.media_thumbnail_px)?;
        parse(
            src,
            "MEDIA_UPLOADS_IN_FLIGHT",
            &mut self.media_uploads_in_flight,
        )?;
        parse(
            src,
            "MEDIA_PROCESS_CONCURRENCY",
            &mut self.media_process_concurrency,
        )?;
        parse(
            src,
            "MEDIA_UPLOAD_BYTES_PER_SEC",
            &mut self.media_upload_bytes_per_sec,
        )?;
        parse_secs(
            src,
            "MEDIA_UPLOAD_IDLE_TIMEOUT_SECS",
            &mut self.media_upload_idle_timeout,
        )?;
        parse_secs(src, "MEDIA_GC_GRACE_SECS", &mut self.media_gc_grace)?;
        parse_secs(src, "MEDIA_GC_INTERVAL_SECS", &mut self.media_gc_interval)?;
        parse(src, "MEDIA_ACCEL_REDIRECT", &mut self.media_accel_redirect)?;
        parse_bool(src, "MEDIA_FOREIGN_URLS", &mut self.media_foreign_urls)
    }

    /// Cluster mode settings.
    fn apply_cluster(&mut self, src: &dyn Source) -> Result<(), ConfigError> {
        parse(src, "REDIS_URL", &mut self.redis_url)?;
        parse(src, "REDIS_PREFIX", &mut self.redis_prefix)?;
        parse(src, "NODE_ID", &mut self.node_id)?;
        parse_millis(src, "NODE_HEARTBEAT_MS", &mut self.node_heartbeat)?;
        parse_millis(src, "NODE_TTL_MS", &mut self.node_ttl)?;
        parse_millis(src, "CLUSTER_GAP_WAIT_MS", &mut self.cluster_gap_wait)?;
        parse_millis(
            src,
            "CLUSTER_PUBLISH_INTERVAL_MS",
            &mut self.cluster_publish_interval,
        )?;
        parse_bool(src, "CLUSTER_OWNED_WRITES", &mut self.cluster_owned_writes)?;
        parse_millis(
            src,
            "CLUSTER_FORWARD_TIMEOUT_MS",
            &mut self.cluster_forward_timeout,
        )?;
        parse_millis(
            src,
            "CLUSTER_LIMIT_TIMEOUT_MS",
            &mut self.cluster_limit_timeout,
        )?;
        parse(src, "CLUSTER_QUEUE", &mut self.cluster_queue)
    }

    /// Settings for apps moving over from their legacy backends.
    fn apply_migration(&mut self, src: &dyn Source) -> Result<(), ConfigError> {
        parse_bool(
            src,
            "ACCEPT_LEGACY_SESSION_TOKENS",
            &mut self.accept_legacy_session_tokens,
        )
    }

    fn apply_auth_limits(&mut self, src: &dyn Source) -> Result<(), ConfigError> {
        parse(
            src,
            "PASSWORD_HASH_THREADS",
            &mut self.password_hash_threads,
        )?;
        parse(src, "PASSWORD_HASH_QUEUE", &mut self.password_hash_queue)?;
        parse(
            src,
            "AUTH_ACCOUNT_MAX_FAILURES",
            &mut self.auth_account_max_failures,
        )?;
        parse(
            src,
            "AUTH_ADDRESS_MAX_FAILURES",
            &mut self.auth_address_max_failures,
        )?;
        parse_secs(
            src,
            "AUTH_FAILURE_WINDOW_SECS",
            &mut self.auth_failure_window,
        )?;
        parse_secs(src, "AUTH_LOCKOUT_SECS", &mut self.auth_lockout)?;
        parse_secs(src, "AUTH_LOCKOUT_MAX_SECS", &mut self.auth_lockout_max)?;
        parse(
            src,
            "OTP_SENDS_PER_ADDRESS_PER_HOUR",
            &mut self.otp_sends_per_address_per_hour,
        )?;
        parse(src, "OTP_SENDS_PER_MINUTE", &mut self.otp_sends_per_minute)?;
        parse(src, "AUTH_LIMITER_ENTRIES", &mut self.auth_limiter_entries)?;

        parse_millis(src, "LAST_SEEN_FLUSH_MS", &mut self.last_seen_flush)?;
        parse(src, "LAST_SEEN_BATCH", &mut self.last_seen_batch)?;
        parse(src, "LAST_SEEN_BUFFER", &mut self.last_seen_buffer)?;
        Ok(())
    }

    /// Images processed at once: `MEDIA_PROCESS_CONCURRENCY`, or half the cores (at least 1).
    pub(crate) fn media_cpu_slots(&self) -> usize {
        if self.media_process_concurrency > 0 {
            self.media_process_concurrency
        } else {
            (std::thread::available_parallelism().map_or(1, usize::from) / 2).max(1)
        }
    }

    /// The number of HTTP workers: `HTTP_WORKERS`, or one per CPU core when it is 0.
    pub(crate) fn http_worker_count(&self) -> usize {
        if self.http_workers > 0 {
            self.http_workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// The listen addresses with the dialect each listener's connections default to: the
    /// `LISTEN` entries, or `BIND` with `DEFAULT_DIALECT` when `LISTEN` is empty.
    pub fn listeners(&self) -> Result<Vec<(String, &'static Dialect)>, ConfigError> {
        let default = self.default_dialect.0;
        if self.listen.0.is_empty() {
            return Ok(vec![(self.bind.clone(), default)]);
        }
        let mut out: Vec<(String, &'static Dialect)> = Vec::new();
        for entry in &self.listen.0 {
            let (addr, dialect) = match entry.rsplit_once('=') {
                Some((addr, name)) => {
                    let dialect = Dialect::find(name.trim()).ok_or_else(|| {
                        ConfigError::Rejected(format!(
                            "LISTEN entry `{entry}` names an unknown dialect `{}`",
                            name.trim()
                        ))
                    })?;
                    (addr.trim(), dialect)
                }
                None => (entry.as_str(), default),
            };
            if addr.is_empty() || !addr.contains(':') {
                return Err(ConfigError::Rejected(format!(
                    "LISTEN entry `{entry}` needs an address with a port, e.g. 0.0.0.0:449=worldmates"
                )));
            }
            if out.iter().any(|(a, _)| a == addr) {
                return Err(ConfigError::Rejected(format!(
                    "LISTEN names `{addr}` twice"
                )));
            }
            out.push((addr.to_owned(), dialect));
        }
        Ok(out)
    }

    /// Each worker's share of `MAX_CONNECTIONS` (rounded up, so the workers together allow at
    /// least `MAX_CONNECTIONS`).
    pub(crate) fn max_connections_per_worker(&self) -> usize {
        self.max_connections
            .div_ceil(self.http_worker_count())
            .max(1)
    }

    /// The realtime connection ceiling: `MAX_REALTIME_CONNECTIONS`, or the open-file limit less
    /// `FD_RESERVE` (at least 1) when that is 0.
    pub(crate) fn realtime_connection_ceiling(&self) -> usize {
        if self.max_realtime_connections > 0 {
            return self.max_realtime_connections;
        }
        // The soft limit, as /proc reports it ("Max open files  <soft>  <hard>  files").
        let files = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
            })
            .map_or(1024, |soft| soft.parse::<usize>().unwrap_or(usize::MAX));
        files.saturating_sub(self.fd_reserve).max(1)
    }

    /// Checks what the database-backed commands need.
    pub(crate) fn validate_database(&self) -> Result<(), ConfigError> {
        if self.database_url.is_empty() {
            return Err(ConfigError::Rejected(
                "DATABASE_URL is not set: point it at PostgreSQL, e.g. \
                 postgres://switchboard@127.0.0.1:5432/switchboard"
                    .into(),
            ));
        }
        if self.db_pool_size == 0 {
            return Err(ConfigError::Rejected(
                "DB_POOL_SIZE must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The media settings.
    fn validate_media(&self) -> Result<(), ConfigError> {
        match self.media_store {
            MediaStore::Local if self.media_dir.trim().is_empty() => {
                return Err(ConfigError::Rejected(
                    "MEDIA_STORE=local needs MEDIA_DIR".into(),
                ))
            }
            MediaStore::S3 if self.media_s3_bucket.is_empty() => {
                return Err(ConfigError::Rejected(
                    "MEDIA_STORE=s3 needs MEDIA_S3_BUCKET".into(),
                ))
            }
            MediaStore::Local | MediaStore::S3 => {}
        }
        let url = &self.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::Rejected(
                "PUBLIC_URL must start with http:// or https://".into(),
            ));
        }
        let accel = &self.media_accel_redirect;
        if !(accel.is_empty() || (accel.starts_with('/') && accel.ends_with('/'))) {
            return Err(ConfigError::Rejected(
                "MEDIA_ACCEL_REDIRECT must be a location that starts and ends with `/`".into(),
            ));
        }
        for (name, value) in [
            ("MAX_UPLOAD_BYTES_IMAGE", self.max_upload_bytes_image),
            ("MAX_UPLOAD_BYTES_AUDIO", self.max_upload_bytes_audio),
            ("MAX_UPLOAD_BYTES_VIDEO", self.max_upload_bytes_video),
            ("MAX_UPLOAD_BYTES_DOCUMENT", self.max_upload_bytes_document),
            ("MEDIA_MAX_IMAGE_PIXELS", self.media_max_image_pixels),
            ("MEDIA_THUMBNAIL_PX", u64::from(self.media_thumbnail_px)),
            (
                "MEDIA_UPLOADS_IN_FLIGHT",
                self.media_uploads_in_flight as u64,
            ),
            ("MEDIA_URL_TTL_SECS", self.media_url_ttl.as_secs()),
            (
                "MEDIA_UPLOAD_IDLE_TIMEOUT_SECS",
                self.media_upload_idle_timeout.as_secs(),
            ),
            ("MEDIA_GC_INTERVAL_SECS", self.media_gc_interval.as_secs()),
        ] {
            if value == 0 {
                return Err(ConfigError::Rejected(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }

    /// Checks everything `serve` and `token` rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_database()?;
        if self.jwt_secret.is_empty() {
            return Err(ConfigError::Rejected(
                "JWT_SECRET is not set: generate one with `openssl rand -base64 48`".into(),
            ));
        }
        if self.jwt_secret.expose().len() < 32 && !self.dev_mode {
            return Err(ConfigError::Rejected(format!(
                "JWT_SECRET is {} bytes; at least 32 are required (set SWITCHBOARD_DEV=1 only \
                 for local development)",
                self.jwt_secret.expose().len()
            )));
        }
        if !(4..=10).contains(&self.otp_length) {
            return Err(ConfigError::Rejected(
                "OTP_LENGTH must be between 4 and 10".into(),
            ));
        }
        if self.otp_max_attempts < 1 {
            return Err(ConfigError::Rejected(
                "OTP_MAX_ATTEMPTS must be at least 1".into(),
            ));
        }
        if self.otp_sender == OtpSenderKind::Webhook && self.otp_webhook_url.is_empty() {
            return Err(ConfigError::Rejected(
                "OTP_SENDER=webhook needs OTP_WEBHOOK_URL".into(),
            ));
        }
        if self.access_token_ttl.is_zero() || self.refresh_token_ttl.is_zero() {
            return Err(ConfigError::Rejected(
                "token lifetimes must be positive".into(),
            ));
        }
        if self.heartbeat_interval.is_zero() || self.client_timeout <= self.heartbeat_interval {
            return Err(ConfigError::Rejected(
                "CLIENT_TIMEOUT_SECS must be longer than HEARTBEAT_INTERVAL_SECS (both positive)"
                    .into(),
            ));
        }
        for (name, value) in [
            ("MAX_FRAME_BYTES", self.max_frame_bytes),
            ("OUTBOUND_QUEUE", self.outbound_queue),
            ("WRITE_BATCH_MAX", self.write_batch_max),
            ("WRITE_QUEUE", self.write_queue),
            ("WRITE_SHARDS", self.write_shards),
            ("WRITE_IN_FLIGHT", self.write_in_flight),
            ("CALL_SAVE_BATCH", self.call_save_batch),
            ("CALL_SAVE_QUEUE", self.call_save_queue),
            ("CLUSTER_QUEUE", self.cluster_queue),
            ("MAX_CONTENT_CHARS", self.max_content_chars),
            ("CONTACTS_SYNC_MAX", self.contacts_sync_max),
            ("MAX_CONNECTIONS", self.max_connections),
            ("CONTACT_CACHE_SIZE", self.contact_cache_size),
            ("LAST_SEEN_BATCH", self.last_seen_batch),
            ("LAST_SEEN_BUFFER", self.last_seen_buffer),
            (
                "SOCKETIO_RECOVERY_MAX_EVENTS",
                self.socketio_recovery_max_events,
            ),
            (
                "SOCKETIO_RECOVERY_PER_USER",
                self.socketio_recovery_per_user,
            ),
            (
                "SOCKETIO_RECOVERY_MAX_SESSIONS",
                self.socketio_recovery_max_sessions,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Rejected(format!("{name} must be at least 1")));
            }
        }
        self.validate_media()?;
        if self.listen_backlog == 0 || i32::try_from(self.listen_backlog).is_err() {
            return Err(ConfigError::Rejected(
                "LISTEN_BACKLOG must be between 1 and 2147483647".into(),
            ));
        }
        if self.agora_app_id.is_empty() != self.agora_app_certificate.is_empty() {
            return Err(ConfigError::Rejected(
                "AGORA_APP_ID and AGORA_APP_CERTIFICATE must be set together".into(),
            ));
        }
        if !self.turn_urls.0.is_empty() && self.turn_secret.is_empty() {
            return Err(ConfigError::Rejected(
                "TURN_URLS needs TURN_SECRET (coturn static-auth-secret)".into(),
            ));
        }
        if self.legacy_ids_refresh.is_zero() {
            return Err(ConfigError::Rejected(
                "LEGACY_IDS_REFRESH_SECS must be at least 1".into(),
            ));
        }
        if self.ring_timeout.is_zero() || self.call_rate_per_hour == 0 {
            return Err(ConfigError::Rejected(
                "RING_TIMEOUT_SECS and CALL_RATE_PER_HOUR must be at least 1".into(),
            ));
        }
        if self.frame_rate_per_sec == 0 || self.message_rate_per_min == 0 {
            return Err(ConfigError::Rejected(
                "FRAME_RATE_PER_SEC and MESSAGE_RATE_PER_MIN must be at least 1".into(),
            ));
        }
        self.listeners()?;
        if let Some(bad) = self.contact_link_contexts.0.iter().find(|c| {
            !["consultation", "service_request", "support", "general"].contains(&c.as_str())
        }) {
            return Err(ConfigError::Rejected(format!(
                "CONTACT_LINK_CONTEXTS: `{bad}` is not a context type (consultation, \
                 service_request, support, general)"
            )));
        }
        if self.contact_policy == ContactPolicy::Roles && self.contact_rules.0.is_empty() {
            return Err(ConfigError::Rejected(
                "CONTACT_POLICY=roles needs at least one rule in CONTACT_RULES".into(),
            ));
        }
        if let Err(e) = crate::http::client_ip::parse_list(&self.trusted_proxies.0) {
            return Err(ConfigError::Rejected(format!("TRUSTED_PROXIES: {e}")));
        }
        if !self.redis_url.is_empty() {
            if let Err(e) = fred::prelude::Config::from_url(self.redis_url.expose()) {
                return Err(ConfigError::Rejected(format!(
                    "REDIS_URL is not a Redis URL: {e}"
                )));
            }
            if self.node_heartbeat.is_zero() || self.node_ttl <= self.node_heartbeat {
                return Err(ConfigError::Rejected(
                    "NODE_TTL_MS must be longer than NODE_HEARTBEAT_MS (both positive)".into(),
                ));
            }
            if self.cluster_limit_timeout.is_zero() {
                return Err(ConfigError::Rejected(
                    "CLUSTER_LIMIT_TIMEOUT_MS must be at least 1".into(),
                ));
            }
            if self.redis_prefix.is_empty()
                || self.redis_prefix.contains(|c: char| c.is_whitespace())
            {
                return Err(ConfigError::Rejected(
                    "REDIS_PREFIX must be a non-empty word without spaces".into(),
                ));
            }
            if self
                .node_id
                .contains(|c: char| c.is_whitespace() || c == ':')
            {
                return Err(ConfigError::Rejected(
                    "NODE_ID must not contain spaces or `:`".into(),
                ));
            }
        }
        if self.last_seen_flush.is_zero() {
            return Err(ConfigError::Rejected(
                "LAST_SEEN_FLUSH_MS must be at least 1".into(),
            ));
        }
        if self.allowed_origins.0.iter().any(|o| o == "*") && !self.dev_mode {
            return Err(ConfigError::Rejected(
                "ALLOWED_ORIGINS must list exact origins; `*` is accepted only in dev mode".into(),
            ));
        }
        self.validate_auth_limits()
    }

    /// Checks the password hashing and authentication limit settings.
    fn validate_auth_limits(&self) -> Result<(), ConfigError> {
        let counts = [
            ("PASSWORD_HASH_THREADS", self.password_hash_threads as u64),
            ("AUTH_LIMITER_ENTRIES", self.auth_limiter_entries as u64),
            (
                "AUTH_ACCOUNT_MAX_FAILURES",
                u64::from(self.auth_account_max_failures),
            ),
            (
                "AUTH_ADDRESS_MAX_FAILURES",
                u64::from(self.auth_address_max_failures),
            ),
            (
                "OTP_SENDS_PER_ADDRESS_PER_HOUR",
                u64::from(self.otp_sends_per_address_per_hour),
            ),
            ("OTP_SENDS_PER_MINUTE", u64::from(self.otp_sends_per_minute)),
            (
                "AUTH_FAILURE_WINDOW_SECS",
                self.auth_failure_window.as_secs(),
            ),
            ("AUTH_LOCKOUT_SECS", self.auth_lockout.as_secs()),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Rejected(format!("{name} must be at least 1")));
        }
        if self.auth_lockout_max < self.auth_lockout {
            return Err(ConfigError::Rejected(
                "AUTH_LOCKOUT_MAX_SECS must be at least AUTH_LOCKOUT_SECS".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn legacy_session_tokens_are_refused_unless_enabled() {
        let base = [
            ("DATABASE_URL", "postgres://x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        let config = Config::load_from(None, &env(&base)).unwrap();
        assert!(!config.accept_legacy_session_tokens);
        let mut pairs = base.to_vec();
        pairs.push(("ACCEPT_LEGACY_SESSION_TOKENS", "true"));
        let config = Config::load_from(None, &env(&pairs)).unwrap();
        config.validate().unwrap();
        assert!(config.accept_legacy_session_tokens);
        let pairs = [base[0], base[1], ("ACCEPT_LEGACY_SESSION_TOKENS", "maybe")];
        assert!(Config::load_from(None, &env(&pairs)).is_err());
    }

    #[test]
    fn a_cluster_node_writes_with_one_writer_unless_told_otherwise() {
        let base = [
            ("DATABASE_URL", "postgres://x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        let one = Config::load_from(None, &env(&base)).unwrap();
        assert_eq!(one.write_shards, 2);
        let mut pairs = base.to_vec();
        pairs.push(("REDIS_URL", "redis://127.0.0.1:6379/0"));
        let node = Config::load_from(None, &env(&pairs)).unwrap();
        assert_eq!(node.write_shards, CLUSTER_WRITE_SHARDS);
        pairs.push(("WRITE_SHARDS", "3"));
        let told = Config::load_from(None, &env(&pairs)).unwrap();
        assert_eq!(told.write_shards, 3);
    }

    #[test]
    fn cluster_publishes_are_spaced_unless_told_otherwise() {
        let mut pairs = vec![
            ("DATABASE_URL", "postgres://x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("REDIS_URL", "redis://127.0.0.1:6379/0"),
        ];
        let node = Config::load_from(None, &env(&pairs)).unwrap();
        assert_eq!(node.cluster_publish_interval, Duration::from_millis(2));
        pairs.push(("CLUSTER_PUBLISH_INTERVAL_MS", "0"));
        let at_once = Config::load_from(None, &env(&pairs)).unwrap();
        assert_eq!(at_once.cluster_publish_interval, Duration::ZERO);
        pairs.pop();
        pairs.push(("CLUSTER_PUBLISH_INTERVAL_MS", "soon"));
        assert!(Config::load_from(None, &env(&pairs)).is_err());
    }

    #[test]
    fn short_secret_is_refused_outside_dev_mode() {
        let e = env(&[("DATABASE_URL", "postgres://x"), ("JWT_SECRET", "short")]);
        let config = Config::load_from(None, &e).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("at least 32"), "{err}");

        let e = env(&[
            ("DATABASE_URL", "postgres://x"),
            ("JWT_SECRET", "short"),
            ("SWITCHBOARD_DEV", "1"),
        ]);
        Config::load_from(None, &e).unwrap().validate().unwrap();
    }

    #[test]
    fn environment_overrides_file_and_lists_split_on_commas() {
        let dir = std::env::temp_dir().join(format!("sbcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "bind = \"0.0.0.0:9000\"\notp_ttl_secs = 120\nallowed_origins = [\"https://a\", \"https://b\"]\n",
        )
        .unwrap();
        let e = env(&[("BIND", "127.0.0.1:7000")]);
        let config = Config::load_from(Some(&path), &e).unwrap();
        assert_eq!(config.bind, "127.0.0.1:7000");
        assert_eq!(config.otp_ttl, Duration::from_secs(120));
        assert_eq!(config.allowed_origins.0, vec!["https://a", "https://b"]);
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        let e = env(&[("DB_POOL_SIZE", "many")]);
        let err = Config::load_from(None, &e).unwrap_err().to_string();
        assert!(err.contains("DB_POOL_SIZE"), "{err}");
    }

    #[test]
    fn named_choices_are_resolved_once_when_read_and_bad_ones_name_their_variable() {
        let e = env(&[("DEFAULT_DIALECT", "SEED003"), ("MEDIA_STORE", "s3")]);
        let config = Config::load_from(None, &e).unwrap();
        assert_eq!(config.default_dialect.0.name, "backend2");
        assert_eq!(config.media_store, MediaStore::S3);
        for (key, bad) in [("DEFAULT_DIALECT", "nope"), ("MEDIA_STORE", "ftp")] {
            let err = Config::load_from(None, &env(&[(key, bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn contact_policy_settings_parse_and_validate() {
        let e = env(&[
            ("DATABASE_URL", "postgres://x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("CONTACT_POLICY", "roles"),
            ("CONTACT_RULES", "admin>*, staff>*:linked"),
            ("CONTACT_LINK_CONTEXTS", "consultation"),
            ("CONTACT_CACHE_TTL_SECS", "0"),
            ("CONTACT_CACHE_SIZE", "500"),
        ]);
        let config = Config::load_from(None, &e).unwrap();
        config.validate().unwrap();
        assert_eq!(config.contact_cache_ttl, Duration::ZERO);
        assert_eq!(config.contact_cache_size, 500);
        assert_eq!(config.contact_policy, ContactPolicy::Roles);
        assert_eq!(config.contact_rules.to_string(), "admin>*,staff>*:linked");
        let bad = env(&[("CONTACT_RULES", "admin")]);
        let err = Config::load_from(None, &bad).unwrap_err().to_string();
        assert!(err.contains("CONTACT_RULES"), "{err}");
        let e = env(&[
            ("DATABASE_URL", "postgres://x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("CONTACT_LINK_CONTEXTS", "dinner"),
        ]);
        let err = Config::load_from(None, &e).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("dinner"), "{err}");
    }

    #[test]
    fn connection_limits_parse_and_default_to_a_large_node() {
        let config = Config::load_from(None, &env(&[])).unwrap();
        assert_eq!(config.http_workers, 0);
        assert_eq!(config.max_connections, 200_000);
        assert_eq!(config.listen_backlog, 4096);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(config.http_worker_count(), cores);
        assert!(config.max_connections_per_worker() * cores >= 100_000);

        let e = env(&[
            ("HTTP_WORKERS", "3"),
            ("MAX_CONNECTIONS", "100000"),
            ("LISTEN_BACKLOG", "1024"),
        ]);
        let config = Config::load_from(None, &e).unwrap();
        assert_eq!(config.http_worker_count(), 3);
        assert_eq!(config.max_connections, 100_000);
        // Rounded up: three workers of 33 334 allow the whole 100 000.
        assert_eq!(config.max_connections_per_worker(), 33_334);
        assert_eq!(config.listen_backlog, 1024);

        let dir = std::env::temp_dir().join(format!("sbcfg-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "http_workers = 8\nmax_connections = 500000\nlisten_backlog = 65535\n",
        )
        .unwrap();
        let config = Config::load_from(Some(&path), &env(&[("HTTP_WORKERS", "4")])).unwrap();
        assert_eq!(config.http_workers, 4);
        assert_eq!(config.max_connections_per_worker(), 125_000);
        assert_eq!(config.listen_backlog, 65_535);
        let _ = std::fs::remove_dir_all(&dir);

        let err = Config::load_from(None, &env(&[("MAX_CONNECTIONS", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MAX_CONNECTIONS"), "{err}");
        let base = [
            ("DATABASE_URL", "postgres://x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        for (key, value, message) in [
            ("MAX_CONNECTIONS", "0", "MAX_CONNECTIONS must be at least 1"),
            ("LISTEN_BACKLOG", "0", "LISTEN_BACKLOG must be between"),
            (
                "LISTEN_BACKLOG",
                "4294967295",
                "LISTEN_BACKLOG must be between",
            ),
        ] {
            let mut pairs = base.to_vec();
            pairs.push((key, value));
            let err = Config::load_from(None, &env(&pairs))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{key}={value}: {err}");
        }
    }

    #[test]
    fn authentication_limit_settings_parse_and_validate() {
        let config = Config::load_from(None, &env(&[])).unwrap();
        assert_eq!(config.password_hash_threads, 2);
        assert_eq!(config.auth_lockout, Duration::from_secs(60));
        let base = [
            ("DATABASE_URL", "postgres://x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        let mut pairs = base.to_vec();
        pairs.extend([
            ("PASSWORD_HASH_THREADS", "4"),
            ("PASSWORD_HASH_QUEUE", "0"),
            ("AUTH_ACCOUNT_MAX_FAILURES", "5"),
            ("AUTH_ADDRESS_MAX_FAILURES", "50"),
            ("AUTH_FAILURE_WINDOW_SECS", "300"),
            ("AUTH_LOCKOUT_SECS", "30"),
            ("AUTH_LOCKOUT_MAX_SECS", "900"),
            ("OTP_SENDS_PER_ADDRESS_PER_HOUR", "6"),
            ("OTP_SENDS_PER_MINUTE", "100"),
            ("AUTH_LIMITER_ENTRIES", "1000"),
        ]);
        let config = Config::load_from(None, &env(&pairs)).unwrap();
        config.validate().unwrap();
        assert_eq!(config.password_hash_threads, 4);
        assert_eq!(config.password_hash_queue, 0);
        assert_eq!(config.auth_account_max_failures, 5);
        assert_eq!(config.auth_address_max_failures, 50);
        assert_eq!(config.auth_failure_window, Duration::from_secs(300));
        assert_eq!(config.auth_lockout, Duration::from_secs(30));
        assert_eq!(config.auth_lockout_max, Duration::from_secs(900));
        assert_eq!(config.otp_sends_per_address_per_hour, 6);
        assert_eq!(config.otp_sends_per_minute, 100);
        assert_eq!(config.auth_limiter_entries, 1000);

        for (key, value, message) in [
            (
                "PASSWORD_HASH_THREADS",
                "0",
                "PASSWORD_HASH_THREADS must be at least 1",
            ),
            (
                "AUTH_ACCOUNT_MAX_FAILURES",
                "0",
                "AUTH_ACCOUNT_MAX_FAILURES must be",
            ),
            ("OTP_SENDS_PER_MINUTE", "0", "OTP_SENDS_PER_MINUTE must be"),
            ("AUTH_LOCKOUT_SECS", "0", "AUTH_LOCKOUT_SECS must be"),
            (
                "AUTH_LOCKOUT_MAX_SECS",
                "10",
                "AUTH_LOCKOUT_MAX_SECS must be at least",
            ),
            ("AUTH_LIMITER_ENTRIES", "0", "AUTH_LIMITER_ENTRIES must be"),
        ] {
            let mut pairs = base.to_vec();
            pairs.push((key, value));
            let err = Config::load_from(None, &env(&pairs))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{key}={value}: {err}");
        }
        let err = Config::load_from(None, &env(&[("AUTH_LOCKOUT_SECS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("AUTH_LOCKOUT_SECS"), "{err}");
    }

    #[test]
    fn secrets_are_masked_in_debug_output() {
        let e = env(&[("JWT_SECRET", "super-secret-value-that-is-long-enough!")]);
        let config = Config::load_from(None, &e).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("super-secret"), "{debug}");
    }
}
