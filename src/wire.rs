//! HTTP/1.1 bytes shared by the two places that read them without hyper: the inline
//! upstream client (`upstream::h1`) and the server's fast lane (`server::lane`). Parsing
//! itself is httparse's; this is what comes after it.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Most header fields accepted in one head (hyper's default).
pub const MAX_HEADERS: usize = 100;

/// The comma-separated tokens of a field value, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether the last token of `value` is `token` (ASCII case-insensitive).
pub fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    tokens(value).last().is_some_and(|t| t.eq_ignore_ascii_case(token))
}

/// Whether any token of `value` is `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// A Content-Length value: digits, or a list of identical digit strings (RFC 9110 §8.6).
pub fn content_length(value: &[u8]) -> Option<u64> {
    let mut n = None;
    for t in value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
        if t.is_empty() {
            return None;
        }
        let mut v: u64 = 0;
        for &b in t {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        if n.is_some_and(|n| n != v) {
            return None;
        }
        n = Some(v);
    }
    n
}

/// Where a field's value lies in the head it was parsed from, as a byte range.
pub fn span(head: &[u8], value: &[u8]) -> (usize, usize) {
    let start = value.as_ptr() as usize - head.as_ptr() as usize;
    (start, start + value.len())
}

/// A header map from names and value ranges of `head`, with room for `extra` more fields;
/// the values share `head`'s memory instead of being copied. `None` if a value is not a
/// valid header value.
pub fn header_map(
    head: &Bytes,
    fields: &mut Vec<(HeaderName, usize, usize)>,
    extra: usize,
) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(fields.len() + extra);
    for (name, start, end) in fields.drain(..) {
        map.append(name, HeaderValue::from_maybe_shared(head.slice(start..end)).ok()?);
    }
    Some(map)
}

thread_local! {
    static DATE: RefCell<(u64, HeaderValue)> = RefCell::new((0, HeaderValue::from_static("")));
}

/// The current time as an HTTP `Date` value, formatted at most once a second per thread.
pub fn date() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            *d = (secs, HeaderValue::from_str(&text).expect("an HTTP date is a valid value"));
        }
        d.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_values() {
        assert_eq!(content_length(b"42"), Some(42));
        assert_eq!(content_length(b"42, 42"), Some(42));
        assert_eq!(content_length(b"42, 43"), None);
        assert_eq!(content_length(b"+42"), None);
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"99999999999999999999999"), None);
    }

    #[test]
    fn tokens_of_field_values() {
        assert!(last_token_is(b"gzip, chunked", b"chunked"));
        assert!(last_token_is(b"Chunked", b"chunked"));
        assert!(!last_token_is(b"chunked, gzip", b"chunked"));
        assert!(has_token(b"keep-alive , Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }

    #[test]
    fn dates_look_like_http_dates() {
        let d = date();
        let d = d.to_str().unwrap();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
}
