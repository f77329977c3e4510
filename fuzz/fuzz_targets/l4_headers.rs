//! What an L4 listener reads before it relays: a PROXY protocol header (`accept_proxy`) and
//! a TLS ClientHello (`sni_routes`), on hostile bytes. No panic; a header that parses
//! claims no byte it was not given and parses the same from exactly its own bytes, every
//! shorter prefix of it asking for more; a hello read keeps every byte it consumed, in
//! order, and a name comes back lower-case.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use switchyard::proxy_protocol;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, len))) = proxy_protocol::parse(data) {
        assert!(len <= data.len());
        assert_eq!(proxy_protocol::parse(&data[..len]), Ok(Some((header, len))));
        for cut in [0, len / 2, len.saturating_sub(1)] {
            if cut < len {
                assert_eq!(proxy_protocol::parse(&data[..cut]), Ok(None), "prefix {cut}");
            }
        }
    }

    // A slice reader never pends, so one poll runs the read to its end.
    let mut reader: &[u8] = data;
    let mut buf = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let result = {
        let fut = pin!(switchyard::sni::read_hello(&mut reader, &mut buf));
        let Poll::Ready(result) = fut.poll(&mut cx) else {
            panic!("a read over a slice pended");
        };
        result
    };
    assert!(data.starts_with(&buf), "the kept bytes are not what was read");
    if let Ok(Some(name)) = result {
        assert_eq!(name, name.to_ascii_lowercase());
    }
});
