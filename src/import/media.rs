//! `--media-dir`: imported messages whose `mediaUrl` names a file found under the old backend's
//! upload directory get that file as a Switchboard upload (type sniffed, metadata stripped,
//! thumbnail made, the sender's quota counted, as an upload from the app would be), so their
//! media no longer depends on the old server. A file that cannot be found or is refused leaves
//! the message with its URL, and is reported.

use super::Report;
use crate::config::Config;
use crate::db::schema::messages;
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::media::{Incoming, Media};
use crate::metrics::Metrics;
use bytes::Bytes;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

const COLLECTION: &str = "media";

/// An imported message with an old media URL: id, sender, URL, legacy id.
type Candidate = (i64, Option<i64>, Option<String>, Option<String>);

/// The file an old media URL names under `dir`: the URL's path, then ever shorter tails of it
/// (`/uploads/2025/01/a.jpg` → `uploads/2025/01/a.jpg`, `2025/01/a.jpg`, `01/a.jpg`, `a.jpg`).
/// Segments that climb (`..`) or are empty never match.
pub(crate) fn find_file(dir: &Path, url: &str) -> Option<PathBuf> {
    let path = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
    let path = path.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    if segments
        .iter()
        .any(|s| s == ".." || s == "." || s.contains('\\') || s.contains('\0'))
    {
        return None;
    }
    (0..segments.len()).find_map(|start| {
        let candidate: PathBuf = segments[start..].iter().collect();
        if candidate
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let full = dir.join(&candidate);
        full.is_file().then_some(full)
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Re-homes the media of imported messages found under `dir` (see the module documentation).
pub fn rehome(
    config: &Config,
    conn: &mut PgConnection,
    dir: &Path,
    report: &mut Report,
) -> AppResult<()> {
    let rows: Vec<Candidate> = messages::table
        .filter(messages::legacy_id.is_not_null())
        .filter(messages::media_url.is_not_null())
        .filter(messages::media_id.is_null())
        .order(messages::id)
        .select((
            messages::id,
            messages::sender_id,
            messages::media_url,
            messages::legacy_id,
        ))
        .load(conn)?;
    let imp = report;
    if rows.is_empty() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AppError::internal)?;
    let db = Db::with_url(config.database_url.expose(), 2, config.db_acquire_timeout);
    let media = Media::new(Arc::new(config.clone()), db, Arc::new(Metrics::new()))
        .map_err(AppError::internal)?;
    for (n, (id, sender, url, legacy)) in rows.into_iter().enumerate() {
        let line = n as u64 + 1;
        imp.counts(COLLECTION).read += 1;
        let url = url.unwrap_or_default();
        let (Some(owner), Some(path)) = (sender, find_file(dir, &url)) else {
            imp.skip(
                COLLECTION,
                line,
                legacy.as_deref(),
                format!("{url}: no such file under the media directory; the URL is kept"),
            );
            continue;
        };
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let stored = runtime.block_on(async {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(AppError::internal)?;
            let len = file.metadata().await.map(|m| m.len()).ok();
            let body = futures_util::stream::unfold(Some(file), |file| async move {
                let mut file = file?;
                let mut buf = vec![0u8; 64 * 1024];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), Some(file)))
                    }
                    Err(e) => Some((Err(AppError::internal(e)), None)),
                }
            });
            media
                .receive(
                    owner,
                    Incoming {
                        filename: name,
                        declared_len: len,
                    },
                    Box::pin(body),
                )
                .await
        });
        match stored {
            Ok(row) => {
                diesel::update(messages::table.find(id))
                    .set((
                        messages::media_id.eq(&row.id),
                        messages::media.eq(row.summary()),
                    ))
                    .execute(conn)?;
                imp.counts(COLLECTION).imported += 1;
            }
            Err(e) => imp.skip(
                COLLECTION,
                line,
                legacy.as_deref(),
                format!(
                    "{}: refused ({}); the URL is kept",
                    path.display(),
                    e.code()
                ),
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_find_files_by_their_path_or_its_tails_and_never_climb() {
        let dir = std::env::temp_dir().join(format!("sb-media-find-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("2025/01")).unwrap();
        std::fs::write(dir.join("2025/01/a b.jpg"), b"x").unwrap();
        std::fs::write(dir.join("c.png"), b"x").unwrap();
        assert_eq!(
            find_file(&dir, "https://old.example/uploads/2025/01/a%20b.jpg?x=1"),
            Some(dir.join("2025/01/a b.jpg"))
        );
        assert_eq!(find_file(&dir, "/files/c.png"), Some(dir.join("c.png")));
        assert_eq!(find_file(&dir, "c.png"), Some(dir.join("c.png")));
        assert_eq!(find_file(&dir, "https://old.example/../c.png"), None);
        assert_eq!(
            find_file(&dir, "https://old.example/uploads/missing.png"),
            None
        );
        assert_eq!(find_file(&dir, "https://old.example/"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
