//! Media attachments: uploads streamed into an object store, their type sniffed from the bytes,
//! images stripped of metadata and thumbnailed, signed expiring URLs for clients that cannot add
//! an `Authorization` header, and the clean-up of what no message uses.
//!
//! An upload is written under `media/<id>` (and `media/<id>.thumb`) before its row is inserted:
//! a reader only ever finds complete files, and a crash mid-upload leaves at most an object with
//! no row, which the clean-up removes after `MEDIA_GC_GRACE_SECS`.

pub(crate) mod picture;
pub(crate) mod probe;
pub(crate) mod sniff;

use crate::config::{Config, MediaStore};
use crate::db::media::{self as rows, MediaRow};
use crate::db::Db;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::metrics::Metrics;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use ring::{digest, hmac};
use serde_json::Value;
use sniff::{Kind, Sniffed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// The path of an upload's canonical URL (`Authorization` required unless signed).
pub(crate) fn media_path(id: &str, thumbnail: bool) -> String {
    if thumbnail {
        format!("/api/media/{id}/thumbnail")
    } else {
        format!("/api/media/{id}")
    }
}

/// Whether `id` has the shape of a media id (32 lower-case hex digits).
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The media id in one of this server's media URLs: a path, a URL under `PUBLIC_URL`, or any
/// absolute URL that carries this server's signature for that id (its host is whatever the
/// uploading client reached; an expired signature still proves the origin).
pub(crate) fn id_in_url(url: &str, public_url: &str) -> Option<String> {
    let url = url.trim();
    let public = public_url.trim_end_matches('/');
    let (path, trusted) =
        if let Some(rest) = url.strip_prefix(public).filter(|_| !public.is_empty()) {
            (rest, true)
        } else if url.starts_with('/') && !url.starts_with("//") {
            (url, true)
        } else {
            let after_scheme = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))?;
            (&after_scheme[after_scheme.find('/')?..], false)
        };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let path = path.split('#').next()?;
    let rest = path
        .strip_prefix("/api/media/")
        .or_else(|| path.strip_prefix("/media/"))?;
    let (id, thumbnail) = match rest.strip_suffix("/thumbnail") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    if !valid_id(id) {
        return None;
    }
    if !trusted {
        // Another host's URL whose path looks like ours is someone else's file unless signed.
        let param = |name: &str| {
            query
                .split(['&', '#'])
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let exp = param("exp")?.parse::<u64>().ok()?;
        let sig = param("sig")?;
        let urls = URLS
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        if !urls.authentic(id, thumbnail, exp, sig) {
            return None;
        }
    }
    Some(id.to_owned())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs and checks media URLs: `?exp=<unix seconds>&sig=<HMAC-SHA256(id, variant, exp)>`.
#[derive(Debug)]
pub struct Urls {
    key: hmac::Key,
    base: String,
    ttl: u64,
}

impl Urls {
    /// The signer for `config` (its key is derived from `JWT_SECRET`).
    pub(crate) fn new(config: &Config) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, config.jwt_secret.expose().as_bytes());
        let derived = hmac::sign(&root, b"switchboard media url key v1");
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
            base: config.public_url.trim_end_matches('/').to_owned(),
            ttl: config.media_url_ttl.as_secs(),
        }
    }

    /// The link's MAC: HMAC-SHA256 of `id:variant:exp`, its first 144 bits.
    fn tag(&self, id: &str, thumbnail: bool, exp: u64) -> [u8; 18] {
        let text = format!("{id}:{}:{exp}", if thumbnail { "t" } else { "o" });
        let mut tag = [0u8; 18];
        tag.copy_from_slice(&hmac::sign(&self.key, text.as_bytes()).as_ref()[..18]);
        tag
    }

    fn signature(&self, id: &str, thumbnail: bool, exp: u64) -> String {
        B64URL.encode(self.tag(id, thumbnail, exp))
    }

    /// A signed URL under `base` (else `PUBLIC_URL`, else a path). The expiry is rounded up to
    /// the hour, so the URL of one file stays the same for an hour (browser caches keep it).
    pub(crate) fn signed(&self, id: &str, thumbnail: bool, base: Option<&str>) -> String {
        let exp = (now_secs() / 3600 + 1) * 3600 + self.ttl;
        self.signed_until(id, thumbnail, exp, base)
    }

    /// A URL signed to expire at `exp` (unix seconds).
    pub fn signed_until(&self, id: &str, thumbnail: bool, exp: u64, base: Option<&str>) -> String {
        let base = base.map_or(self.base.as_str(), |b| b.trim_end_matches('/'));
        format!(
            "{base}{}?exp={exp}&sig={}",
            media_path(id, thumbnail),
            self.signature(id, thumbnail, exp)
        )
    }

    /// Checks a signed URL's `exp` and `sig`; returns the seconds it stays valid.
    pub(crate) fn verify(&self, id: &str, thumbnail: bool, exp: u64, sig: &str) -> AppResult<u64> {
        if !self.authentic(id, thumbnail, exp, sig) {
            return Err(AppError::Forbidden(
                "the link's signature is not valid".into(),
            ));
        }
        let now = now_secs();
        if exp <= now {
            return Err(AppError::LinkExpired(
                "the link has expired; fetch the message again for a fresh one".into(),
            ));
        }
        Ok(exp - now)
    }

    /// Whether `sig` is this server's signature of the link (expired or not).
    fn authentic(&self, id: &str, thumbnail: bool, exp: u64, sig: &str) -> bool {
        let Ok(given) = B64URL.decode(sig.trim()) else {
            return false;
        };
        // Compared in constant time.
        let differ = self
            .tag(id, thumbnail, exp)
            .iter()
            .zip(&given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        given.len() == 18 && differ == 0
    }

    /// A message's attachment as clients see it: the signed `mediaUrl` and the `media` object
    /// (`summary` from [`MediaRow::summary`] with `url` and, for images, `thumbnailUrl`).
    pub(crate) fn present(&self, summary: &Value) -> (Option<String>, Option<Value>) {
        let Some(id) = summary.get("id").and_then(Value::as_str) else {
            return (None, None);
        };
        let url = self.signed(id, false, None);
        let mut out = summary.clone();
        if let Some(map) = out.as_object_mut() {
            if map.remove("thumbnail").is_some() {
                map.insert("thumbnailUrl".into(), self.signed(id, true, None).into());
            }
            map.insert("url".into(), url.clone().into());
        }
        (Some(url), Some(out))
    }
}

/// What [`present`] makes of a stored summary, as the OpenAPI document describes a message's
/// `media` (the summary is JSON kept with the message).
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct AttachmentDoc {
    /// Media id.
    pub id: String,
    /// Signed URL of the file (the same as the message's `mediaUrl`).
    pub url: String,
    /// Content type read from the bytes.
    pub content_type: String,
    /// `image`, `audio`, `video` or `document`.
    #[schema(required = false)]
    pub kind: String,
    /// Size in bytes.
    pub size: i64,
    /// File name the uploader gave.
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// Image or video width.
    #[schema(nullable = false)]
    pub width: Option<i64>,
    /// Image or video height.
    #[schema(nullable = false)]
    pub height: Option<i64>,
    /// Audio or video length.
    #[schema(nullable = false)]
    pub duration_ms: Option<i64>,
    /// Signed URL of an image's thumbnail.
    #[schema(nullable = false)]
    pub thumbnail_url: Option<String>,
}

static URLS: RwLock<Option<Arc<Urls>>> = RwLock::new(None);

/// Makes `urls` the signer message views use (one server per process; the last one started
/// wins in a test process, whose servers share their secret).
pub(crate) fn install(urls: Arc<Urls>) {
    *URLS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(urls);
}

/// A message's attachment as clients see it (see [`Urls::present`]); before a server started,
/// the unsigned paths.
pub(crate) fn present(summary: &Value) -> (Option<String>, Option<Value>) {
    let urls = URLS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    match urls {
        Some(urls) => urls.present(summary),
        None => {
            let id = summary
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            (Some(media_path(id, false)), Some(summary.clone()))
        }
    }
}

/// The store key of an upload or its thumbnail.
pub(crate) fn store_key(id: &str, thumbnail: bool) -> StorePath {
    if thumbnail {
        StorePath::from(format!("media/{id}.thumb"))
    } else {
        StorePath::from(format!("media/{id}"))
    }
}

/// The media service: store, limits, signer.
#[derive(Debug)]
pub struct Media {
    /// Where the bytes are.
    pub store: Arc<dyn ObjectStore>,
    /// The `local` store's directory (for `X-Accel-Redirect` and staging clean-up).
    pub local_dir: Option<std::path::PathBuf>,
    /// URL signer.
    pub urls: Arc<Urls>,
    config: Arc<Config>,
    db: Db,
    metrics: Arc<Metrics>,
    uploads: Arc<Semaphore>,
    per_user: Arc<std::sync::Mutex<std::collections::HashMap<i64, usize>>>,
    cpu: Arc<Semaphore>,
    intake: Intake,
}

/// An upload's place: one of `MEDIA_UPLOADS_IN_FLIGHT` and one of its user's
/// `MEDIA_UPLOADS_PER_USER`, both given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    _global: tokio::sync::OwnedSemaphorePermit,
    user: i64,
    per_user: Arc<std::sync::Mutex<std::collections::HashMap<i64, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self
            .per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = running.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.user);
            }
        }
    }
}

/// The process-wide upload intake rate (`MEDIA_UPLOAD_BYTES_PER_SEC`): a token bucket holding at
/// most one second's worth. A chunk that finds the bucket short waits for the tokens it lacks,
/// so uploads are read more slowly rather than refused.
#[derive(Debug)]
struct Intake {
    rate: f64,
    bucket: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl Intake {
    fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: bytes_per_sec as f64,
            bucket: std::sync::Mutex::new((bytes_per_sec as f64, std::time::Instant::now())),
        }
    }

    /// Takes `n` bytes from the bucket; how long to wait before reading more.
    fn take(&self, n: usize) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        let (tokens, last) = *bucket;
        let refilled = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        let left = refilled - n as f64;
        *bucket = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }
}

/// What an upload is given as.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    /// The client's file name.
    pub filename: Option<String>,
    /// `Content-Length` of the request, when it said.
    pub declared_len: Option<u64>,
}

/// A file name fit for `Content-Disposition`: no path, no control characters, at most 200 chars.
pub(crate) fn clean_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    (!cleaned.is_empty()).then_some(cleaned)
}

impl Media {
    /// The service for `config` (opens or creates the store).
    pub(crate) fn new(config: Arc<Config>, db: Db, metrics: Arc<Metrics>) -> Result<Self, String> {
        let (store, local_dir): (Arc<dyn ObjectStore>, _) = match config.media_store {
            MediaStore::S3 => {
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&config.media_s3_bucket)
                    .with_region(&config.media_s3_region);
                if !config.media_s3_endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&config.media_s3_endpoint)
                        .with_allow_http(config.media_s3_endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                if !config.media_s3_access_key_id.is_empty() {
                    builder = builder
                        .with_access_key_id(&config.media_s3_access_key_id)
                        .with_secret_access_key(config.media_s3_secret_access_key.expose());
                }
                let store = builder
                    .build()
                    .map_err(|e| format!("MEDIA_STORE=s3: {e}"))?;
                (Arc::new(store), None)
            }
            MediaStore::Local => {
                let dir = std::path::PathBuf::from(&config.media_dir);
                std::fs::create_dir_all(dir.join("media"))
                    .map_err(|e| format!("MEDIA_DIR {}: {e}", dir.display()))?;
                let dir = dir
                    .canonicalize()
                    .map_err(|e| format!("MEDIA_DIR {}: {e}", dir.display()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| format!("MEDIA_DIR {}: {e}", dir.display()))?
                    .with_automatic_cleanup(true);
                (Arc::new(store), Some(dir))
            }
        };
        Ok(Self {
            store,
            local_dir,
            urls: Arc::new(Urls::new(&config)),
            uploads: Arc::new(Semaphore::new(config.media_uploads_in_flight)),
            per_user: Arc::default(),
            cpu: Arc::new(Semaphore::new(config.media_cpu_slots())),
            intake: Intake::new(config.media_upload_bytes_per_sec),
            config,
            db,
            metrics,
        })
    }

    /// The size limit of a kind.
    pub(crate) fn limit(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Image => self.config.max_upload_bytes_image,
            Kind::Audio => self.config.max_upload_bytes_audio,
            Kind::Video => self.config.max_upload_bytes_video,
            Kind::Document => self.config.max_upload_bytes_document,
        }
    }

    fn largest_limit(&self) -> u64 {
        [Kind::Image, Kind::Audio, Kind::Video, Kind::Document]
            .into_iter()
            .map(|k| self.limit(k))
            .max()
            .unwrap_or(0)
    }

    /// A slot for one upload — 503 when `MEDIA_UPLOADS_IN_FLIGHT` are running, 429 when the user
    /// has `MEDIA_UPLOADS_PER_USER` running — and the checks that need no body (declared size,
    /// quota already used up).
    pub(crate) async fn admit(&self, owner: i64, incoming: &Incoming) -> AppResult<Slot> {
        if let Some(len) = incoming.declared_len {
            let max = self.largest_limit();
            if len > max {
                self.metrics.media_upload("too_large", 0);
                return Err(AppError::TooLarge(
                    format!("the upload is {len} bytes; no kind of media may exceed {max}").into(),
                ));
            }
        }
        let global =
            Arc::clone(&self.uploads)
                .try_acquire_owned()
                .map_err(|_| AppError::Overloaded {
                    retry_after_secs: 2,
                })?;
        {
            let mut running = self
                .per_user
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = running.entry(owner).or_insert(0);
            if *n >= self.config.media_uploads_per_user {
                return Err(AppError::RateLimited {
                    retry_after_secs: 2,
                });
            }
            *n += 1;
        }
        let permit = Slot {
            _global: global,
            user: owner,
            per_user: Arc::clone(&self.per_user),
        };
        let used = self
            .db
            .run(move |conn| rows::used_bytes(conn, owner))
            .await?;
        if u64::try_from(used).unwrap_or(0) >= self.config.media_quota_bytes {
            self.metrics.media_upload("quota_exceeded", 0);
            return Err(AppError::QuotaExceeded(
                format!(
                    "your stored media already takes {used} bytes of {}",
                    self.config.media_quota_bytes
                )
                .into(),
            ));
        }
        Ok(permit)
    }

    /// Receives one upload from `body`, stores it and inserts its row.
    pub(crate) async fn receive<S>(
        &self,
        owner: i64,
        incoming: Incoming,
        body: S,
    ) -> AppResult<MediaRow>
    where
        S: Stream<Item = AppResult<Bytes>> + Unpin,
    {
        let result = self.receive_inner(owner, incoming, body).await;
        match &result {
            Ok(row) => self.metrics.media_upload(
                "stored",
                (row.size + row.thumbnail_size.unwrap_or(0)) as u64,
            ),
            Err(e) => self.metrics.media_upload(
                match e {
                    AppError::TooLarge(_) => "too_large",
                    AppError::UnsupportedMediaType(_) => "unsupported_media_type",
                    AppError::QuotaExceeded(_) => "quota_exceeded",
                    AppError::Timeout(_) => "timeout",
                    AppError::BadRequest { .. } | AppError::Validation { .. } => "invalid",
                    _ => "failed",
                },
                0,
            ),
        }
        result
    }

    async fn receive_inner<S>(
        &self,
        owner: i64,
        incoming: Incoming,
        mut body: S,
    ) -> AppResult<MediaRow>
    where
        S: Stream<Item = AppResult<Bytes>> + Unpin,
    {
        let mut body = Body {
            stream: &mut body,
            idle: self.config.media_upload_idle_timeout,
            intake: &self.intake,
        };
        // The first bytes decide what it is.
        let mut head: Vec<u8> = Vec::with_capacity(sniff::SNIFF_BYTES);
        let mut ended = false;
        while head.len() < sniff::SNIFF_BYTES {
            match body.next().await? {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if head.is_empty() {
            return Err(AppError::bad_request(
                ErrorCode::EmptyUpload,
                "the upload is empty",
            ));
        }
        let sniffed = sniff::sniff(&head).ok_or_else(|| {
            AppError::UnsupportedMediaType(
                format!(
                    "this kind of file is not accepted (types are read from the file itself); \
                     accepted: {}",
                    sniff::accepted().join(", ")
                )
                .into(),
            )
        })?;
        let limit = self.limit(sniffed.kind);
        let too_large = |size: u64| {
            AppError::TooLarge(
                format!(
                    "{} uploads may be at most {limit} bytes (this one is {size} or more)",
                    sniffed.kind.as_str()
                )
                .into(),
            )
        };
        if let Some(len) = incoming
            .declared_len
            .filter(|l| *l > limit.saturating_add(64 * 1024))
        {
            // A multipart body is a little larger than its file; a raw body is the file.
            return Err(too_large(len));
        }
        let id = crate::auth::tokens::random_id()?;
        let filename = incoming.filename.as_deref().and_then(clean_filename);
        let stored = if sniffed.kind == Kind::Image {
            // Images are read whole (at most MAX_UPLOAD_BYTES_IMAGE), then examined.
            let mut all = head;
            while !ended {
                match body.next().await? {
                    Some(chunk) => {
                        all.extend_from_slice(&chunk);
                        if all.len() as u64 > limit {
                            return Err(too_large(all.len() as u64));
                        }
                    }
                    None => ended = true,
                }
            }
            if all.len() as u64 > limit {
                return Err(too_large(all.len() as u64));
            }
            self.store_image(&id, sniffed, all).await?
        } else {
            self.store_stream(&id, sniffed, head, ended, limit, &mut body, too_large)
                .await?
        };
        let row = MediaRow {
            id: id.clone(),
            owner_id: owner,
            kind: sniffed.kind.as_str().to_owned(),
            content_type: sniffed.mime.to_owned(),
            size: stored.size as i64,
            sha256: stored.sha256,
            filename,
            width: stored.dimensions.map(|d| d.0 as i32),
            height: stored.dimensions.map(|d| d.1 as i32),
            duration_ms: stored.duration_ms,
            thumbnail_size: stored.thumbnail.map(|t| t.0 as i64),
            thumbnail_type: stored.thumbnail.map(|t| t.1.to_owned()),
            created_at: chrono::Utc::now(),
        };
        let quota = self.config.media_quota_bytes;
        let insert = row.clone();
        if let Err(e) = self
            .db
            .run(move |conn| rows::insert_within_quota(conn, &insert, quota))
            .await
        {
            self.remove_objects(&id).await;
            return Err(e);
        }
        Ok(row)
    }

    async fn store_image(&self, id: &str, sniffed: Sniffed, bytes: Vec<u8>) -> AppResult<Stored> {
        let permit = Arc::clone(&self.cpu)
            .acquire_owned()
            .await
            .map_err(|_| AppError::unavailable("media processing stopped"))?;
        let bounds = picture::Bounds {
            max_pixels: self.config.media_max_image_pixels,
            thumbnail_px: self.config.media_thumbnail_px,
        };
        let mime = sniffed.mime;
        let done = actix_web::rt::task::spawn_blocking(move || {
            let _permit = permit;
            picture::process(&bytes, mime, bounds)
        })
        .await
        .map_err(|e| AppError::internal(format!("image processing: {e}")))?
        .map_err(|refusal| match refusal {
            picture::Refusal::TooLarge(m) => AppError::TooLarge(m.into()),
            picture::Refusal::Malformed(m) => AppError::UnsupportedMediaType(m.into()),
        })?;
        let sha = crate::auth::tokens::hex(digest::digest(&digest::SHA256, &done.stored).as_ref());
        let size = done.stored.len() as u64;
        let thumbnail = match done.thumbnail {
            Some((bytes, mime)) => {
                let len = bytes.len() as u64;
                self.store
                    .put(&store_key(id, true), PutPayload::from(bytes))
                    .await
                    .map_err(|e| AppError::unavailable(format!("media store: {e}")))?;
                Some((len, mime))
            }
            None => None,
        };
        if let Err(e) = self
            .store
            .put(&store_key(id, false), PutPayload::from(done.stored))
            .await
        {
            self.remove_objects(id).await;
            return Err(AppError::unavailable(format!("media store: {e}")));
        }
        Ok(Stored {
            size,
            sha256: sha,
            dimensions: Some((done.width, done.height)),
            duration_ms: None,
            thumbnail,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_stream<S>(
        &self,
        id: &str,
        sniffed: Sniffed,
        head: Vec<u8>,
        mut ended: bool,
        limit: u64,
        body: &mut Body<'_, S>,
        too_large: impl Fn(u64) -> AppError,
    ) -> AppResult<Stored>
    where
        S: Stream<Item = AppResult<Bytes>> + Unpin,
    {
        let upload = self
            .store
            .put_multipart(&store_key(id, false))
            .await
            .map_err(|e| AppError::unavailable(format!("media store: {e}")))?;
        let mut writer = WriteMultipart::new(upload);
        let mut seen = Seen {
            hasher: digest::Context::new(&digest::SHA256),
            size: 0,
            first: Vec::with_capacity(probe::HEAD_BYTES),
            tail: Tail::new(probe::TAIL_BYTES),
        };
        seen.push(&head);
        writer.write(&head);
        let outcome: AppResult<()> = async {
            while !ended {
                // At most a few parts buffered: a slow store slows the client, not memory.
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| AppError::unavailable(format!("media store: {e}")))?;
                match body.next().await? {
                    Some(chunk) => {
                        seen.push(&chunk);
                        writer.write(&chunk);
                        if seen.size > limit {
                            return Err(too_large(seen.size));
                        }
                    }
                    None => ended = true,
                }
            }
            if seen.size > limit {
                return Err(too_large(seen.size));
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(|e| AppError::unavailable(format!("media store: {e}")))?;
        let Seen {
            hasher,
            size,
            first,
            tail,
        } = seen;
        let tail = tail.into_vec();
        let ends = probe::Ends {
            head: &first,
            tail: &tail,
            size,
        };
        Ok(Stored {
            size,
            sha256: crate::auth::tokens::hex(hasher.finish().as_ref()),
            dimensions: None,
            duration_ms: probe::duration_ms(sniffed.mime, &ends),
            thumbnail: None,
        })
    }

    /// Deletes an upload's objects (missing ones are fine).
    pub(crate) async fn remove_objects(&self, id: &str) {
        for thumbnail in [false, true] {
            match self.store.delete(&store_key(id, thumbnail)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(media = id, error = %e, "media object not removed"),
            }
        }
    }

    /// One clean-up pass: unreferenced uploads past the grace period, then objects without a
    /// row (an upload cut short by a crash) and, in a local store, staging files of uploads
    /// that never finished. Returns how many uploads were removed.
    pub async fn collect(&self) -> AppResult<usize> {
        let grace = self.config.media_gc_grace;
        let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let mut removed = 0usize;
        loop {
            let batch = self
                .db
                .run(move |conn| rows::collect_unreferenced(conn, grace_secs, 500))
                .await?;
            for row in &batch {
                self.remove_objects(&row.id).await;
            }
            removed += batch.len();
            if batch.len() < 500 {
                break;
            }
        }
        let orphans = self.collect_orphans(grace).await?;
        self.metrics
            .media_objects_removed((removed + orphans) as u64);
        let total = self.db.run(rows::total_bytes).await?;
        self.metrics.set_media_bytes_stored(total);
        if removed + orphans > 0 {
            tracing::info!(removed, orphans, "media clean-up");
        }
        Ok(removed)
    }

    async fn collect_orphans(&self, grace: Duration) -> AppResult<usize> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::days(1));
        let mut listing = self.store.list(Some(&StorePath::from("media")));
        let mut old: Vec<(StorePath, String)> = Vec::new();
        let mut removed = 0usize;
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| AppError::unavailable(format!("media store: {e}")))?;
            if meta.last_modified >= cutoff {
                continue;
            }
            let name = meta.location.filename().unwrap_or_default();
            let id = name.strip_suffix(".thumb").unwrap_or(name).to_owned();
            old.push((meta.location, id));
            if old.len() >= 1000 {
                removed += self.remove_orphans(std::mem::take(&mut old)).await?;
            }
        }
        removed += self.remove_orphans(old).await?;
        if let Some(dir) = &self.local_dir {
            // A directory listing: on the blocking pool, not the event loop.
            let dir = dir.join("media");
            removed +=
                actix_web::rt::task::spawn_blocking(move || remove_stale_staging(&dir, grace))
                    .await
                    .map_err(|e| AppError::internal(format!("media staging clean-up: {e}")))?;
        }
        Ok(removed)
    }

    async fn remove_orphans(&self, objects: Vec<(StorePath, String)>) -> AppResult<usize> {
        if objects.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = objects.iter().map(|(_, id)| id.clone()).collect();
        let known: std::collections::HashSet<String> = self
            .db
            .run(move |conn| rows::existing(conn, &ids))
            .await?
            .into_iter()
            .collect();
        let mut removed = 0;
        for (path, id) in objects {
            if !known.contains(&id) {
                if let Err(e) = self.store.delete(&path).await {
                    tracing::warn!(object = %path, error = %e, "orphaned media object not removed");
                } else {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Starts the periodic clean-up (first pass after one interval) and reads the stored-bytes
    /// gauge once now.
    pub(crate) fn start_collector(self: &Arc<Self>) {
        let media = Arc::clone(self);
        actix_web::rt::spawn(async move {
            if let Ok(total) = media.db.run(rows::total_bytes).await {
                media.metrics.set_media_bytes_stored(total);
            }
            let mut every = tokio::time::interval(media.config.media_gc_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = media.collect().await {
                    tracing::warn!(error = %e, "media clean-up failed; retried next interval");
                }
            }
        });
    }
}

/// Staging files a local store leaves when an upload never finished (`<key>#<n>`), older than
/// `grace`. They are never visible as media; this frees their space.
fn remove_stale_staging(dir: &std::path::Path, grace: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().contains('#') {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > grace);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// An upload's body, each chunk awaited at most `MEDIA_UPLOAD_IDLE_TIMEOUT_SECS`.
struct Body<'a, S> {
    stream: &'a mut S,
    idle: Duration,
    intake: &'a Intake,
}

impl<S: Stream<Item = AppResult<Bytes>> + Unpin> Body<'_, S> {
    async fn next(&mut self) -> AppResult<Option<Bytes>> {
        match tokio::time::timeout(self.idle, self.stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                let wait = self.intake.take(chunk.len());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(Some(chunk))
            }
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Ok(None),
            Err(_) => Err(AppError::Timeout(
                format!("the upload stalled for {} s", self.idle.as_secs()).into(),
            )),
        }
    }
}

/// What a streamed upload's bytes told so far: hash, size, first and last bytes.
struct Seen {
    hasher: digest::Context,
    size: u64,
    first: Vec<u8>,
    tail: Tail,
}

impl Seen {
    fn push(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        if self.first.len() < probe::HEAD_BYTES {
            let n = (probe::HEAD_BYTES - self.first.len()).min(chunk.len());
            self.first.extend_from_slice(&chunk[..n]);
        }
        self.tail.push(chunk);
    }
}

/// What was stored of an upload.
#[derive(Debug)]
struct Stored {
    size: u64,
    sha256: String,
    dimensions: Option<(u32, u32)>,
    duration_ms: Option<i64>,
    thumbnail: Option<(u64, &'static str)>,
}

/// The last `cap` bytes of a stream.
#[derive(Debug)]
struct Tail {
    buf: std::collections::VecDeque<u8>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Self {
            buf: std::collections::VecDeque::with_capacity(cap),
            cap,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(self.cap)..];
        let overflow = (self.buf.len() + chunk.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(chunk);
    }

    fn into_vec(self) -> Vec<u8> {
        self.buf.into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_only_in_this_servers_urls() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(id_in_url(&format!("/api/media/{id}"), ""), Some(id.into()));
        assert_eq!(
            id_in_url(
                &format!("https://chat.example.com/api/media/{id}/thumbnail?exp=1&sig=x"),
                "https://chat.example.com"
            ),
            Some(id.into())
        );
        assert_eq!(
            id_in_url(
                &format!("https://evil.example/api/media/{id}"),
                "https://chat.example.com"
            ),
            None
        );
        assert_eq!(
            id_in_url(&format!("//evil.example/api/media/{id}"), ""),
            None
        );
        assert_eq!(id_in_url("/api/media/../../etc/passwd", ""), None);
    }

    #[test]
    fn signatures_bind_id_variant_and_expiry() {
        let config = Config {
            jwt_secret: crate::config::Secret::new("a-test-secret-of-thirty-two-bytes!!"),
            ..Config::default()
        };
        let urls = Urls::new(&config);
        let id = "0123456789abcdef0123456789abcdef";
        let url = urls.signed(id, false, Some("http://h"));
        let query = url.split('?').nth(1).unwrap();
        let exp: u64 = query.split('&').next().unwrap()[4..].parse().unwrap();
        let sig = &query.split("&sig=").nth(1).unwrap();
        assert!(urls.verify(id, false, exp, sig).is_ok());
        assert!(urls.verify(id, true, exp, sig).is_err());
        assert!(urls.verify(id, false, exp + 1, sig).is_err());
        let past = 1_000;
        let old = urls.signature(id, false, past);
        assert!(matches!(
            urls.verify(id, false, past, &old),
            Err(AppError::LinkExpired(_))
        ));
    }

    #[test]
    fn the_intake_bucket_holds_one_second() {
        let intake = Intake::new(1000);
        assert_eq!(intake.take(600), Duration::ZERO);
        let wait = intake.take(900);
        assert!(
            wait > Duration::from_millis(450) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(Intake::new(0).take(1 << 30), Duration::ZERO);
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"abc");
        t.push(b"defg");
        t.push(b"h");
        assert_eq!(t.into_vec(), b"efgh");
    }

    #[test]
    fn file_names_lose_paths_and_control_characters() {
        assert_eq!(
            clean_filename("../../x/\"a\"\n.jpg").as_deref(),
            Some("a.jpg")
        );
        assert_eq!(clean_filename("..."), None);
    }
}
