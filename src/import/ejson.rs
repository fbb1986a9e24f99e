//! Reading `mongoexport` output: one document per line, MongoDB Extended JSON (canonical or
//! relaxed). Values are brought to plain JSON as they are read: `{"$oid": h}` becomes the hex
//! string, `{"$date": …}` an RFC 3339 string, `{"$numberLong"|"$numberInt"|"$numberDouble"|
//! "$numberDecimal": s}` a number. A line that is not valid UTF-8 is read with the bad bytes
//! replaced by U+FFFD; NUL characters (which PostgreSQL text cannot hold) are removed. Both
//! count as repairs, which the import reports.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Number, Value};
use std::io::BufRead;

/// One line of an export.
#[derive(Debug)]
pub(crate) enum Line {
    /// A document, and whether reading it needed a repair (which one).
    Doc(Map<String, Value>, Option<&'static str>),
    /// A line that holds no document, and why.
    Bad(String),
}

/// Reads an export line by line; counts the bytes consumed (for progress).
#[derive(Debug)]
pub(crate) struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes read so far.
    pub bytes: u64,
    /// 1-based number of the last line read.
    pub line: u64,
}

impl<R: BufRead> Reader<R> {
    /// A reader over `inner`.
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(4096),
            bytes: 0,
            line: 0,
        }
    }

    /// The next non-blank line, or `None` at the end.
    pub(crate) fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            self.buf.clear();
            let n = self.inner.read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.bytes += n as u64;
            self.line += 1;
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(parse_line(&self.buf)));
        }
    }
}

/// Parses one line of an export.
pub(crate) fn parse_line(raw: &[u8]) -> Line {
    let (text, mut repair) = match std::str::from_utf8(raw) {
        Ok(t) => (std::borrow::Cow::Borrowed(t), None),
        Err(_) => (String::from_utf8_lossy(raw), Some("invalid UTF-8 replaced")),
    };
    let value: Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(e) => return Line::Bad(format!("not a JSON document ({e})")),
    };
    let mut value = normalize(value);
    if strip_nul(&mut value) {
        repair.get_or_insert("NUL characters removed");
    }
    match value {
        Value::Object(map) => Line::Doc(map, repair),
        _ => Line::Bad("not a JSON object".into()),
    }
}

/// Extended JSON to plain JSON (see the module documentation).
pub fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            if map.len() == 1 {
                if let Some((key, inner)) = map.iter().next() {
                    if let Some(plain) = wrapper(key, inner) {
                        return plain;
                    }
                }
            }
            Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn wrapper(key: &str, inner: &Value) -> Option<Value> {
    match key {
        "$oid" | "$symbol" => inner.as_str().map(|s| Value::String(s.to_owned())),
        "$date" => date_of(inner).map(|d| Value::String(rfc3339(d))),
        "$numberLong" | "$numberInt" => match inner {
            Value::String(s) => s.parse::<i64>().ok().map(|n| Value::Number(n.into())),
            Value::Number(n) => Some(Value::Number(n.clone())),
            _ => None,
        },
        "$numberDouble" | "$numberDecimal" => inner
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(Number::from_f64)
            .map(Value::Number),
        _ => None,
    }
}

fn date_of(inner: &Value) -> Option<DateTime<Utc>> {
    match inner {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.with_timezone(&Utc)),
        Value::Number(n) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        Value::Object(o) => o
            .get("$numberLong")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        _ => None,
    }
}

/// RFC 3339 with milliseconds, as Extended JSON writes dates.
pub(crate) fn rfc3339(d: DateTime<Utc>) -> String {
    d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Removes NUL characters from every string (keys included); true when it removed any.
fn strip_nul(value: &mut Value) -> bool {
    match value {
        Value::String(s) if s.contains('\0') => {
            s.retain(|c| c != '\0');
            true
        }
        Value::Array(items) => {
            let mut any = false;
            for v in items {
                any |= strip_nul(v);
            }
            any
        }
        Value::Object(map) => {
            let mut any = false;
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                *map = old
                    .into_iter()
                    .map(|(k, v)| (k.replace('\0', ""), v))
                    .collect();
                any = true;
            }
            for v in map.values_mut() {
                any |= strip_nul(v);
            }
            any
        }
        _ => false,
    }
}

/// The first of `keys` that holds a non-null value.
pub(crate) fn field<'a>(doc: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| doc.get(*k).filter(|v| !v.is_null()))
}

/// The first of `keys` as a non-empty string (numbers written out).
pub(crate) fn text(doc: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match doc.get(*k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// An id reference: a string, or an object holding `id`, `userId` or `_id` (a populated
/// reference, or a sub-document such as seed 002's participant, whose own `_id` is not the
/// user's).
pub(crate) fn id_ref(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => o
            .get("id")
            .or_else(|| o.get("userId"))
            .or_else(|| o.get("_id"))
            .and_then(id_ref),
        _ => None,
    }
}

/// The first of `keys` as an id reference.
pub(crate) fn id_field(doc: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| doc.get(*k).and_then(id_ref))
}

/// The first of `keys` as a time (an RFC 3339 string once normalized, or epoch milliseconds).
pub(crate) fn time(doc: &Map<String, Value>, keys: &[&str]) -> Option<DateTime<Utc>> {
    keys.iter().find_map(|k| doc.get(*k).and_then(date_of))
}

/// The first of `keys` as a boolean (`true`, `"true"`, 1).
pub(crate) fn flag(doc: &Map<String, Value>, keys: &[&str]) -> bool {
    keys.iter().any(|k| match doc.get(*k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        _ => false,
    })
}

/// A MongoDB ObjectId's creation time (its first four bytes), for documents without `createdAt`.
pub(crate) fn object_id_time(id: &str) -> Option<DateTime<Utc>> {
    if id.len() != 24 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let secs = i64::from_str_radix(id.get(..8)?, 16).ok()?;
    Utc.timestamp_opt(secs, 0).single()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(line: &[u8]) -> (Map<String, Value>, Option<&'static str>) {
        match parse_line(line) {
            Line::Doc(d, r) => (d, r),
            Line::Bad(why) => panic!("{why}"),
        }
    }

    #[test]
    fn canonical_and_relaxed_extended_json_become_plain_values() {
        let (d, repair) = doc(br#"{"_id":{"$oid":"65a1b2c3d4e5f6a7b8c9d0e1"},"a":{"$date":{"$numberLong":"1735787045678"}},"b":{"$date":"2025-01-02T03:04:05.678Z"},"n":{"$numberLong":"12"},"i":{"$numberInt":"3"},"f":{"$numberDouble":"1.5"},"list":[{"$oid":"65a1b2c3d4e5f6a7b8c9d0e2"}],"m":{"x":{"$numberInt":"1"}}}"#);
        assert_eq!(repair, None);
        assert_eq!(d["_id"], json!("65a1b2c3d4e5f6a7b8c9d0e1"));
        assert_eq!(d["a"], json!("2025-01-02T03:04:05.678Z"));
        assert_eq!(d["b"], json!("2025-01-02T03:04:05.678Z"));
        assert_eq!(d["n"], json!(12));
        assert_eq!(d["i"], json!(3));
        assert_eq!(d["f"], json!(1.5));
        assert_eq!(d["list"], json!(["65a1b2c3d4e5f6a7b8c9d0e2"]));
        assert_eq!(d["m"], json!({"x": 1}));
        assert_eq!(
            time(&d, &["a"]).unwrap().timestamp_millis(),
            1_735_787_045_678
        );
    }

    #[test]
    fn bad_bytes_and_nul_are_repaired_and_broken_lines_reported() {
        let mut raw = br#"{"text":"ab"#.to_vec();
        raw.extend_from_slice(&[0xC3, 0x28]);
        raw.extend_from_slice(br#"cd"}"#);
        let (d, repair) = doc(&raw);
        assert_eq!(repair, Some("invalid UTF-8 replaced"));
        assert_eq!(d["text"], json!("ab\u{fffd}(cd"));
        let (d, repair) = doc(br#"{"text":"a\u0000b"}"#);
        assert_eq!(repair, Some("NUL characters removed"));
        assert_eq!(d["text"], json!("ab"));
        assert!(matches!(parse_line(br#"{"text":"#), Line::Bad(_)));
        assert!(matches!(parse_line(b"[1,2]"), Line::Bad(_)));
    }

    #[test]
    fn references_may_be_populated_objects_and_ids_carry_their_time() {
        assert_eq!(
            id_ref(&json!({"_id": "abc", "name": "x"})),
            Some("abc".into())
        );
        assert_eq!(id_ref(&json!(" abc ")), Some("abc".into()));
        assert_eq!(id_ref(&json!(null)), None);
        assert_eq!(
            object_id_time("65a1b2c3d4e5f6a7b8c9d0e1")
                .unwrap()
                .timestamp(),
            0x65a1_b2c3
        );
        assert_eq!(object_id_time("dm_x"), None);
    }
}
