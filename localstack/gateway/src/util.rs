//! Small helpers: ids in API Gateway's style, the two time formats API Gateway uses, and
//! percent-decoding.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::STANDARD, Engine};
use rand_core::{OsRng, RngCore};

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An id shaped like API Gateway's connection and request ids: 11 random bytes in standard
/// base64, so 16 characters ending in `=` (e.g. `L0SM9cOFvHcCIhw=`), and sometimes holding `+`
/// or `/`: whoever puts one in a URL must percent-encode it, as with the real service.
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 11];
    OsRng.fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// An X-Ray style trace id as API Gateway adds in `x-amzn-trace-id`.
pub(crate) fn trace_id(now_ms: u64) -> String {
    let mut bytes = [0u8; 12];
    OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("Root=1-{:08x}-{hex}", now_ms / 1000)
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    millis: u64,
}

fn parts(ms: u64) -> Parts {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    Parts {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
        millis: ms % 1000,
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The request time format of API Gateway events: `12/Mar/2020:19:03:58 +0000`.
pub(crate) fn clf_time(ms: u64) -> String {
    let p = parts(ms);
    let month = MONTHS.get(p.month as usize - 1).copied().unwrap_or("Jan");
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        p.day, month, p.year, p.hour, p.minute, p.second
    )
}

/// ISO-8601 in UTC with milliseconds, as the management API's GetConnection answers:
/// `2024-02-09T18:11:43.419Z`.
pub(crate) fn iso8601(ms: u64) -> String {
    let p = parts(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis
    )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` sequences (a malformed one is kept as it is); `+` stays `+`. Invalid UTF-8 in
/// the result is replaced, as a JSON event could not carry it anyway.
pub(crate) fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
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

/// Splits a raw query string into decoded `(name, value)` pairs in order. A parameter without
/// `=` has an empty value; empty pieces (`a=1&&b=2`) are skipped.
pub(crate) fn query_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn times() {
        // 2020-03-12T19:03:58.390Z
        let ms = 1_584_039_838_390;
        assert_eq!(clf_time(ms), "12/Mar/2020:19:03:58 +0000");
        assert_eq!(iso8601(ms), "2020-03-12T19:03:58.390Z");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        // a leap day
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn ids() {
        for _ in 0..100 {
            let id = new_id();
            assert_eq!(id.len(), 16);
            assert!(id.ends_with('='));
        }
        assert!(trace_id(1_584_039_838_390).starts_with("Root=1-5e6a879e-"));
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("abc%3D"), "abc=");
        assert_eq!(percent_decode("a%2Fb%2fc"), "a/b/c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a+b"), "a+b");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(
            query_pairs("a=1&a=2&&b&c=x%20y"),
            vec![
                ("a".into(), "1".into()),
                ("a".into(), "2".into()),
                ("b".into(), String::new()),
                ("c".into(), "x y".into())
            ]
        );
    }
}
