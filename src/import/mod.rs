//! `switchboard import`: brings a legacy backend's MongoDB data (its `mongoexport` files) into
//! Switchboard, keeping the ids its app holds.
//!
//! Stages, each committed on its own (so an interrupted run keeps what it finished, and running
//! again resumes): users, device sessions, conversations, messages (with receipt cursors),
//! calls, chat requests, contacts. Every imported user, conversation and chat request gets a row
//! in `legacy_ids` (`source`, legacy id → id), every message its `messages.legacy_id`, calls and
//! device sessions keep their legacy id as their own. What is already mapped is not imported
//! again: a second run over the same files changes nothing, and a run over newer files (the
//! final import after the old backend is frozen) adds what is new and applies edits and
//! deletions of imported messages.
//!
//! Messages are staged with `COPY` into a temporary table, numbered per conversation by
//! creation time (then legacy id) after what the conversation already holds, and inserted in one
//! statement. `--dry-run` runs everything inside a transaction that is rolled back, so it
//! reports exactly what a real run would do.

pub mod ejson;
pub mod media;
mod seeds;

use crate::error::{AppError, AppResult};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use ejson::{Line, Reader};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::legacy::Kind;
pub use crate::legacy::Source;

/// What to import and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which legacy backend wrote the export.
    pub source: Source,
    /// The directory holding `<collection>.json` files.
    pub dir: PathBuf,
    /// Do everything, report it, and roll it back.
    pub dry_run: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// How one collection went.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Documents read.
    pub read: u64,
    /// Newly imported.
    pub imported: u64,
    /// Already imported and unchanged.
    pub unchanged: u64,
    /// Already imported; brought up to date (an edit or deletion since the last run).
    pub updated: u64,
    /// Imported after a repair (bad UTF-8, NUL, an unusable field dropped).
    pub repaired: u64,
    /// Not imported (see the problems).
    pub skipped: u64,
}

/// A document that could not be imported as it is, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// File (collection) name.
    pub collection: String,
    /// 1-based line in that file.
    pub line: u64,
    /// The document's `_id`, when it has one.
    pub id: Option<String>,
    /// Whether the document was skipped (false: imported with a repair).
    pub skipped: bool,
    /// What was wrong.
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The legacy backend.
    pub source: String,
    /// True when nothing was kept.
    pub dry_run: bool,
    /// Per collection, in import order.
    pub collections: BTreeMap<String, Counts>,
    /// Documents of the export per second over the whole run (documents read / wall time).
    pub docs_per_sec: f64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Every document skipped or repaired.
    pub problems: Vec<Problem>,
}

impl Report {
    pub(crate) fn counts(&mut self, collection: &str) -> &mut Counts {
        self.collections.entry(collection.to_owned()).or_default()
    }

    fn note(
        &mut self,
        collection: &str,
        line: u64,
        id: Option<&str>,
        skipped: bool,
        reason: String,
    ) {
        let counts = self.counts(collection);
        if skipped {
            counts.skipped += 1;
        } else {
            counts.repaired += 1;
        }
        self.problems.push(Problem {
            collection: collection.to_owned(),
            line,
            id: id.map(str::to_owned),
            skipped,
            reason,
        });
    }

    pub(crate) fn skip(
        &mut self,
        collection: &str,
        line: u64,
        id: Option<&str>,
        reason: impl Into<String>,
    ) {
        self.note(collection, line, id, true, reason.into());
    }

    pub(crate) fn repaired(
        &mut self,
        collection: &str,
        line: u64,
        id: Option<&str>,
        reason: impl Into<String>,
    ) {
        self.note(collection, line, id, false, reason.into());
    }

    /// Total documents read (receipt cursors and media files are not documents of the export).
    pub(crate) fn documents(&self) -> u64 {
        self.collections
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "receipts" | "media"))
            .map(|(_, c)| c.read)
            .sum()
    }
}

/// Why a dry run's transaction ends: always rolled back, after the import ran or failed.
enum DryRun {
    /// The import ran to the end; roll it back.
    Done,
    /// The import failed.
    Failed(AppError),
}

impl From<diesel::result::Error> for DryRun {
    fn from(e: diesel::result::Error) -> Self {
        Self::Failed(e.into())
    }
}

/// Runs an import on `conn` (migrated).
pub fn run(conn: &mut PgConnection, options: &Options) -> AppResult<Report> {
    let started = Instant::now();
    let mut importer = Importer::new(options);
    if options.dry_run {
        let outcome = conn.transaction::<(), DryRun, _>(|conn| {
            importer.all(conn).map_err(DryRun::Failed)?;
            Err(DryRun::Done)
        });
        match outcome {
            Err(DryRun::Done) | Ok(()) => {}
            Err(DryRun::Failed(e)) => return Err(e),
        }
    } else {
        importer.all(conn)?;
    }
    let mut report = importer.report;
    report.seconds = started.elapsed().as_secs_f64();
    report.docs_per_sec = report.documents() as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// A member's receipt cursors as legacy times: delivered and read up to.
type Cursors = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Maps of what is already imported, and the run's report.
pub(crate) struct Importer {
    source: Source,
    dir: PathBuf,
    progress: bool,
    /// Legacy user id → user.
    users: HashMap<String, i64>,
    /// Legacy conversation id → conversation.
    conversations: HashMap<String, i64>,
    /// Legacy chat request id → request.
    requests: HashMap<String, i64>,
    /// Receipt cursor times found along the way, per (conversation, member): delivered and
    /// read up to.
    receipts: HashMap<(i64, i64), Cursors>,
    report: Report,
}

impl Importer {
    fn new(options: &Options) -> Self {
        Self {
            source: options.source,
            dir: options.dir.clone(),
            progress: options.progress && std::io::stderr().is_terminal(),
            users: HashMap::new(),
            conversations: HashMap::new(),
            requests: HashMap::new(),
            receipts: HashMap::new(),
            report: Report {
                source: options.source.as_str().to_owned(),
                dry_run: options.dry_run,
                ..Report::default()
            },
        }
    }

    fn all(&mut self, conn: &mut PgConnection) -> AppResult<()> {
        self.load_maps(conn)?;
        for stage in seeds::stages(self.source) {
            let collection = stage.collection;
            let path = self.dir.join(format!("{collection}.json"));
            if !path.exists() {
                tracing::info!(collection, "no {collection}.json: nothing to import");
                continue;
            }
            self.report
                .collections
                .entry(collection.to_owned())
                .or_default();
            conn.transaction::<(), AppError, _>(|conn| (stage.run)(self, conn, &path))?;
            let c = &self.report.collections[collection];
            tracing::info!(
                collection,
                read = c.read,
                imported = c.imported,
                updated = c.updated,
                unchanged = c.unchanged,
                skipped = c.skipped,
                "stage done"
            );
        }
        if !self.receipts.is_empty() {
            conn.transaction::<(), AppError, _>(|conn| self.apply_receipts(conn))?;
        }
        Ok(())
    }

    fn load_maps(&mut self, conn: &mut PgConnection) -> AppResult<()> {
        use crate::db::schema::legacy_ids as l;
        let rows: Vec<(String, String, i64)> = l::table
            .filter(l::source.eq(self.source.as_str()))
            .select((l::legacy_id, l::kind, l::id))
            .load(conn)?;
        for (legacy, kind, id) in rows {
            if let Some(kind) = Kind::parse(&kind) {
                self.ids(kind).insert(legacy, id);
            }
        }
        Ok(())
    }

    /// Records a legacy id of `kind` for `id` (kept when it exists).
    fn map(&mut self, conn: &mut PgConnection, kind: Kind, legacy: &str, id: i64) -> AppResult<()> {
        use crate::db::schema::legacy_ids as l;
        diesel::insert_into(l::table)
            .values((
                l::source.eq(self.source.as_str()),
                l::legacy_id.eq(legacy),
                l::kind.eq(kind.as_str()),
                l::id.eq(id),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        self.ids(kind).insert(legacy.to_owned(), id);
        Ok(())
    }

    /// The map of legacy ids of `kind` already imported.
    fn ids(&mut self, kind: Kind) -> &mut HashMap<String, i64> {
        match kind {
            Kind::User => &mut self.users,
            Kind::Conversation => &mut self.conversations,
            Kind::ChatRequest => &mut self.requests,
        }
    }

    /// Reads every document of `path`, calling `each(self, line, doc)`; bad lines and
    /// duplicate `_id`s are reported and skipped, repairs noted.
    fn each_doc(
        &mut self,
        conn: &mut PgConnection,
        path: &Path,
        collection: &str,
        mut each: impl FnMut(&mut Self, &mut PgConnection, Doc) -> AppResult<()>,
    ) -> AppResult<()> {
        let file = std::fs::File::open(path)
            .map_err(|e| AppError::internal(format!("{}: {e}", path.display())))?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = Reader::new(BufReader::with_capacity(1 << 20, file));
        let bar = self.progress.then(|| progress_bar(collection, total));
        let mut seen: HashSet<Box<str>> = HashSet::new();
        loop {
            let line = reader
                .next_line()
                .map_err(|e| AppError::internal(format!("{}: {e}", path.display())))?;
            let Some(line) = line else { break };
            let n = reader.line;
            if let Some(bar) = &bar {
                if n % 2048 == 0 {
                    bar.set_position(reader.bytes);
                }
            }
            self.report.counts(collection).read += 1;
            let (doc, repair) = match line {
                Line::Doc(doc, repair) => (doc, repair),
                Line::Bad(why) => {
                    self.report.skip(collection, n, None, why);
                    continue;
                }
            };
            let Some(id) = doc.get("_id").and_then(ejson::id_ref) else {
                self.report.skip(collection, n, None, "document has no _id");
                continue;
            };
            if !seen.insert(id.clone().into_boxed_str()) {
                self.report.skip(
                    collection,
                    n,
                    Some(&id),
                    "duplicate document (same _id again)",
                );
                continue;
            }
            if let Some(repair) = repair {
                self.report.repaired(collection, n, Some(&id), repair);
            }
            each(
                self,
                conn,
                Doc {
                    line: n,
                    id,
                    fields: doc,
                },
            )?;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(())
    }
}

/// One document being imported.
pub(crate) struct Doc {
    /// Line number.
    pub line: u64,
    /// `_id`.
    pub id: String,
    /// Its fields, plain JSON.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

fn progress_bar(collection: &str, total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>20} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(collection.to_owned());
    bar
}

/// One stage: the collection it reads and what it does with it.
#[derive(Clone, Copy)]
pub(crate) struct Stage {
    /// File name without `.json`.
    pub collection: &'static str,
    /// The work, inside the stage's transaction.
    pub run: fn(&mut Importer, &mut PgConnection, &Path) -> AppResult<()>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.collection)
    }
}
