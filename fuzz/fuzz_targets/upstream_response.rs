//! The HTTP/1.1 client's response framing on hostile bytes: the head, then the body as the
//! client side would pull it. No panic, no body byte the framing did not account for, and
//! a suspect response (Transfer-Encoding beside Content-Length, a repeated length, HTTP/1.0
//! with a coding) never leaves its connection reusable.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use std::task::{Context, Poll, Waker};
use switchyard::upstream::h1;
use switchyard::wire::Known;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let upgrade = (flags & 2 != 0).then_some(&b"websocket"[..]);
    let mut buf = BytesMut::from(rest);
    let mut fields = Vec::new();
    let Ok(Some(head)) = h1::parse_head(&mut buf, &mut fields, flags & 1 != 0, upgrade) else {
        return;
    };
    let count = |k: Known| fields.iter().filter(|f| f.known == k).count();
    let suspect = (count(Known::TransferEncoding) > 0 && count(Known::ContentLength) > 0)
        || count(Known::ContentLength) > 1
        || (head.version == http::Version::HTTP_10 && count(Known::TransferEncoding) > 0);
    let mut framing = head.framing;
    assert!(!suspect || framing.closes(), "a suspect response left its connection reusable");
    let available = buf.len();
    let mut io: &[u8] = &[];
    let mut cx = Context::from_waker(Waker::noop());
    let mut body = 0;
    loop {
        match framing.poll_frame_from(&mut buf, &mut io, &mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    body += d.len();
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => break,
            Poll::Pending => panic!("an in-memory body never waits"),
        }
    }
    assert!(body <= available, "more body than bytes");
});
