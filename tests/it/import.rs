//! `switchboard import` against real PostgreSQL with the fixtures in `tests/fixtures/import/`
//! (small `mongoexport` dumps of the three legacy backends, awkward cases included; their README
//! lists every case and the outcome asserted here): what each seed imports and reports, a
//! second run changing nothing, a dry run keeping nothing, message order and receipt cursors, an
//! incremental run applying edits and deletions, and an interrupted run resumed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use crate::common::TestDb;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use switchboard::import::{self, Options, Report, Source};

fn fixtures(seed: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(seed)
}

fn import(db: &TestDb, source: Source, dir: &Path, dry_run: bool) -> Report {
    let mut conn = db.conn();
    import::run(
        &mut conn,
        &Options {
            source,
            dir: dir.to_owned(),
            dry_run,
            progress: false,
        },
    )
    .unwrap_or_else(|e| panic!("import {}: {e:?}", dir.display()))
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(db: &TestDb, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(&mut db.conn())
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

#[derive(QueryableByName, Debug)]
struct Digest {
    #[diesel(sql_type = Nullable<Text>)]
    digest: Option<String>,
}

/// Everything an import writes, with internal ids replaced by legacy ones, as one digest:
/// equal digests mean equal imported states, whatever ids the database handed out.
fn digest(db: &TestDb) -> String {
    let sql = "WITH lid AS (SELECT kind, id, min(legacy_id) AS l FROM legacy_ids GROUP BY kind, id)
      SELECT md5(string_agg(x, E'\\n' ORDER BY x)) AS digest FROM (
        SELECT format('m %s %s %s %s %s %s %s %s %s %s', c.l, m.seq, m.change_seq, u.l, m.kind,
               m.content, m.created_at, m.edited_at, m.deleted_at, m.legacy_id) AS x
          FROM messages m JOIN lid c ON c.kind = 'conversation' AND c.id = m.conversation_id
          LEFT JOIN lid u ON u.kind = 'user' AND u.id = m.sender_id
        UNION ALL SELECT format('c %s %s %s %s %s', l.l, c.kind, c.title, c.last_seq, c.last_change)
          FROM conversations c JOIN lid l ON l.kind = 'conversation' AND l.id = c.id
        UNION ALL SELECT format('cm %s %s %s %s %s', c.l, u.l, cm.delivered_up_to, cm.read_up_to,
               cm.role)
          FROM conversation_members cm JOIN lid c ON c.kind = 'conversation'
               AND c.id = cm.conversation_id JOIN lid u ON u.kind = 'user' AND u.id = cm.user_id
        UNION ALL SELECT format('u %s %s %s %s %s %s', l.l, u.name, u.phone, u.email, u.roles,
               u.password_hash)
          FROM users u JOIN lid l ON l.kind = 'user' AND l.id = u.id
        UNION ALL SELECT format('l %s %s %s', source, legacy_id, kind) FROM legacy_ids
        UNION ALL SELECT format('k %s %s %s', id, status, duration_secs) FROM calls
        UNION ALL SELECT format('r %s %s', status, message) FROM chat_requests
        UNION ALL SELECT format('p %s %s', phone, name) FROM contacts
        UNION ALL SELECT format('s %s %s', id, revoked_at IS NULL) FROM device_sessions
      ) t";
    diesel::sql_query(sql)
        .get_result::<Digest>(&mut db.conn())
        .unwrap()
        .digest
        .unwrap_or_default()
}

fn imported(report: &Report, collection: &str) -> u64 {
    report.collections.get(collection).map_or(0, |c| c.imported)
}

fn skipped_ids(report: &Report) -> BTreeSet<String> {
    report
        .problems
        .iter()
        .filter(|p| p.skipped)
        .map(|p| p.id.clone().unwrap_or_else(|| format!("line {}", p.line)))
        .collect()
}

fn repaired_ids(report: &Report) -> BTreeSet<String> {
    report
        .problems
        .iter()
        .filter(|p| !p.skipped)
        .filter_map(|p| p.id.clone())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn text_of(db: &TestDb, legacy: &str) -> String {
    #[derive(QueryableByName)]
    struct T {
        #[diesel(sql_type = Text)]
        content: String,
    }
    diesel::sql_query("SELECT content FROM messages WHERE legacy_id = $1")
        .bind::<Text, _>(legacy)
        .get_result::<T>(&mut db.conn())
        .unwrap()
        .content
}

/// Messages per conversation, by the conversation's legacy id.
fn per_conversation(db: &TestDb, legacy: &str) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS n FROM messages m JOIN legacy_ids l ON l.kind = 'conversation' \
         AND l.id = m.conversation_id WHERE l.legacy_id = $1",
    )
    .bind::<Text, _>(legacy)
    .get_result::<Count>(&mut db.conn())
    .unwrap()
    .n
}

/// Imports every seed twice: the first run imports what the fixtures' README says and reports
/// the rest by id; the second changes nothing.
#[test]
fn each_seed_imports_what_it_can_reports_the_rest_and_a_second_run_changes_nothing() {
    // seed000: users, messages with dm_ (both orders) and team chat ids.
    let db = TestDb::migrated();
    let r = import(&db, Source::Seed000, &fixtures("seed000"), false);
    assert_eq!(imported(&r, "users"), 6);
    assert_eq!(imported(&r, "messages"), 28);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM conversations"), 5);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM conversations WHERE kind = 'team'"
        ),
        2
    );
    assert_eq!(
        skipped_ids(&r),
        set(&[
            "693872335f3a9c1e02003a33",
            "693872d85f3a9c1e02003a34",
            "6936c4f45f3a9c1e02003a1d",
            "line 32"
        ])
    );
    assert_eq!(
        repaired_ids(&r),
        set(&["693802875f3a9c1e02003a22", "693939815f3a9c1e02003a26"])
    );
    assert_eq!(
        text_of(&db, "693802875f3a9c1e02003a22"),
        "Отлично! Клиент пишет: «Cr\u{FFFD}(me brûlée, спасибо за помощь»"
    );
    assert_eq!(
        text_of(&db, "693939815f3a9c1e02003a26"),
        "План на декабрь во вложении, посмотрите до пятницы"
    );
    for (conv, n) in [("sales", 7), ("support", 6)] {
        assert_eq!(per_conversation(&db, conv), n, "team {conv}");
    }
    // dm_a_b and dm_b_a are one conversation.
    let pair = "dm_6908720c5f3a9c1e02003a11_690878725f3a9c1e02003a12";
    let reversed = "dm_690878725f3a9c1e02003a12_6908720c5f3a9c1e02003a11";
    assert_eq!(per_conversation(&db, pair), 6);
    assert_eq!(per_conversation(&db, reversed), 6);
    // Call records stay messages of the seed's own kinds.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM messages WHERE kind IN ('voice_call', 'video_call') \
             AND metadata ? 'duration'"
        ),
        2
    );
    let before = digest(&db);
    let again = import(&db, Source::Seed000, &fixtures("seed000"), false);
    assert_eq!(imported(&again, "users") + imported(&again, "messages"), 0);
    assert_eq!(digest(&db), before, "a second run changes nothing");

    // seed002: three account collections, DirectConversation, DirectMessage, Call.
    let db = TestDb::migrated();
    let r = import(&db, Source::Seed002, &fixtures("seed002"), false);
    assert_eq!(
        imported(&r, "users") + imported(&r, "astrologers") + imported(&r, "admins"),
        8
    );
    assert_eq!(imported(&r, "directconversations"), 4);
    assert_eq!(imported(&r, "directmessages"), 27);
    assert_eq!(imported(&r, "calls"), 4);
    assert_eq!(
        skipped_ids(&r),
        set(&[
            "68e7e0b06a1f07c3d9003a40",
            "68e906696a1f07c3d9003a46",
            "68e51d956a1f07c3d9003a2c",
            "line 30"
        ])
    );
    assert_eq!(
        repaired_ids(&r),
        set(&["68e5211a6a1f07c3d9003a31", "68e612f86a1f07c3d9003a33"])
    );
    for (conv, n) in [
        ("68e3851c6a1f07c3d9003a1b", 7),
        ("68e38c476a1f07c3d9003a1e", 5),
        ("68e51d796a1f07c3d9003a21", 9),
        ("68e6b8396a1f07c3d9003a24", 6),
    ] {
        assert_eq!(per_conversation(&db, conv), n, "conversation {conv}");
    }
    // Admin ↔ astrologer chats are support conversations shared by the admins.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM conversations WHERE kind = 'support'"
        ),
        2
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM users WHERE roles @> ARRAY['astrologer']::text[]"
        ),
        3
    );
    // Calls keep their ids; the reply keeps its target; the sender and recipient kinds stay.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM calls WHERE id = '68e523f46a1f07c3d9003a43' \
             AND call_type = 'video' AND provider = 'agora' AND duration_secs = 1145"
        ),
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM messages m JOIN messages r ON r.id = m.reply_to_id \
             WHERE m.legacy_id = '68e51ff56a1f07c3d9003a2f' \
             AND r.legacy_id = '68e51d956a1f07c3d9003a2c'"
        ),
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM messages WHERE legacy_id = '68e613406a1f07c3d9003a34' \
             AND deleted_at IS NOT NULL"
        ),
        1
    );
    let before = digest(&db);
    import(&db, Source::Seed002, &fixtures("seed002"), false);
    assert_eq!(digest(&db), before, "a second run changes nothing");

    // seed003: both naming styles, receipt cursors, requests, contacts, sessions.
    let db = TestDb::migrated();
    let r = import(&db, Source::Seed003, &fixtures("seed003"), false);
    assert_eq!(imported(&r, "users"), 7);
    assert_eq!(imported(&r, "conversations"), 5);
    assert_eq!(imported(&r, "messages"), 42);
    assert_eq!(imported(&r, "chatrequests"), 5);
    assert_eq!(imported(&r, "contacts"), 6);
    assert_eq!(imported(&r, "sessions"), 5);
    assert_eq!(
        skipped_ids(&r),
        set(&[
            "69602b387c2e5b8a41003a48",
            "695d50777c2e5b8a41003a2d",
            "line 45"
        ])
    );
    assert_eq!(
        text_of(&db, "695e31617c2e5b8a41003a34"),
        "Возьму термос и Cr\u{FFFD}(me brûlée на всех"
    );
    assert_eq!(
        text_of(&db, "695f79447c2e5b8a41003a3a"),
        "Build #42 passed all checks"
    );
    for (conv, n) in [
        ("695b7d907c2e5b8a41003a18", 9),
        ("695b9e7f7c2e5b8a41003a19", 8),
        ("695d4e477c2e5b8a41003a1a", 5),
        ("695e2ea57c2e5b8a41003a1b", 11),
        ("695e7f887c2e5b8a41003a1c", 9),
    ] {
        assert_eq!(per_conversation(&db, conv), n, "conversation {conv}");
    }
    // The account with neither phone nor e-mail is there, marked as imported.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM users u JOIN legacy_ids l ON l.id = u.id \
             AND l.kind = 'user' WHERE l.legacy_id = '694c02527c2e5b8a41003a16' \
             AND u.phone IS NULL AND u.email IS NULL AND u.legacy_source = 'seed003'"
        ),
        1
    );
    let before = digest(&db);
    let again = import(&db, Source::Seed003, &fixtures("seed003"), false);
    assert!(again
        .collections
        .values()
        .all(|c| c.imported == 0 && c.updated == 0));
    assert_eq!(digest(&db), before, "a second run changes nothing");
}

/// Seq follows creation time, ties broken by the legacy id; seqs and change numbers are gap-free;
/// receipt cursors come from the legacy time maps as seqs.
#[test]
fn history_keeps_its_order_and_receipts_become_cursors() {
    let db = TestDb::migrated();
    import(&db, Source::Seed003, &fixtures("seed003"), false);
    // Per conversation: seq 1..n in created_at order, legacy id breaking ties.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM (SELECT seq, row_number() OVER (PARTITION BY \
             conversation_id ORDER BY created_at, legacy_id) AS rn, \
             change_seq FROM messages) t WHERE seq <> rn OR change_seq <> rn"
        ),
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM conversations c WHERE last_seq <> \
             (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)"
        ),
        0
    );
    // The two messages sharing a createdAt: the lower _id first.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM messages a JOIN messages b \
             ON a.conversation_id = b.conversation_id AND a.created_at = b.created_at \
             AND a.legacy_id < b.legacy_id WHERE a.seq + 1 = b.seq"
        ),
        1
    );
    // Cursors: each is the last message created at or before the legacy time.
    assert!(
        count(
            &db,
            "SELECT count(*) AS n FROM conversation_members WHERE read_up_to > 0"
        ) > 0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM conversation_members WHERE read_up_to > delivered_up_to"
        ),
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM conversation_members cm WHERE read_up_to > 0 AND \
             read_at < (SELECT created_at FROM messages m WHERE m.conversation_id = \
             cm.conversation_id AND m.seq = cm.read_up_to)"
        ),
        0
    );
}

#[test]
fn a_dry_run_reports_the_same_and_keeps_nothing() {
    let db = TestDb::migrated();
    let dry = import(&db, Source::Seed003, &fixtures("seed003"), true);
    assert!(dry.dry_run);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM users"), 0);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM messages"), 0);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM legacy_ids"), 0);
    let real = import(&db, Source::Seed003, &fixtures("seed003"), false);
    for (name, c) in &real.collections {
        let d = &dry.collections[name];
        assert_eq!(
            (d.read, d.imported, d.skipped),
            (c.read, c.imported, c.skipped),
            "{name}"
        );
    }
    assert_eq!(skipped_ids(&dry), skipped_ids(&real));
}

/// The final import after the old backend is frozen: new messages are appended after the
/// history, edits and deletions of imported ones applied with fresh change numbers.
#[test]
fn a_later_run_adds_new_messages_and_applies_edits_and_deletions() {
    let db = TestDb::migrated();
    import(&db, Source::Seed003, &fixtures("seed003"), false);
    let conv = "695b7d907c2e5b8a41003a18";
    let last_change = count(
        &db,
        &format!(
            "SELECT last_change AS n FROM conversations c JOIN legacy_ids l ON l.id = c.id \
             AND l.kind = 'conversation' WHERE l.legacy_id = '{conv}'"
        ),
    );
    let dir = tempdir("later");
    for f in std::fs::read_dir(fixtures("seed003")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    let messages = std::fs::read(dir.join("messages.json")).unwrap();
    let lines: Vec<&[u8]> = messages.split(|b| *b == b'\n').collect();
    // Two messages of the conversation: one edited, one deleted; one message added.
    let mut mine = lines.iter().filter(|l| {
        std::str::from_utf8(l).is_ok_and(|s| s.contains(conv) && s.contains("\"text\""))
    });
    let first = std::str::from_utf8(mine.next().unwrap()).unwrap();
    let second = std::str::from_utf8(mine.next().unwrap()).unwrap();
    let mut edited: serde_json::Value = serde_json::from_str(first).unwrap();
    edited["text"] = "edited after the first import".into();
    edited["edited"] = true.into();
    edited["editedAt"] = serde_json::json!({"$date": "2026-02-01T00:00:00Z"});
    let mut deleted: serde_json::Value = serde_json::from_str(second).unwrap();
    deleted["isDeleted"] = true.into();
    deleted["deletedAt"] = serde_json::json!({"$date": "2026-02-01T00:00:01Z"});
    let mut added = edited.clone();
    added["_id"] = serde_json::json!({"$oid": "6a0000000000000000000001"});
    added["text"] = "written just before the freeze".into();
    added["createdAt"] = serde_json::json!({"$date": "2026-02-02T00:00:00Z"});
    added.as_object_mut().unwrap().remove("edited");
    added.as_object_mut().unwrap().remove("editedAt");
    let mut out = Vec::new();
    for l in &lines {
        let s = std::str::from_utf8(l);
        if s == Ok(first) {
            out.extend_from_slice(edited.to_string().as_bytes());
        } else if s == Ok(second) {
            out.extend_from_slice(deleted.to_string().as_bytes());
        } else {
            out.extend_from_slice(l);
        }
        out.push(b'\n');
    }
    out.extend_from_slice(added.to_string().as_bytes());
    out.push(b'\n');
    std::fs::write(dir.join("messages.json"), out).unwrap();

    let r = import(&db, Source::Seed003, &dir, false);
    let m = &r.collections["messages"];
    assert_eq!((m.imported, m.updated), (1, 2), "{m:?}");
    let edited_id = edited["_id"]["$oid"].as_str().unwrap().to_owned();
    assert_eq!(text_of(&db, &edited_id), "edited after the first import");
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) AS n FROM messages m JOIN legacy_ids l ON l.id = \
                 m.conversation_id AND l.kind = 'conversation' WHERE l.legacy_id = '{conv}' \
                 AND m.legacy_id = '6a0000000000000000000001' AND m.seq = 10 \
                 AND m.change_seq > {last_change}"
            )
        ),
        1,
        "the new message follows the history"
    );
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) AS n FROM messages WHERE change_seq > {last_change} AND \
                 (edited_at IS NOT NULL OR deleted_at IS NOT NULL) AND conversation_id = \
                 (SELECT id FROM legacy_ids WHERE legacy_id = '{conv}')"
            )
        ),
        2,
        "edits and deletions take new change numbers (sync hands them out)"
    );
    let state = digest(&db);
    import(&db, Source::Seed003, &dir, false);
    assert_eq!(digest(&db), state);
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-import-{name}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A generated export (scripts/import-data.py) imported by the real command, killed with
/// SIGKILL while it writes messages, then run again: the result equals an uninterrupted
/// import's.
#[test]
fn an_import_killed_midway_resumes_to_the_same_result() {
    let dir = tempdir("killed");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/import-data.py");
    let status = Command::new("python3")
        .arg(&script)
        .args(["--out", dir.to_str().unwrap()])
        .args([
            "--users",
            "300",
            "--conversations",
            "800",
            "--messages",
            "20000",
        ])
        .args(["--seed", "7"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let run = |db: &TestDb| {
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args([
                "import",
                "--from",
                "seed003",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .env("DATABASE_URL", &db.url)
            .env("JWT_SECRET", "import-test-secret-0123456789abcdef")
            .env("LOG_FORMAT", "text")
            .env_remove("SWITCHBOARD_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let whole = TestDb::migrated();
    let out = run(&whole).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed = TestDb::migrated();
    let mut child = run(&killed);
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        let line = line.unwrap();
        // The conversations are committed; the messages are being staged.
        if line.contains("stage done") && line.contains("conversations") {
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before it finished");
    assert_eq!(count(&killed, "SELECT count(*) AS n FROM messages"), 0);
    assert!(count(&killed, "SELECT count(*) AS n FROM conversations") > 0);

    let out = run(&killed).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["collections"]["messages"]["imported"], 20_000);
    assert_eq!(
        summary["collections"]["users"]["imported"], 0,
        "users were kept"
    );
    assert_eq!(digest(&killed), digest(&whole));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--media-dir`: media of imported messages found under the old upload directory become
/// uploads (sniffed, stripped, counted to their sender); missing or refused files keep their URL and are
/// reported; a second run re-homes nothing twice.
#[test]
fn media_found_in_the_old_upload_directory_are_rehomed() {
    let db = TestDb::migrated();
    import(&db, Source::Seed003, &fixtures("seed003"), false);
    let old = tempdir("uploads");
    std::fs::create_dir_all(old.join("2026/01/06")).unwrap();
    std::fs::create_dir_all(old.join("uploads/2026/01/10")).unwrap();
    let photo = common::media::with_gps_exif(&common::media::jpeg(64, 48));
    std::fs::write(old.join("2026/01/06/cafe-menu.jpg"), &photo).unwrap();
    std::fs::write(
        old.join("atlas-agenda.pdf"),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n",
    )
    .unwrap();
    std::fs::write(
        old.join("uploads/2026/01/10/meeting-point.jpg"),
        b"<html><script>alert(1)</script></html>",
    )
    .unwrap();
    let config = common::test_config(&db);
    let mut report = Report::default();
    import::media::rehome(&config, &mut db.conn(), &old, &mut report).unwrap();
    let m = &report.collections["media"];
    assert_eq!((m.read, m.imported, m.skipped), (5, 2, 3), "{report:?}");
    let reasons: Vec<&str> = report.problems.iter().map(|p| p.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("meeting-point.jpg") && r.contains("unsupported_media_type")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("route.gpx") && r.contains("URL is kept")),
        "{reasons:?}"
    );
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) AS n FROM messages m JOIN media d ON d.id = m.media_id \
             WHERE m.media->>'kind' = 'image' AND m.media->>'name' = 'cafe-menu.jpg' \
             AND (m.media->>'size')::int < {} AND d.owner_id = m.sender_id \
             AND m.media_url LIKE '%cafe-menu.jpg'",
                photo.len()
            )
        ),
        1,
        "the photo is stored without its EXIF block"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM messages WHERE media->>'kind' = 'document' \
             AND media_url LIKE '%atlas-agenda.pdf'"
        ),
        1
    );
    let stored = std::fs::read_dir(db.media_dir().join("media"))
        .unwrap()
        .count();
    assert!(
        stored >= 3,
        "two files and a thumbnail are stored, found {stored}"
    );
    let mut again = Report::default();
    import::media::rehome(&config, &mut db.conn(), &old, &mut again).unwrap();
    let m = &again.collections["media"];
    assert_eq!(
        (m.read, m.imported),
        (3, 0),
        "only the ones left are tried again"
    );
    let _ = std::fs::remove_dir_all(&old);
}

fn legacy_token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap()
}

/// The lines of an export file whose `field` names `value`, parsed.
fn docs_where(file: &Path, field: &str, value: &str) -> Vec<serde_json::Value> {
    std::fs::read(file)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .map(import::ejson::normalize)
        .filter(|d| d[field] == value)
        .collect()
}

/// After the switch, seed 003's app carries on against Switchboard as it did against its old
/// backend: a user signs in with the old password (rehashed on the way), the old Backend's
/// `{id, sessionId}` token and Backend1's `{uid}` token name imported users, the app reads a
/// conversation's history by its legacy id (in order, legacy ids throughout, receipt cursors
/// keyed by legacy user ids) and carries on writing into it over its socket.
#[actix_rt::test]
async fn an_imported_seed003_app_carries_on_with_its_ids_passwords_and_history() {
    let ivan = "6946749b7c2e5b8a41003a11";
    let anna = "694699547c2e5b8a41003a12";
    let conv = "695b7d907c2e5b8a41003a18";
    let dir = tempdir("app");
    for f in std::fs::read_dir(fixtures("seed003")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    // Ivan's password as the old backend stored it (bcryptjs writes $2a$).
    let hash = bcrypt::hash_with_salt("old secret", 4, [7u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoA);
    let users = std::fs::read_to_string(dir.join("users.json")).unwrap();
    let users: Vec<String> = users
        .lines()
        .map(|l| {
            let mut d: serde_json::Value = serde_json::from_str(l).unwrap();
            if import::ejson::normalize(d["_id"].clone()) == ivan {
                d["password"] = hash.clone().into();
            }
            d.to_string()
        })
        .collect();
    std::fs::write(dir.join("users.json"), users.join("\n") + "\n").unwrap();
    let db = TestDb::migrated();
    import(&db, Source::Seed003, &dir, false);
    let srv = common::TestServer::start_apps_on(db, |_| {})
        .await
        .rest_on("backend2");

    // The old password works once and is replaced by Switchboard's own hash.
    let (status, login) = srv
        .post(
            "/auth/login",
            serde_json::json!({"phone": "+79161234567", "password": "old secret"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert!(
        count(
            &srv.db,
            "SELECT count(*) AS n FROM users WHERE phone = '+79161234567' \
             AND password_hash LIKE 'pbkdf2-sha256$%'"
        ) == 1
    );

    // The old Backend's token names Ivan's imported device session; Backend1's names Anna.
    let session = docs_where(&dir.join("sessions.json"), "userId", ivan)
        .into_iter()
        .find(|s| s["isActive"] == true)
        .expect("an active session of Ivan in the fixture");
    let exp = chrono::Utc::now().timestamp() + 600;
    let ivan_token = legacy_token(serde_json::json!({
        "id": ivan, "sessionId": session["sessionId"], "iat": exp - 700, "exp": exp
    }));
    let anna_token = legacy_token(serde_json::json!({"uid": anna, "iat": exp - 700, "exp": exp}));
    let (status, me) = srv.get("/users/profile", Some(&ivan_token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["_id"], ivan, "{me}");

    // The history by the legacy conversation id: in order, with the ids the app cached.
    let mut expected: Vec<(String, String)> =
        docs_where(&dir.join("messages.json"), "conversation", conv)
            .into_iter()
            .chain(docs_where(
                &dir.join("messages.json"),
                "conversationId",
                conv,
            ))
            .map(|d| {
                (
                    d["createdAt"].as_str().unwrap().to_owned(),
                    d["_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    expected.sort();
    expected.dedup();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    let (status, page) = srv
        .get(
            &format!("/messages?conversationId={conv}&limit=100"),
            Some(&ivan_token),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["conversationId"], conv, "{page}");
    let shown: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown, expected, "imported history in order, by legacy ids");
    for m in page["messages"].as_array().unwrap() {
        assert!(
            [ivan, anna].contains(&m["from"].as_str().unwrap_or("")),
            "{m}"
        );
        assert_eq!(m["conversation"], conv, "{m}");
    }

    // Receipt cursors, keyed by legacy user ids, as the conversation list shows them.
    let (status, list) = srv.get("/conversations", Some(&ivan_token)).await;
    assert_eq!(status, 200, "{list}");
    let listed = list["conversations"]
        .as_array()
        .or_else(|| list.as_array())
        .unwrap()
        .iter()
        .find(|c| c["_id"] == conv)
        .unwrap_or_else(|| panic!("{conv} in {list}"))
        .clone();
    let cursor_keys: Vec<String> = ["deliveredUpTo", "readUpTo"]
        .iter()
        .filter_map(|k| listed[*k].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    assert!(!cursor_keys.is_empty(), "{listed}");
    assert!(
        cursor_keys.iter().all(|k| k == ivan || k == anna),
        "{listed}"
    );

    // The app writes on into the conversation it knows; Anna's app hears it by the same ids.
    let mut p = common::puppet::Puppet::start(srv.addr_of("backend2"));
    for (name, token) in [("ivan", &ivan_token), ("anna", &anna_token)] {
        p.connect_at(
            name,
            srv.addr_of("backend2"),
            serde_json::json!({"auth": {"token": token}, "transports": ["websocket"]}),
        )
        .await;
        let pong = p.call(name, "ping", serde_json::json!([{}])).await;
        assert!(pong[0].get("pong").is_some(), "{pong:?}");
    }
    p.emit(
        "ivan",
        "message",
        serde_json::json!([{"conversationId": conv, "text": "back on the new server"}]),
    );
    let m = p.event("anna", "message").await;
    assert_eq!(m["conversationId"], conv, "{m}");
    assert_eq!(m["from"], ivan, "{m}");
    assert_eq!(m["text"], "back on the new server", "{m}");
    let (_, page) = srv
        .get(
            &format!("/messages?conversationId={conv}&limit=100"),
            Some(&anna_token),
        )
        .await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), expected.len() + 1, "{page}");
    assert_eq!(messages.last().unwrap()["text"], "back on the new server");
    let _ = std::fs::remove_dir_all(&dir);
}
