//! Media: `POST /api/media` (also `/media`) uploads a file, as the `file` part of a
//! `multipart/form-data` body (Flutter's `http.MultipartRequest`, a browser's `FormData`) or as a
//! raw body; `GET /api/media/:id` and `GET /api/media/:id/thumbnail` serve it, to a reader with
//! an `Authorization` header or to anyone holding a signed, expiring URL (`?exp&sig`, what an
//! `<img>` or `Image.network` can use). Ranges, `ETag`/`If-None-Match`, `nosniff` and
//! `Content-Disposition` are answered; behind nginx a local store's bytes go out through
//! `X-Accel-Redirect`.

use super::openapi::{string_enum, FileErrors, IdPath, UploadErrors};
use crate::auth::Identity;
use crate::db::media::{self as rows, MediaRow};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::media::{self, Incoming};
use crate::state::AppState;
use actix_web::http::header;
use actix_web::{get, head, post, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Registers the routes (mounted at the root and under `/api`).
pub(crate) fn routes(cfg: &mut super::Routes) {
    cfg.service(upload)
        .service(download)
        .service(download_head)
        .service(thumbnail)
        .service(thumbnail_head);
}

/// The bytes of a file, in the OpenAPI document.
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(crate) struct FileBytes(pub Vec<u8>);

/// An upload as a form, in the OpenAPI document (a raw body is the file itself).
#[allow(
    dead_code,
    reason = "a shape the OpenAPI document describes; the handler reads or builds the JSON itself"
)]
#[derive(Debug, ToSchema)]
pub(crate) struct UploadForm {
    /// The file.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// `kind` of an upload.
fn kind_schema() -> utoipa::openapi::Object {
    string_enum(["image", "audio", "video", "document"])
}

/// The body of a HEAD answer: the length the GET would send, and no bytes (actix-web sends
/// no body for HEAD and takes `Content-Length` from the body's size).
struct HeadBody(u64);

impl actix_web::body::MessageBody for HeadBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(self.0)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<bytes::Bytes, Self::Error>>> {
        std::task::Poll::Ready(None)
    }
}

/// What an upload answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Media)]
pub(crate) struct MediaView {
    /// Id (reference it in a message as `mediaId`).
    pub id: String,
    /// Signed URL of the file.
    pub url: String,
    /// Sniffed content type.
    pub content_type: String,
    /// `image|audio|video|document`.
    #[schema(schema_with = kind_schema)]
    pub kind: String,
    /// Bytes stored.
    pub size: i64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
    /// The file name given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// Image width.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = Int64)]
    pub width: Option<i32>,
    /// Image height.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = Int64)]
    pub height: Option<i32>,
    /// Playing time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub duration_ms: Option<i64>,
    /// Signed URL of the thumbnail.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub thumbnail_url: Option<String>,
}

/// The scheme and host a request came in on (behind a trusted proxy, what it forwarded).
fn request_base(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

fn view(state: &AppState, req: &HttpRequest, row: &MediaRow) -> MediaView {
    let base = if state.config.public_url.is_empty() {
        request_base(req)
    } else {
        state.config.public_url.clone()
    };
    let urls = &state.media.urls;
    MediaView {
        url: urls.signed(&row.id, false, Some(&base)),
        thumbnail_url: row
            .thumbnail_size
            .map(|_| urls.signed(&row.id, true, Some(&base))),
        id: row.id.clone(),
        content_type: row.content_type.clone(),
        kind: row.kind.clone(),
        size: row.size,
        sha256: row.sha256.clone(),
        name: row.filename.clone(),
        width: row.width,
        height: row.height,
        duration_ms: row.duration_ms,
    }
}

/// Largest form field other than `file` that is read (and ignored).
const MAX_OTHER_FIELD: usize = 64 * 1024;

/// Upload a file (type read from its bytes; images stripped of metadata)
#[utoipa::path(
    tag = "media",
    security(("bearer" = [])),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (FileBytes = "application/octet-stream"),
    )),
    responses((status = 201, description = "Success", body = MediaView), UploadErrors),
)]
#[post("/media")]
pub(crate) async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    identity: Identity,
    state: web::Data<AppState>,
) -> AppResult<HttpResponse> {
    let user = identity.user_id();
    let declared_len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut incoming = Incoming {
        filename: None,
        declared_len,
    };
    let _slot = state.media.admit(user, &incoming).await?;
    let row = if content_type.starts_with("multipart/form-data") {
        let mut form = actix_multipart::Multipart::new(req.headers(), payload);
        loop {
            let mut field = match form.next().await {
                None => {
                    return Err(AppError::bad_request(
                        ErrorCode::MissingFile,
                        "the multipart body has no `file` part",
                    ))
                }
                Some(Err(e)) => {
                    return Err(AppError::bad_request(
                        ErrorCode::InvalidMultipart,
                        format!("the multipart body could not be read: {e}"),
                    ))
                }
                Some(Ok(field)) => field,
            };
            if field.name() == Some("file") {
                incoming.filename = field
                    .content_disposition()
                    .and_then(|cd| cd.get_filename())
                    .map(str::to_owned);
                let body = field
                    .map(|chunk| {
                        chunk.map_err(|e| {
                            AppError::bad_request(
                                ErrorCode::InvalidMultipart,
                                format!("the file part could not be read: {e}"),
                            )
                        })
                    })
                    .boxed_local();
                break state.media.receive(user, incoming, body).await?;
            }
            let mut read = 0usize;
            while let Some(chunk) = field.next().await {
                let chunk = chunk.map_err(|e| {
                    AppError::bad_request(ErrorCode::InvalidMultipart, format!("a form field: {e}"))
                })?;
                read += chunk.len();
                if read > MAX_OTHER_FIELD {
                    return Err(AppError::TooLarge(
                        "form fields other than `file` are limited to 64 KiB".into(),
                    ));
                }
            }
        }
    } else {
        incoming.filename = raw_filename(&req);
        let body = payload
            .map(|chunk| {
                chunk.map_err(|e| {
                    AppError::bad_request(
                        ErrorCode::InvalidBody,
                        format!("the body could not be read: {e}"),
                    )
                })
            })
            .boxed_local();
        state.media.receive(user, incoming, body).await?
    };
    tracing::info!(
        media = %row.id,
        owner = user,
        content_type = %row.content_type,
        size = row.size,
        "media stored"
    );
    Ok(HttpResponse::Created().json(view(&state, &req, &row)))
}

/// A raw upload's file name: `Content-Disposition: ...; filename="..."`, else `X-Filename`.
fn raw_filename(req: &HttpRequest) -> Option<String> {
    if let Some(cd) = req
        .headers()
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| header::ContentDisposition::from_raw(v).ok())
    {
        if let Some(name) = cd.get_filename() {
            return Some(name.to_owned());
        }
        if let Some(header::ExtendedValue { value, .. }) = cd.get_filename_ext() {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    req.headers()
        .get("x-filename")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `?exp&sig` of a signed URL.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Signed {
    /// Signed URL: expiry (Unix seconds); with `sig`, no Authorization is needed.
    #[param(required = false, nullable = false, value_type = i64)]
    exp: Option<u64>,
    /// Signed URL: signature.
    #[param(nullable = false)]
    sig: Option<String>,
}

/// A download route: the file or its thumbnail (`thumb`), its bytes (GET) or only its headers
/// (HEAD). The four routes answer and are documented alike.
macro_rules! file_route {
    ($(#[$doc:meta])* $name:ident, $method:ident, $path:literal, $thumb:literal) => {
        $(#[$doc])*
        #[utoipa::path(
            tag = "media",
            security(("bearer" = []), ()),
            params(IdPath, Signed),
            responses(
                (status = 200, description = "The file", body = FileBytes, content_type = "*/*"),
                (status = 206, description = "The requested range of the file", body = FileBytes, content_type = "*/*"),
                (status = 304, description = "Not modified (If-None-Match)"),
                FileErrors,
            ),
        )]
        #[$method($path)]
        pub(crate) async fn $name(
            req: HttpRequest,
            id: web::Path<String>,
            signed: web::Query<Signed>,
            state: web::Data<AppState>,
        ) -> AppResult<HttpResponse> {
            serve(&req, &state, id.into_inner(), $thumb, signed.into_inner()).await
        }
    };
}

file_route!(
    /// A file (uploader, conversation members, or a signed URL)
    download, get, "/media/{id}", false
);
file_route!(
    /// A file's headers (length, type, ETag)
    download_head, head, "/media/{id}", false
);
file_route!(
    /// An image's thumbnail
    thumbnail, get, "/media/{id}/thumbnail", true
);
file_route!(
    /// A thumbnail's headers
    thumbnail_head, head, "/media/{id}/thumbnail", true
);

fn not_found() -> AppError {
    AppError::NotFound("media not found".into())
}

/// Seconds a response may be cached when it was fetched with an `Authorization` header (the
/// bytes behind an id never change).
const AUTHORIZED_MAX_AGE: u64 = 365 * 24 * 3600;

async fn serve(
    req: &HttpRequest,
    state: &AppState,
    id: String,
    thumb: bool,
    signed: Signed,
) -> AppResult<HttpResponse> {
    if !media::valid_id(&id) {
        return Err(not_found());
    }
    let (row, max_age) = match (signed.exp, signed.sig) {
        (Some(exp), Some(sig)) => {
            let left = state.media.urls.verify(&id, thumb, exp, &sig)?;
            let row = state
                .db
                .run(move |conn| rows::by_id(conn, &id))
                .await?
                .ok_or_else(not_found)?;
            (row, left)
        }
        _ => {
            let token = super::bearer_token(req).ok_or_else(|| {
                AppError::unauthorized(
                    ErrorCode::MissingToken,
                    "an Authorization: Bearer token or a signed URL is required",
                )
            })?;
            let identity = state.auth.authenticate(token).await?;
            let user = identity.user_id();
            let admin = identity.is_admin();
            let row = state
                .db
                .run(move |conn| rows::readable(conn, &id, user, admin))
                .await?
                .ok_or_else(not_found)?;
            (row, AUTHORIZED_MAX_AGE)
        }
    };
    let (size, content_type, etag) = if thumb {
        match (row.thumbnail_size, &row.thumbnail_type) {
            (Some(size), Some(t)) => (size as u64, t.clone(), format!("\"{}-t\"", row.sha256)),
            _ => return Err(not_found()),
        }
    } else {
        (
            row.size as u64,
            row.content_type.clone(),
            format!("\"{}\"", row.sha256),
        )
    };
    let mut builder = HttpResponse::Ok();
    builder
        .insert_header((header::ETAG, etag.clone()))
        .insert_header((
            header::CACHE_CONTROL,
            format!("private, max-age={max_age}, immutable"),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        ))
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    if let Some(inm) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if inm.trim() == "*"
            || inm
                .split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag)
        {
            builder.status(actix_web::http::StatusCode::NOT_MODIFIED);
            return Ok(builder.finish());
        }
    }
    builder
        .insert_header((header::CONTENT_TYPE, content_type.clone()))
        .insert_header((header::CONTENT_DISPOSITION, disposition(&row, thumb)));
    // If-Range with another validator: the whole file.
    let if_range_ok = req
        .headers()
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok)
    {
        Some(spec) => match parse_range(spec, size) {
            RangeAsk::Whole => None,
            RangeAsk::Part(a, b) => Some((a, b)),
            RangeAsk::Unsatisfiable => {
                return Ok(HttpResponse::RangeNotSatisfiable()
                    .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                    .insert_header((header::ACCEPT_RANGES, "bytes"))
                    .json(
                        AppError::bad_request(
                            ErrorCode::RangeNotSatisfiable,
                            format!("the file has {size} bytes"),
                        )
                        .body(),
                    ));
            }
        },
        None => None,
    };
    let key = media::store_key(&row.id, thumb);
    if !state.config.media_accel_redirect.is_empty() && state.media.local_dir.is_some() {
        // nginx sends the file (and answers the range itself) from its internal location.
        builder.insert_header((
            "X-Accel-Redirect",
            format!("{}{}", state.config.media_accel_redirect, key.as_ref()),
        ));
        return Ok(builder.finish());
    }
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { end - start + 1 };
    if range.is_some() {
        builder
            .status(actix_web::http::StatusCode::PARTIAL_CONTENT)
            .insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
    }
    if len == 0 {
        return Ok(builder.finish());
    }
    if req.method() == actix_web::http::Method::HEAD {
        return Ok(builder.body(HeadBody(len)));
    }
    let options = GetOptions {
        range: Some(GetRange::Bounded(start..end + 1)),
        ..GetOptions::default()
    };
    let got = state
        .media
        .store
        .get_opts(&key, options)
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => not_found(),
            other => AppError::unavailable(format!("media store: {other}")),
        })?;
    let stream = got.into_stream().map(|chunk| {
        chunk.map_err(|e| actix_web::error::ErrorServiceUnavailable(format!("media store: {e}")))
    });
    Ok(builder.no_chunking(len).streaming(stream))
}

/// `inline` for pictures, sound and video, `attachment` for documents; the name as given.
fn disposition(row: &MediaRow, thumb: bool) -> String {
    let inline = thumb || row.kind != "document";
    let kind = if inline { "inline" } else { "attachment" };
    let Some(name) = row.filename.as_deref() else {
        return kind.to_owned();
    };
    let name = if thumb {
        format!("thumbnail-{name}")
    } else {
        name.to_owned()
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .filter(|c| *c != '\\')
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// No usable range (several ranges, another unit, malformed): the whole file.
    Whole,
    /// Bytes `a..=b`.
    Part(u64, u64),
    /// Nothing of the file (416).
    Unsatisfiable,
}

fn parse_range(spec: &str, size: u64) -> RangeAsk {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if set.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // The last `b` bytes.
        return match b.parse::<u64>() {
            Ok(0) => RangeAsk::Unsatisfiable,
            Ok(_) if size == 0 => RangeAsk::Unsatisfiable,
            Ok(n) => RangeAsk::Part(size.saturating_sub(n), size - 1),
            Err(_) => RangeAsk::Whole,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeAsk::Whole;
    };
    let end = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(size.saturating_sub(1)),
            _ => return RangeAsk::Whole,
        }
    };
    if start >= size {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Part(start, end)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), RangeAsk::Part(0, 99));
        assert_eq!(parse_range("bytes=900-", 1000), RangeAsk::Part(900, 999));
        assert_eq!(parse_range("bytes=-100", 1000), RangeAsk::Part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), RangeAsk::Part(0, 999));
        assert_eq!(
            parse_range("bytes=990-5000", 1000),
            RangeAsk::Part(990, 999)
        );
        assert_eq!(parse_range("bytes=1000-", 1000), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), RangeAsk::Whole);
        assert_eq!(parse_range("items=0-1", 1000), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=5-1", 1000), RangeAsk::Whole);
    }
}
