//! The chunked transfer coding (RFC 9112 §7.1), read strictly, for request bodies from
//! clients and response bodies from backends alike: one decoder, so both directions refuse
//! the same things.
//!
//! Strict where leniency is how smuggling works: a chunk size is hex digits only (no `0x`,
//! sign or inner space) and must fit 64 bits; every line ends in CRLF (a bare LF is an
//! error); chunk data is followed by CRLF; extensions are skipped but capped at
//! [`MAX_LINE`], like hyper's; the trailer section is capped at [`MAX_TRAILERS`] and its
//! fields must parse. Decoding never copies data: pieces are split off the read buffer.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line, extensions included (hyper caps extensions at 16 KiB too).
pub const MAX_LINE: usize = 16 * 1024;
/// Longest trailer section.
pub const MAX_TRAILERS: usize = 64 * 1024;
/// Most trailer fields.
const MAX_TRAILER_FIELDS: usize = 100;

/// Why a chunked body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    Size,
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("invalid trailer section")]
    Trailers,
    #[error("trailer section too large")]
    TrailersTooLarge,
}

/// What the decoder found at the front of the buffer.
#[derive(Debug)]
pub enum Piece {
    /// Body bytes, split off the buffer.
    Data(Bytes),
    /// The body ended; its trailer fields, if any.
    End(Option<HeaderMap>),
}

/// Where a decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// A chunked body being decoded.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: State::Size }
    }
}

impl Decoder {
    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from the front of `buf`: `Ok(None)` when more bytes are needed. After
    /// [`Piece::End`] the rest of `buf` belongs to whatever follows the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Piece>, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Some(Piece::End(None))),
                State::Size => {
                    let Some((used, size)) = size_line(buf)? else {
                        return Ok(None);
                    };
                    buf.advance(used);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(buf.len() as u64);
                    self.state = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                    return Ok(Some(Piece::Data(buf.split_to(n as usize).freeze())));
                }
                State::DataEnd => match buf.get(..2) {
                    None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(None),
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::Size;
                    }
                    _ => return Err(ChunkError::DataEnd),
                },
                State::Trailers => {
                    let Some((used, fields)) = trailers(buf)? else {
                        return Ok(None);
                    };
                    buf.advance(used);
                    self.state = State::Done;
                    return Ok(Some(Piece::End(fields)));
                }
            }
        }
    }
}

/// A chunk-size line at the front of `buf`: its length and the size, `None` while the
/// line is incomplete.
fn size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, ChunkError> {
    let mut size: u64 = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let Some(d) = (b as char).to_digit(16) else {
            break;
        };
        if size >> 60 != 0 {
            return Err(ChunkError::Size);
        }
        size = size << 4 | u64::from(d);
        i += 1;
    }
    if i == buf.len() {
        return match i {
            0 => Ok(None),
            _ if i > 16 => Err(ChunkError::Size),
            _ => Ok(None),
        };
    }
    if i == 0 {
        return Err(ChunkError::Size);
    }
    // After the digits: optional whitespace and extensions (`;name[=value]`), then CRLF.
    let rest = &buf[i..];
    match rest[0] {
        b'\r' | b';' | b' ' | b'\t' => {}
        _ => return Err(ChunkError::Size),
    }
    let Some(lf) = memchr::memchr(b'\n', rest) else {
        return if buf.len() > MAX_LINE {
            Err(ChunkError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    if i + lf + 1 > MAX_LINE || lf == 0 || rest[lf - 1] != b'\r' {
        return Err(if i + lf + 1 > MAX_LINE {
            ChunkError::LineTooLong
        } else {
            ChunkError::Size
        });
    }
    let ext = &rest[..lf - 1];
    let ws = ext.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    match ext.get(ws) {
        None => {}
        Some(b';') if ext.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) => {}
        Some(_) => return Err(ChunkError::Size),
    }
    Ok(Some((i + lf + 1, size)))
}

/// The trailer section at the front of `buf`: bytes used and the fields (`None` when
/// there are none), `None` while incomplete.
#[allow(clippy::type_complexity)]
fn trailers(buf: &[u8]) -> Result<Option<(usize, Option<HeaderMap>)>, ChunkError> {
    if buf.starts_with(b"\r\n") {
        return Ok(Some((2, None)));
    }
    if buf.len() < 2 && buf.first().is_none_or(|&b| b == b'\r') {
        return Ok(None);
    }
    let end = match memchr::memmem::find(buf, b"\r\n\r\n") {
        Some(i) => i + 4,
        None if buf.len() > MAX_TRAILERS => return Err(ChunkError::TrailersTooLarge),
        None => {
            // A bare LF anywhere in what arrived is already an error: fail now rather
            // than wait for a CRLF CRLF that a lenient sender will never write.
            if has_bare_lf(buf) {
                return Err(ChunkError::Trailers);
            }
            return Ok(None);
        }
    };
    if end > MAX_TRAILERS {
        return Err(ChunkError::TrailersTooLarge);
    }
    let section = &buf[..end];
    if has_bare_lf(section) {
        return Err(ChunkError::Trailers);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) if used == end => fields,
        _ => return Err(ChunkError::Trailers),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ChunkError::Trailers)?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| ChunkError::Trailers)?;
        map.append(name, value);
    }
    Ok(Some((end, Some(map))))
}

fn has_bare_lf(b: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', b).any(|i| i == 0 || b[i - 1] != b'\r')
}

/// Append the chunk header for `len` bytes of data (the data and its CRLF follow).
pub fn chunk_header(out: &mut Vec<u8>, len: usize) {
    super::hex(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Append the last chunk and the trailer section with `trailers`.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        super::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed in pieces of `step` bytes: the data and the trailer count.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, usize), ChunkError> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Some(Piece::Data(b)) => data.extend_from_slice(&b),
                Some(Piece::End(t)) => return Ok((data, t.map_or(0, |t| t.len()), buf.len())),
                None if fed < input.len() => {
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
                None => panic!("incomplete: {:?}", String::from_utf8_lossy(input)),
            }
        }
    }

    #[test]
    fn decodes_in_any_pieces_with_extensions_and_trailers() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n000\r\nX-A: 1\r\nX-B: 2\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (data, trailers, rest) = decode(body, step).unwrap();
            assert_eq!(data, b"hello world");
            assert_eq!(trailers, 2);
            assert!(rest <= 4);
        }
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap().0, b"");
        assert_eq!(
            decode(b"A ;x\r\n0123456789\r\n0\r\n\r\n", 3)
                .unwrap()
                .0
                .len(),
            10
        );
    }

    #[test]
    fn refuses_what_lenient_parsers_accept() {
        let bad: &[&[u8]] = &[
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffffff\r\nx",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"g\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
        ];
        for b in bad {
            for step in [1, 64] {
                assert!(
                    decode(b, step).is_err(),
                    "accepted {:?}",
                    String::from_utf8_lossy(b)
                );
            }
        }
    }

    #[test]
    fn extensions_and_trailers_are_capped() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"5;"[..]);
        buf.extend_from_slice(&vec![b'a'; MAX_LINE]);
        assert_eq!(d.decode(&mut buf).unwrap_err(), ChunkError::LineTooLong);
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"0\r\nX: "[..]);
        buf.extend_from_slice(&vec![b'a'; MAX_TRAILERS]);
        assert_eq!(
            d.decode(&mut buf).unwrap_err(),
            ChunkError::TrailersTooLarge
        );
    }

    #[test]
    fn encodes_what_it_decodes() {
        let mut out = Vec::new();
        chunk_header(&mut out, 11);
        out.extend_from_slice(b"hello world\r\n");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        last_chunk(&mut out, Some(&t));
        assert_eq!(out, b"b\r\nhello world\r\n0\r\ngrpc-status: 0\r\n\r\n");
        assert_eq!(decode(&out, 4).unwrap(), (b"hello world".to_vec(), 1, 0));
    }
}
