use super::*;

/// Fields of a raw head (request or response line first), as httparse gives them.
fn parsed(head: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let (_, fields) = httparse::parse_headers(skip_first_line(head), &mut slots)
        .ok()
        .and_then(|s| match s {
            httparse::Status::Complete(c) => Some(c),
            httparse::Status::Partial => None,
        })
        .expect("a complete test head");
    fields
        .iter()
        .map(|f| (f.name.as_bytes().to_vec(), f.value.to_vec()))
        .collect()
}

fn skip_first_line(head: &[u8]) -> &[u8] {
    let i = head.iter().position(|&b| b == b'\n').unwrap();
    &head[i + 1..]
}

fn as_fields(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<Field<'_>> {
    pairs.iter().map(|(n, v)| Field::new(n, v)).collect()
}

fn as_map(pairs: &[(Vec<u8>, Vec<u8>)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (n, v) in pairs {
        m.append(
            HeaderName::from_bytes(n).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    m
}

/// The header map written bytes parse into.
fn reparsed(bytes: &[u8]) -> HeaderMap {
    let mut head = b"X / HTTP/1.1\r\n".to_vec();
    head.extend_from_slice(bytes);
    if !head.ends_with(b"\r\n\r\n") {
        head.extend_from_slice(b"\r\n");
    }
    as_map(&parsed(&head))
}

const TO: To<'static> = To {
    client_ip: b"127.0.0.1",
    tls: false,
    forwarded_host: b"shop.test",
    host: None,
    request_id: Some(b"0123456789abcdef0123456789abcdef"),
    chunked: false,
    length: None,
    upgrade: true,
    keep_forwarded_for: true,
    strip: Strip::new(&[]),
    join_cookies: false,
};

/// Requests whose edits exercise every rule; each is checked with both appliers.
const REQUESTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: shop.test\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Private\r\nConnection: close\r\n\
      X-Private: 1\r\nX-Private: 2\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nX-Kept: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTE: gzip\r\nTE: trailers\r\nTrailer: x-sum\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\
      X-Forwarded-Proto: spoofed\r\nX-Forwarded-Host: spoofed\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Request-Id\r\nX-Request-Id: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host, upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
      HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; sy=tok;b=\"q r\"\r\nX-After: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nCookie: sy=tok\r\nCookie: ab=v2\r\n\r\n",
];

fn request_id_of<'a>(scan: &Scan<'a>) -> Option<&'a [u8]> {
    match scan.client_id {
        Some(_) => None,
        None => TO.request_id,
    }
}

fn sy_and_ab() -> Strip<'static> {
    static NAMES: std::sync::LazyLock<Vec<Box<[u8]>>> =
        std::sync::LazyLock::new(|| vec![Box::from(&b"sy"[..]), Box::from(&b"ab"[..])]);
    Strip::new(&NAMES)
}

/// The request fields `to` makes of `head`, written as bytes.
fn edited_with(head: &[u8], to: To<'_>) -> String {
    let pairs = parsed(head);
    let fields = as_fields(&pairs);
    let scan = Scan::request(fields.iter().copied());
    let mut bytes = Vec::new();
    scan.edits(to)
        .write(|| fields.iter().copied(), None, &mut bytes);
    String::from_utf8(bytes).unwrap()
}

#[test]
fn the_proxys_cookies_are_stripped_and_the_others_pass_as_sent() {
    let to = To {
        strip: sy_and_ab(),
        ..TO
    };
    let out = edited_with(
        b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; sy=tok;b=\"q r\" ; c\r\n\r\n",
        to,
    );
    assert!(out.contains("cookie: a=1; b=\"q r\"\r\n"), "{out}");
    let out = edited_with(
        b"GET / HTTP/1.1\r\nHost: a\r\nCookie: sy=tok\r\nCookie: ab=x\r\n\r\n",
        to,
    );
    assert!(!out.to_ascii_lowercase().contains("cookie"), "{out}");
    // Nothing to strip: every Cookie field passes as it was, even several.
    let out = edited_with(
        b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1;b=2\r\nCookie: c=3\r\n\r\n",
        TO,
    );
    assert!(out.contains("Cookie: a=1;b=2\r\nCookie: c=3\r\n"), "{out}");
    // From HTTP/2 to HTTP/1.1: one field.
    let out = edited_with(
        b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1\r\nCookie: c=3\r\n\r\n",
        To {
            join_cookies: true,
            ..TO
        },
    );
    assert!(
        out.contains("cookie: a=1; c=3\r\n") && !out.contains("Cookie:"),
        "{out}"
    );
}

#[test]
fn an_untrusted_peers_forwarded_for_is_replaced() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let out = edited_with(
        head,
        To {
            keep_forwarded_for: false,
            ..TO
        },
    );
    assert!(out.contains("x-forwarded-for: 127.0.0.1\r\n"), "{out}");
    assert!(edited_with(head, TO).contains("x-forwarded-for: 6.6.6.6, 127.0.0.1\r\n"));
}

#[test]
fn set_cookie_brings_cache_control_private_unless_the_backend_said_so() {
    let set = SetCookies::of(&[b"sy=tok; Path=/", b"ab=v2; Path=/"], true);
    let case = |head: &[u8], set: &SetCookies| {
        let pairs = parsed(head);
        let fields = as_fields(&pairs);
        let edits = Response::scan(
            fields.iter().copied(),
            None,
            b"id",
            http::StatusCode::OK,
            set,
        );
        let mut bytes = Vec::new();
        edits.write(fields.iter().copied(), None, true, &mut bytes);
        let map = edits.apply(&as_map(&pairs));
        assert_eq!(reparsed(&bytes), map);
        map
    };
    let m = case(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: app=1\r\nCache-Control: max-age=60\r\n\r\n",
        &set,
    );
    let cookies: Vec<_> = m.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["app=1", "sy=tok; Path=/", "ab=v2; Path=/"]);
    let cc: Vec<_> = m.get_all("cache-control").iter().collect();
    assert_eq!(cc, ["max-age=60", "private"]);
    for said in ["private", "no-store", "Private, max-age=0"] {
        let head = format!("HTTP/1.1 200 OK\r\nCache-Control: {said}\r\n\r\n");
        let m = case(head.as_bytes(), &set);
        assert_eq!(m.get_all("cache-control").iter().count(), 1, "{said}");
    }
    let m = case(
        b"HTTP/1.1 200 OK\r\n\r\n",
        &SetCookies::of(&[b"sy=t"], false),
    );
    assert!(m.get("cache-control").is_none(), "nocache: false");
    let m = case(b"HTTP/1.1 200 OK\r\n\r\n", &SetCookies::default());
    assert!(m.get("set-cookie").is_none() && m.get("cache-control").is_none());
}

#[test]
fn request_appliers_agree() {
    for head in REQUESTS {
        let pairs = parsed(head);
        let fields = as_fields(&pairs);
        let map = as_map(&pairs);
        // The scan reads the same from either representation.
        let scan = Scan::request(fields.iter().copied());
        let from_map = Scan::request(map_fields(&map));
        assert_eq!(
            format!("{scan:?}"),
            format!("{from_map:?}"),
            "{}",
            String::from_utf8_lossy(head)
        );
        for (chunked, strip) in [(false, false), (true, false), (false, true), (true, true)] {
            let to = To {
                request_id: request_id_of(&scan),
                chunked,
                length: (!chunked).then_some(5),
                host: chunked.then_some(&b"auth.test:8080"[..]),
                strip: if strip { sy_and_ab() } else { TO.strip },
                join_cookies: strip,
                keep_forwarded_for: !strip,
                ..TO
            };
            let edits = scan.edits(to);
            let mut bytes = Vec::new();
            edits.write(|| fields.iter().copied(), None, &mut bytes);
            let edited = edits.apply(&map);
            assert_eq!(
                reparsed(&bytes),
                edited,
                "{}\nbytes: {}",
                String::from_utf8_lossy(head),
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}

/// The edited request `head` as the backend gets it, in lower-case `name: value` lines.
fn edited(head: &[u8]) -> Vec<String> {
    let pairs = parsed(head);
    let fields = as_fields(&pairs);
    let scan = Scan::request(fields.iter().copied());
    let edits = scan.edits(To {
        request_id: request_id_of(&scan),
        ..TO
    });
    let mut out = Vec::new();
    edits.write(|| fields.iter().copied(), None, &mut out);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap_or((l, ""));
            format!("{}: {v}", n.to_ascii_lowercase())
        })
        .collect()
}

#[test]
fn hop_by_hop_fields_and_the_fields_connection_names_are_dropped() {
    let got = edited(REQUESTS[1]);
    assert!(got.contains(&"x-kept: y".to_string()), "{got:?}");
    for gone in ["connection", "x-private", "keep-alive", "proxy-connection"] {
        assert!(!got.iter().any(|l| l.starts_with(gone)), "{gone}: {got:?}");
    }
}

#[test]
fn te_trailers_is_kept_from_any_of_its_fields() {
    let got = edited(REQUESTS[2]);
    assert!(got.contains(&"te: trailers".to_string()), "{got:?}");
    assert!(got.contains(&"trailer: x-sum".to_string()), "{got:?}");
    assert_eq!(got.iter().filter(|l| l.starts_with("te:")).count(), 1);
}

#[test]
fn forwarded_for_is_folded_and_appended_unless_connection_named_it() {
    let got = edited(REQUESTS[3]);
    assert!(
        got.contains(&"x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1".to_string()),
        "{got:?}"
    );
    assert!(got.contains(&"x-forwarded-proto: http".to_string()));
    assert!(got.contains(&"x-forwarded-host: shop.test".to_string()));
    let got = edited(REQUESTS[4]);
    assert!(
        got.contains(&"x-forwarded-for: 127.0.0.1".to_string()),
        "{got:?}"
    );
}

#[test]
fn a_named_or_empty_request_id_is_replaced() {
    for head in [REQUESTS[5], REQUESTS[6]] {
        let got = edited(head);
        let ids: Vec<_> = got
            .iter()
            .filter(|l| l.starts_with("x-request-id"))
            .collect();
        assert_eq!(
            ids,
            ["x-request-id: 0123456789abcdef0123456789abcdef"],
            "{got:?}"
        );
    }
    let pairs = parsed(b"GET / HTTP/1.1\r\nX-Request-Id: abc\r\n\r\n");
    let kept = Scan::request(as_fields(&pairs).into_iter());
    assert_eq!(kept.client_id, Some(&b"abc"[..]));
}

#[test]
fn upgrades_pass_but_h2c_and_host_naming_do_not() {
    let got = edited(REQUESTS[7]);
    assert!(got.contains(&"host: a".to_string()), "{got:?}");
    assert!(got.contains(&"upgrade: websocket".to_string()), "{got:?}");
    assert!(got.contains(&"connection: upgrade".to_string()), "{got:?}");
    let got = edited(REQUESTS[8]);
    for gone in ["upgrade", "connection", "http2-settings"] {
        assert!(!got.iter().any(|l| l.starts_with(gone)), "{gone}: {got:?}");
    }
    let got = edited(REQUESTS[9]);
    for gone in ["expect", "transfer-encoding"] {
        assert!(!got.iter().any(|l| l.starts_with(gone)), "{gone}: {got:?}");
    }
}

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\nX-Request-Id: theirs\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
      Transfer-Encoding: chunked\r\nContent-Length: 3\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
      Sec-WebSocket-Accept: x\r\n\r\n",
];

#[test]
fn response_appliers_agree() {
    for (i, head) in RESPONSES.iter().enumerate() {
        let pairs = parsed(head);
        let fields = as_fields(&pairs);
        let upgrade = (i == 2).then_some(&b"websocket"[..]);
        let status = if i == 2 {
            http::StatusCode::SWITCHING_PROTOCOLS
        } else {
            http::StatusCode::OK
        };
        let none = SetCookies::default();
        let edits = Response::scan(fields.iter().copied(), upgrade, b"id-1", status, &none);
        let mut bytes = Vec::new();
        edits.write(fields.iter().copied(), None, true, &mut bytes);
        let map = edits.apply(&as_map(&pairs));
        assert_eq!(
            reparsed(&bytes),
            map,
            "{}\n{}",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(map["x-request-id"], "id-1");
    }
    let pairs = parsed(RESPONSES[1]);
    let map = Response::scan(
        as_fields(&pairs).into_iter(),
        None,
        b"id",
        http::StatusCode::OK,
        &SetCookies::default(),
    )
    .apply(&as_map(&pairs));
    assert!(
        map.get("content-length").is_none(),
        "a length beside chunked"
    );
    assert!(map.get("x-hop").is_none() && map.get("keep-alive").is_none());
    assert_eq!(map.get_all("set-cookie").iter().count(), 2);
}

#[test]
fn runs_copied_from_the_head_equal_fields_written_one_by_one() {
    for head in REQUESTS {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut slots);
        r.parse(head).unwrap();
        let fields: Vec<Field<'_>> = r
            .headers
            .iter()
            .map(|h| Field::new(h.name.as_bytes(), h.value))
            .collect();
        let scan = Scan::request(fields.iter().copied());
        let edits = scan.edits(To {
            request_id: request_id_of(&scan),
            ..TO
        });
        let (mut runs, mut single) = (Vec::new(), Vec::new());
        edits.write(|| fields.iter().copied(), Some(head), &mut runs);
        edits.write(|| fields.iter().copied(), None, &mut single);
        assert_eq!(
            String::from_utf8_lossy(&runs),
            String::from_utf8_lossy(&single)
        );
    }
}
