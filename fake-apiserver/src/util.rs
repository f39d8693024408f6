//! Small helpers: time stamps, ids, query strings, selectors, JSON access.

use serde_json::{Map, Value};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// RFC 3339 time stamp with second precision, as the API server writes them.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_unix(secs)
}

pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

/// Seconds since the epoch of an RFC 3339 time stamp (`2026-12-02T14:04:16Z`, also with
/// fractional seconds or an offset), `None` if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch, now.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A random version-4 UUID string.
pub fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    let bytes: Vec<u8> = a.to_be_bytes().into_iter().chain(b.to_be_bytes()).collect();
    let mut s = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        let byte = match i {
            6 => (byte & 0x0f) | 0x40,
            8 => (byte & 0x3f) | 0x80,
            _ => *byte,
        };
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

/// The five characters the API server appends for `generateName`.
pub fn generate_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    bytes.get(i + 1).and_then(|b| hex_val(*b)),
                    bytes.get(i + 2).and_then(|b| hex_val(*b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=b&c=d` (tolerating empty pairs like kube's `?&watch=true`).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

pub fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

pub fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = s
        .as_bytes()
        .chunks(2)
        .map(|c| Some(hex_val(c[0])? * 16 + hex_val(c[1])?))
        .collect();
    String::from_utf8(bytes?).ok()
}

// ---- JSON access -------------------------------------------------------------------------

pub fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("object");
    let m = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut().expect("object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj)?
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub fn path_str<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = obj;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    meta(obj)?.get("annotations")?.get(key)?.as_str()
}

pub fn set_annotation(obj: &mut Value, key: &str, value: &str) {
    let m = meta_mut(obj);
    let a = m
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !a.is_object() {
        *a = Value::Object(Map::new());
    }
    a.as_object_mut()
        .expect("object")
        .insert(key.to_string(), Value::String(value.to_string()));
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_finalizers(obj: &mut Value, fins: Vec<String>) {
    let m = meta_mut(obj);
    if fins.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert(
            "finalizers".into(),
            Value::Array(fins.into_iter().map(Value::String).collect()),
        );
    }
}

pub fn phase(obj: &Value) -> Option<&str> {
    path_str(obj, &["status", "phase"])
}

/// Looks up a dotted field path (`metadata.name`, `status.phase`) as a string.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for p in path.split('.') {
        match cur.get(p) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

// ---- selectors ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_set(s: &str) -> Result<Vec<String>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("unable to parse requirement: expected a set in {s:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

pub fn parse_label_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut reqs = Vec::new();
    for term in split_top_level(s) {
        if let Some(k) = term.strip_prefix('!') {
            reqs.push(Requirement::NotExists(k.trim().to_string()));
        } else if let Some((k, v)) = term.split_once(" notin ") {
            reqs.push(Requirement::NotIn(k.trim().to_string(), parse_set(v)?));
        } else if let Some((k, v)) = term.split_once(" in ") {
            reqs.push(Requirement::In(k.trim().to_string(), parse_set(v)?));
        } else if let Some(r) = equality(&term) {
            reqs.push(r);
        } else {
            reqs.push(Requirement::Exists(term));
        }
    }
    Ok(reqs)
}

/// `k!=v`, `k==v` or `k=v`, the forms label and field selectors share.
fn equality(term: &str) -> Option<Requirement> {
    if let Some((k, v)) = term.split_once("!=") {
        Some(Requirement::NotEq(k.trim().into(), v.trim().into()))
    } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        Some(Requirement::Eq(k.trim().into(), v.trim().into()))
    } else {
        None
    }
}

pub fn parse_field_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut reqs = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if let Some(r) = equality(term) {
            reqs.push(r);
        } else {
            return Err(format!(
                "invalid selector: '{term}'; can't understand '{term}'"
            ));
        }
    }
    Ok(reqs)
}

pub fn labels_match(obj: &Value, reqs: &[Requirement]) -> bool {
    let labels = meta(obj).and_then(|m| m.get("labels"));
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
    })
}

pub fn fields_match(obj: &Value, reqs: &[Requirement]) -> bool {
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => field_value(obj, k) == *v,
        Requirement::NotEq(k, v) => field_value(obj, k) != *v,
        _ => false,
    })
}

/// Compares two quantities (`1Gi`, `1024Mi`, `1.5G`, `2e9`) by value; `None` if either does
/// not parse. Exact: both are brought to a mantissa and a power of ten in 128-bit integers.
pub fn quantity_cmp(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    fn parse(q: &str) -> Option<(u128, i32)> {
        let q = q.trim();
        let end = q
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(q.len());
        let (number, suffix) = q.split_at(end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return None;
        }
        let digits = format!("{whole}{fraction}");
        let mut mantissa: u128 = digits.trim_start_matches('0').parse().unwrap_or(0);
        let mut exp10 = -(fraction.len() as i32);
        let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
            .iter()
            .position(|s| *s == suffix);
        match binary {
            Some(i) => mantissa = mantissa.checked_mul(1u128 << (10 * (i + 1)))?,
            None => {
                exp10 += match suffix {
                    "" => 0,
                    "m" => -3,
                    "k" => 3,
                    "M" => 6,
                    "G" => 9,
                    "T" => 12,
                    "P" => 15,
                    "E" => 18,
                    e if e.starts_with(['e', 'E']) => e[1..].parse::<i32>().ok()?,
                    _ => return None,
                }
            }
        }
        Some((mantissa, exp10))
    }
    let (ma, ea) = parse(a)?;
    let (mb, eb) = parse(b)?;
    let shift = |m: u128, by: i32| m.checked_mul(10u128.checked_pow(by as u32)?);
    let low = ea.min(eb);
    Some(shift(ma, ea - low)?.cmp(&shift(mb, eb - low)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_formats() {
        for secs in [0, 951_782_400, 1_795_000_000, 1_796_225_056] {
            assert_eq!(parse_rfc3339(&format_unix(secs)), Some(secs));
        }
        assert_eq!(
            parse_rfc3339("2026-12-02T14:11:16.123456Z"),
            parse_rfc3339("2026-12-02T14:11:16Z")
        );
        assert_eq!(
            parse_rfc3339("2026-12-02T15:11:16+01:00"),
            parse_rfc3339("2026-12-02T14:11:16Z")
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-02T14:11:16Z"), None);
    }

    #[test]
    fn formats_time() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_795_305_129), "2026-11-21T23:52:09Z");
    }

    #[test]
    fn quantities_compare_by_value() {
        use std::cmp::Ordering::*;
        assert_eq!(quantity_cmp("1Gi", "1024Mi"), Some(Equal));
        assert_eq!(quantity_cmp("2Gi", "1Gi"), Some(Greater));
        assert_eq!(quantity_cmp("1G", "1Gi"), Some(Less));
        assert_eq!(quantity_cmp("1.5G", "1500M"), Some(Equal));
        assert_eq!(quantity_cmp("2e9", "2G"), Some(Equal));
        assert_eq!(quantity_cmp("100m", "1"), Some(Less));
        assert_eq!(quantity_cmp("1GB", "1"), None);
    }

    #[test]
    fn uid_shape() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, new_uid());
    }

    #[test]
    fn query_and_selectors() {
        let q = parse_query("&watch=true&labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29");
        assert_eq!(q[0], ("watch".into(), "true".into()));
        let reqs = parse_label_selector(&q[1].1).unwrap();
        let obj = serde_json::json!({"metadata": {"labels": {"app": "web", "tier": "b"}}});
        assert!(labels_match(&obj, &reqs));
        let obj2 = serde_json::json!({"metadata": {"labels": {"app": "web", "tier": "c"}}});
        assert!(!labels_match(&obj2, &reqs));
        assert_eq!(hex_decode(&hex_encode("a/b")).unwrap(), "a/b");
    }
}
