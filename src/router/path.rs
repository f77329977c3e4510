//! Request path normalization (RFC 3986 §6.2.2), done once before routing.
//!
//! Percent-encoded unreserved characters are decoded, `.` and `..` segments resolved and
//! everything else kept byte for byte: repeated slashes stay, `%2F` stays encoded (so an
//! encoded slash never becomes a segment boundary), and the query is not touched. The
//! normalized path is what gets routed *and* forwarded, so a backend never sees a path the
//! router did not. A path that climbs above the root is rejected, not clamped.

use std::borrow::Cow;

/// Why a path cannot be normalized (the request gets a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request target is not an absolute path")]
    NotAbsolute,
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("malformed percent-encoding in path")]
    BadEscape,
}

/// Normalize an origin-form path; borrows when it is already normal (the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Most paths have neither an escape nor a dot: one pass rules both out (a plain loop
    // for the usual short path, where SIMD set-up costs more than it saves).
    let special = if b.len() < 64 {
        b.iter().any(|&c| c == b'%' || c == b'.')
    } else {
        memchr::memchr2(b'%', b'.', b).is_some()
    };
    if !special {
        return Ok(Cow::Borrowed(path));
    }
    let has_escape = memchr::memchr(b'%', b).is_some();
    if !has_escape && !has_dot_segment(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if has_escape {
        Cow::Owned(decode_unreserved(path)?)
    } else {
        Cow::Borrowed(path)
    };
    if !has_dot_segment(&decoded) {
        return Ok(Cow::Owned(decoded.into_owned()));
    }
    remove_dot_segments(&decoded).map(Cow::Owned)
}

fn has_dot_segment(path: &str) -> bool {
    // Every dot segment starts with "/." (paths are absolute): a SIMD search rules out
    // nearly every path before the exact segment check.
    memchr::memmem::find(path.as_bytes(), b"/.").is_some()
        && path.split('/').any(|s| s == "." || s == "..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let c = hi << 4 | lo;
            if is_unreserved(c) {
                out.push(c as char);
            } else {
                out.push_str(&path[i..i + 3]);
            }
            i += 3;
        } else {
            // Copy the run up to the next escape in one go (keeps UTF-8 intact).
            let end = memchr::memchr(b'%', &b[i..]).map_or(b.len(), |j| i + j);
            out.push_str(&path[i..end]);
            i = end;
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over segments; empty segments count as segments.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let segs: Vec<&str> = path[1..].split('/').collect();
    let last = segs.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => {
                out.push(s);
                continue;
            }
        }
        // A trailing `.` or `..` leaves the path pointing at a directory.
        if i == last {
            out.push("");
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize("/api/products/1"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a..b/.c/"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/./").unwrap(), "/");
        assert_eq!(n("/a/..").unwrap(), "/");
    }

    #[test]
    fn repeated_slashes_are_kept() {
        assert_eq!(n("/a//b").unwrap(), "/a//b");
        assert_eq!(n("/a//../b").unwrap(), "/a/b");
    }

    #[test]
    fn climbing_above_root_is_an_error() {
        assert_eq!(n("/.."), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../.."), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/etc"), Err(PathError::AboveRoot));
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept() {
        assert_eq!(n("/%61pi/%7Euser").unwrap(), "/api/~user");
        assert_eq!(n("/a%2Fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/api/%2E%2E/x").unwrap(), "/x");
    }

    #[test]
    fn bad_escapes_and_relative_targets_are_errors() {
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
    }
}
