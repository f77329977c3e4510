//! Sticky sessions over the wire: the cookie the proxy sets (its attributes, its opaque
//! signed token, `Cache-Control: private`), a user kept on one backend, the cookie kept
//! from the backend, failover to a live backend, bad tokens counted as absent, key
//! rotation, and one token honoured by every instance with the same config and secret
//! (in-process, after a restart, and across two processes of the binary); and what
//! `explain` says of a token.
mod support;

use http::Response;
use std::net::SocketAddr;
use std::time::Duration;
use support::matrix::*;
use support::{Got, HttpClient, Proxy, full, get_with};
use switchyard::sticky::{Sticky, TOKEN_LEN, Verdict};

/// The variable the tests' configs name in `sticky_secret_env`.
const SECRET_ENV: &str = "SY_TEST_SECRET";
/// The key in it.
const KEY: &str = "test-key-0123456789abcdef";
/// Another key, of another fleet.
const OTHER_KEY: &str = "another-key-0123456789abc";
const HOUR: Duration = Duration::from_secs(3600);

/// Three echo backends `a`, `b`, `c` behind a pool with `sticky: {sticky}`, signed by
/// [`KEY`].
fn three(sticky: &str) -> Spec {
    Spec::new(vec![Kind::Echo("a"), Kind::Echo("b"), Kind::Echo("c")])
        .pool(&format!("sticky: {sticky}"))
        .top(&format!("sticky_secret_env: {SECRET_ENV}"))
        .env(SECRET_ENV, KEY)
}

fn addrs(ups: &[Up]) -> Vec<SocketAddr> {
    ups.iter().map(|u| u.addr).collect()
}

/// The position in the pool of echo backend `name` (`a`, `b`, `c`, ... in order).
fn index(name: &str) -> usize {
    let b = name.as_bytes();
    assert!(
        b.len() == 1 && b[0].is_ascii_lowercase(),
        "backend {name:?}"
    );
    usize::from(b[0] - b'a')
}

/// `Cookie: sy=TOKEN`.
fn with_token(path: &str, token: &str) -> Req {
    Req::get(path).header("cookie", &format!("sy={token}"))
}

/// The `sy` token `got` sets, checked: 44 characters of URL-safe base64, naming (under
/// `tokens`) the backend that answered, freshly signed by the first key.
fn new_token(got: &Got, tokens: &Sticky) -> String {
    assert_eq!(got.status, 200, "{}", got.text());
    let token = got
        .cookie("sy")
        .unwrap_or_else(|| panic!("no sy cookie set: {:?}", got.set_cookies()))
        .to_string();
    assert_eq!(token.len(), TOKEN_LEN, "{token}");
    assert!(
        token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "not URL-safe base64: {token}"
    );
    assert_eq!(
        tokens.verify(token.as_bytes(), support::unix_now()),
        Verdict::Valid {
            backend: Some(index(got.header("x-backend"))),
            old_key: false
        },
        "{token} does not name {}",
        got.header("x-backend")
    );
    token
}

/// The `Cookie` field the echo backend received (null when none).
fn cookie_upstream(got: &Got) -> serde_json::Value {
    got.json()["headers"]["cookie"].clone()
}

#[tokio::test]
async fn the_first_response_sets_an_opaque_token_with_the_spec_attributes() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, three("{cookie: sy, max_age: 1h}")).await;
        let tokens = support::sticky(POOL, &addrs(&m.backends), KEY, Some(HOUR));
        let got = m.send(&Req::get("/app/first")).await;
        let token = new_token(&got, &tokens);
        let secure = if m.tls() { "; Secure" } else { "" };
        assert_eq!(
            got.set_cookies(),
            [format!(
                "sy={token}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax{secure}"
            )]
        );
        assert_eq!(got.header("cache-control"), "private");
        // Opaque: neither the address nor the port of any backend shows.
        for up in &m.backends {
            assert!(!token.contains(&up.addr.ip().to_string()), "{token}");
            assert!(!token.contains(&up.addr.port().to_string()), "{token}");
        }

        // Without max_age, a session cookie.
        let m = Matrix::start(shape, three("{cookie: sy}")).await;
        let tokens = support::sticky(POOL, &addrs(&m.backends), KEY, None);
        let got = m.send(&Req::get("/app/first")).await;
        let token = new_token(&got, &tokens);
        assert_eq!(
            got.set_cookies(),
            [format!(
                "sy={token}; Path=/; HttpOnly; SameSite=Lax{secure}"
            )]
        );
    })
    .await;
}

/// A backend named `name` answering with `Cache-Control` set to the request's `x-cc`,
/// when it has one.
fn caching(name: &'static str) -> Kind {
    Kind::serve(move |req| {
        Box::pin(async move {
            let mut b = Response::builder().header("x-backend", name);
            if let Some(cc) = req.headers().get("x-cc") {
                b = b.header("cache-control", cc);
            }
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            b.body(full("cached?")).expect("a response")
        })
    })
}

/// Every `Cache-Control` value of `got`, joined.
fn cache_control(got: &Got) -> String {
    got.headers
        .get_all("cache-control")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn a_response_that_sets_the_cookie_is_private_unless_the_backend_said_so() {
    every_shape(|shape| async move {
        let spec = |nocache: bool| {
            Spec::new(vec![caching("a")])
                .pool(&format!("sticky: {{cookie: sy, nocache: {nocache}}}"))
                .top(&format!("sticky_secret_env: {SECRET_ENV}"))
                .env(SECRET_ENV, KEY)
        };
        let m = Matrix::start(shape, spec(true)).await;
        for (backend_said, client_gets) in [
            (None, "private"),
            (Some("max-age=60"), "max-age=60, private"),
            (Some("no-store"), "no-store"),
            (Some("Private, max-age=0"), "Private, max-age=0"),
            (Some("public, no-store"), "public, no-store"),
        ] {
            let mut req = Req::get("/app/cc");
            if let Some(cc) = backend_said {
                req = req.header("x-cc", cc);
            }
            let got = m.send(&req).await;
            assert_eq!(got.status, 200);
            let token = got.cookie("sy").expect("a new token").to_string();
            assert_eq!(
                cache_control(&got),
                client_gets,
                "backend said {backend_said:?}"
            );
            // With the token, no cookie is set and the response is left as it was.
            let mut again = with_token("/app/cc", &token);
            if let Some(cc) = backend_said {
                again = again.header("x-cc", cc);
            }
            let again = m.send(&again).await;
            assert!(again.set_cookies().is_empty(), "{:?}", again.set_cookies());
            assert_eq!(cache_control(&again), backend_said.unwrap_or(""));
        }

        let m = Matrix::start(shape, spec(false)).await;
        let got = m.send(&Req::get("/app/cc")).await;
        assert!(got.cookie("sy").is_some(), "{:?}", got.set_cookies());
        assert_eq!(cache_control(&got), "", "nocache: false adds nothing");
        let got = m
            .send(&Req::get("/app/cc").header("x-cc", "max-age=5"))
            .await;
        assert_eq!(cache_control(&got), "max-age=5");
    })
    .await;
}

#[tokio::test]
async fn with_its_cookie_a_user_stays_on_one_backend() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, three("{cookie: sy}")).await;
        let tokens = support::sticky(POOL, &addrs(&m.backends), KEY, None);
        // Without the cookie, round robin: three requests, three backends.
        let mut seen = std::collections::BTreeSet::new();
        let mut first = None;
        for _ in 0..3 {
            let got = m.send(&Req::get("/app/s")).await;
            let token = new_token(&got, &tokens);
            seen.insert(got.header("x-backend").to_string());
            first.get_or_insert((token, got.header("x-backend").to_string()));
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        let (token, backend) = first.expect("three requests");
        for i in 0..30 {
            let got = m.send(&with_token(&format!("/app/s/{i}"), &token)).await;
            assert_eq!(got.status, 200, "request {i}: {}", got.text());
            assert_eq!(got.header("x-backend"), backend, "request {i}");
            assert!(
                got.set_cookies().is_empty(),
                "request {i}: {:?}",
                got.set_cookies()
            );
            assert_eq!(got.header("cache-control"), "", "request {i}");
        }
        assert_eq!(m.backends[index(&backend)].hits(), 31);
    })
    .await;
}

#[tokio::test]
async fn the_sticky_cookie_is_kept_from_the_backend_and_the_others_pass_as_sent() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, three("{cookie: sy}")).await;
        let first = m.send(&Req::get("/app/c")).await;
        let backend = first.header("x-backend").to_string();
        let t = first.cookie("sy").expect("a token").to_string();
        // (Cookie fields sent, the one field the backend gets; null: none.)
        let cases: Vec<(Vec<String>, serde_json::Value)> = vec![
            (
                vec![format!(r#"a=1; sy={t}; b="x y""#)],
                r#"a=1; b="x y""#.into(),
            ),
            (vec![format!("sy={t}")], serde_json::Value::Null),
            (
                vec![format!("sy={t}; sya=2; xsy=3; SY=4")],
                "sya=2; xsy=3; SY=4".into(),
            ),
            (vec![format!("a=1;sy={t};c=%20z")], "a=1; c=%20z".into()),
            (
                vec!["a=1".to_string(), format!("sy={t}; b=2")],
                "a=1; b=2".into(),
            ),
            // Without the proxy's cookie, the field is not touched at all.
            (vec!["a=1;b=2;  c=3".to_string()], "a=1;b=2;  c=3".into()),
        ];
        for (sent, upstream) in cases {
            let mut req = Req::get("/app/c");
            for c in &sent {
                req = req.header("cookie", c);
            }
            let got = m.send(&req).await;
            assert_eq!(got.status, 200, "{sent:?}");
            assert_eq!(cookie_upstream(&got), upstream, "sent {sent:?}");
            if sent.iter().any(|c| c.contains("sy=")) {
                assert_eq!(got.header("x-backend"), backend, "sent {sent:?}");
                assert!(got.set_cookies().is_empty(), "sent {sent:?}");
            }
        }
        // A token that does not hold is kept from the backend too.
        let got = m
            .send(&Req::get("/app/c").header("cookie", "a=1; sy=forged"))
            .await;
        assert_eq!(cookie_upstream(&got), "a=1");
        assert!(got.cookie("sy").is_some(), "a fresh token");
    })
    .await;
}

#[tokio::test]
async fn when_its_backend_is_down_or_gone_a_user_moves_and_gets_a_new_token() {
    every_shape(|shape| async move {
        let m = Matrix::start(
            shape,
            Spec::new(vec![Kind::Refusing, Kind::Echo("b"), Kind::Echo("c")])
                .pool("sticky: {cookie: sy}\nretries: 2")
                .top(&format!("sticky_secret_env: {SECRET_ENV}"))
                .env(SECRET_ENV, KEY),
        )
        .await;
        let pool = addrs(&m.backends);
        let tokens = support::sticky(POOL, &pool, KEY, None);
        // A token for the dead backend, as the proxy issued it while it was alive. Seven
        // requests: the first five fail to connect (then it is ejected), the last two find
        // it down before trying.
        let dead = String::from_utf8(tokens.token(0, support::unix_now()).to_vec()).unwrap();
        let mut moved = None;
        for i in 0..7 {
            let got = m.send(&with_token("/app/f", &dead)).await;
            assert_eq!(got.status, 200, "request {i}: {}", got.text());
            assert_ne!(got.header("x-backend"), "a");
            let token = new_token(&got, &tokens);
            assert_ne!(token, dead);
            moved = Some((token, got.header("x-backend").to_string()));
        }
        // The new token holds.
        let (token, backend) = moved.expect("seven requests");
        for i in 0..10 {
            let got = m.send(&with_token("/app/f", &token)).await;
            assert_eq!(got.header("x-backend"), backend, "request {i}");
            assert!(got.set_cookies().is_empty(), "request {i}");
        }

        // A valid token for a backend no longer in the pool.
        let mut more = pool.clone();
        more.push(support::refusing_addr().await);
        let gone = support::sticky(POOL, &more, KEY, None).token(3, support::unix_now());
        let got = m
            .send(&with_token("/app/f", std::str::from_utf8(&gone).unwrap()))
            .await;
        new_token(&got, &tokens);
    })
    .await;
}

#[tokio::test]
async fn tampered_truncated_expired_and_foreign_tokens_count_as_absent() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, three("{cookie: sy, max_age: 1h}")).await;
        let pool = addrs(&m.backends);
        let tokens = support::sticky(POOL, &pool, KEY, Some(HOUR));
        let now = support::unix_now();
        let text = |t: [u8; TOKEN_LEN]| String::from_utf8(t.to_vec()).unwrap();
        let issued = new_token(&m.send(&Req::get("/app/t")).await, &tokens);

        // A token well inside max_age holds: what follows fails for its own reason.
        let recent = text(tokens.token(1, now - 3000));
        let got = m.send(&with_token("/app/t", &recent)).await;
        assert_eq!(got.header("x-backend"), "b");
        assert!(got.set_cookies().is_empty(), "{:?}", got.set_cookies());

        let mut tampered = issued.clone().into_bytes();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        let bad = [
            ("tampered", String::from_utf8(tampered).unwrap()),
            ("truncated", issued[..TOKEN_LEN - 1].to_string()),
            ("extended", format!("{issued}A")),
            ("expired", text(tokens.token(1, now - 2 * 3600))),
            ("from the future", text(tokens.token(1, now + 86_400))),
            (
                "another key's",
                text(support::sticky(POOL, &pool, OTHER_KEY, None).token(1, now)),
            ),
            (
                "another pool's",
                text(support::sticky("other", &pool, KEY, None).token(1, now)),
            ),
            ("garbage", "hello".to_string()),
            ("empty", String::new()),
            ("all A", "A".repeat(TOKEN_LEN)),
            ("not base64", "%".repeat(TOKEN_LEN)),
        ];
        for (what, token) in bad {
            let got = m.send(&with_token("/app/t", &token)).await;
            let fresh = new_token(&got, &tokens);
            assert_ne!(fresh, token, "{what}");
        }
    })
    .await;
}

/// A plain listener and a pool `p` of echo backends `a`, `b`, `c` with a sticky cookie.
const FLEET: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
sticky_secret_env: SY_TEST_SECRET
pools:
  p:
    sticky: {cookie: sy}
    backends: [{addr: "{a}"}, {addr: "{b}"}, {addr: "{c}"}]
routes: [{name: all, pool: p}]
"#;

/// Three echo backends `a`, `b`, `c`, and their addresses for [`FLEET`].
async fn backends() -> (Vec<support::Backend>, Vec<(&'static str, SocketAddr)>) {
    let mut bs = Vec::new();
    let mut at = Vec::new();
    for name in ["a", "b", "c"] {
        let b = support::Backend::echo(name).await;
        at.push((name, b.addr));
        bs.push(b);
    }
    (bs, at)
}

/// A proxy on [`FLEET`] with `keys` in its secret.
async fn instance(at: &[(&str, SocketAddr)], keys: &str) -> Proxy {
    Proxy::start_with_env(FLEET, at, 1, &[(SECRET_ENV, keys)]).await
}

/// GET `/` at `base` with `sy=TOKEN` (no cookie when empty).
async fn ask(c: &HttpClient, base: &str, token: &str) -> Got {
    let cookie = format!("sy={token}");
    let headers: &[(&str, &str)] = if token.is_empty() {
        &[]
    } else {
        &[("cookie", &cookie)]
    };
    let got = get_with(c, &format!("{base}/"), headers).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got
}

/// `token` sent to `base` `n` times lands on `backend` every time, with no new cookie.
async fn holds(c: &HttpClient, base: &str, token: &str, backend: &str, n: usize) {
    for i in 0..n {
        let got = ask(c, base, token).await;
        assert_eq!(got.header("x-backend"), backend, "{base}: request {i}");
        assert!(
            got.set_cookies().is_empty(),
            "{base}: request {i}: {:?}",
            got.set_cookies()
        );
    }
}

#[tokio::test]
async fn a_rotated_secret_honours_and_re_signs_old_tokens() {
    let (_bs, at) = backends().await;
    let pool: Vec<SocketAddr> = at.iter().map(|(_, a)| *a).collect();
    let (old, new) = ("old-key-0123456789abcdef", "new-key-0123456789abcdef");
    let rotated_keys = format!("{new},{old}");
    let before = instance(&at, old).await;
    let rotated = instance(&at, &rotated_keys).await;
    let after = instance(&at, new).await;
    let c = support::client();
    let (before, rotated, after) = (before.url(""), rotated.url(""), after.url(""));

    let first = ask(&c, &before, "").await;
    let old_token = new_token(&first, &support::sticky("p", &pool, old, None));
    let backend = first.header("x-backend").to_string();

    // Signed by the second key: honoured, and re-signed by the first.
    let got = ask(&c, &rotated, &old_token).await;
    assert_eq!(got.header("x-backend"), backend);
    let re_signed = new_token(&got, &support::sticky("p", &pool, new, None));
    assert_ne!(re_signed, old_token);
    assert_eq!(
        support::sticky("p", &pool, old, None).verify(re_signed.as_bytes(), support::unix_now()),
        Verdict::Invalid,
        "re-signed with the new key, not the old"
    );
    holds(&c, &rotated, &re_signed, &backend, 5).await;

    // Once the old key is gone, its tokens are not honoured; the new one is.
    let got = ask(&c, &after, &old_token).await;
    let fresh = new_token(&got, &support::sticky("p", &pool, new, None));
    assert_ne!(fresh, old_token);
    holds(&c, &after, &re_signed, &backend, 5).await;
}

#[tokio::test]
async fn every_instance_and_a_restarted_one_honour_a_token() {
    let (_bs, at) = backends().await;
    let mut a = instance(&at, KEY).await;
    let b = instance(&at, KEY).await;
    let c = support::client();
    let first = ask(&c, &a.url(""), "").await;
    let token = first.cookie("sy").expect("a token").to_string();
    let backend = first.header("x-backend").to_string();
    holds(&c, &b.url(""), &token, &backend, 10).await;

    a.shutdown().await.expect("the proxy stopped");
    let restarted = instance(&at, KEY).await;
    holds(&c, &restarted.url(""), &token, &backend, 10).await;
}

#[tokio::test]
async fn two_processes_with_one_secret_honour_each_others_tokens() {
    let (_bs, at) = backends().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    let mut text = FLEET
        .replace("{listen}", "127.0.0.1:0")
        .replace("SY_TEST_SECRET", "SWITCHYARD_STICKY_SECRET");
    for (name, addr) in &at {
        text = text.replace(&format!("{{{name}}}"), &addr.to_string());
    }
    std::fs::write(&config, text).unwrap();
    let secret = |key| [("SWITCHYARD_STICKY_SECRET", key)];
    let one = support::Binary::start(&config, &secret(KEY), 1);
    let two = support::Binary::start(&config, &secret(KEY), 1);
    let other = support::Binary::start(&config, &secret(OTHER_KEY), 1);
    let c = support::client();

    let first = ask(&c, &one.url(""), "").await;
    let pool: Vec<SocketAddr> = at.iter().map(|(_, a)| *a).collect();
    let token = new_token(&first, &support::sticky("p", &pool, KEY, None));
    let backend = first.header("x-backend").to_string();
    holds(&c, &two.url(""), &token, &backend, 10).await;
    holds(&c, &one.url(""), &token, &backend, 3).await;
    // The secret is the one in the variable: another one does not honour the token.
    let got = ask(&c, &other.url(""), &token).await;
    new_token(&got, &support::sticky("p", &pool, OTHER_KEY, None));
}

#[test]
fn explain_names_the_backend_of_a_valid_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    let pool: Vec<SocketAddr> = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    std::fs::write(
        &config,
        FLEET
            .replace("{listen}", "127.0.0.1:0")
            .replace("{a}", "127.0.0.1:9001")
            .replace("{b}", "127.0.0.1:9002")
            .replace("{c}", "127.0.0.1:9003")
            .replace("{cookie: sy}", "{cookie: sy, max_age: 1h}"),
    )
    .unwrap();
    let tokens = support::sticky("p", &pool, KEY, Some(HOUR));
    let now = support::unix_now();
    let text = |t: [u8; TOKEN_LEN]| String::from_utf8(t.to_vec()).unwrap();
    let env = [(SECRET_ENV, KEY)];
    let explain = |cookie: Option<&str>| {
        let cookie = cookie.map(|t| format!("sy={t}"));
        let mut args = vec!["GET", "http://shop.test/cart"];
        if let Some(c) = &cookie {
            args.extend(["--cookie", c]);
        }
        let (code, json) = support::explain_json(&config, &env, &args);
        assert_eq!(code, Some(0), "{json}");
        (json["sticky"].clone(), json["backend"].clone())
    };
    for (b, addr) in pool.iter().enumerate() {
        assert_eq!(
            explain(Some(&text(tokens.token(b, now)))),
            ("hit".into(), addr.to_string().into()),
            "backend {b}"
        );
    }
    assert_eq!(explain(None), ("new".into(), serde_json::Value::Null));
    let other = support::sticky("p", &pool, OTHER_KEY, None);
    for bad in [
        text(tokens.token(1, now - 2 * 3600)),
        text(other.token(1, now)),
        "junk".into(),
    ] {
        assert_eq!(
            explain(Some(&bad)),
            ("invalid".into(), serde_json::Value::Null),
            "{bad}"
        );
    }
    // The secret comes from the environment, as for `run`.
    let (code, _) = support::explain_json(&config, &[], &["GET", "http://shop.test/"]);
    assert_eq!(code, Some(1));
}

#[tokio::test]
async fn a_draining_backend_keeps_its_sticky_users_and_gets_no_new_ones() {
    let (_bs, at) = backends().await;
    // FLEET with backend `b` draining.
    let draining = FLEET.replace(r#"{addr: "{b}"}"#, r#"{addr: "{b}", drain: true}"#);
    assert_ne!(draining, FLEET);
    let proxy = Proxy::start_with_env(&draining, &at, 1, &[(SECRET_ENV, KEY)]).await;
    let c = support::client();
    let base = format!("http://{}", proxy.addr);
    let addrs: Vec<SocketAddr> = at.iter().map(|(_, a)| *a).collect();
    let token = support::sticky("p", &addrs, KEY, None).token(1, support::unix_now());
    let token = String::from_utf8(token.to_vec()).unwrap();
    holds(&c, &base, &token, "b", 10).await;
    // New users: spread over a and c, never b.
    let mut seen = std::collections::HashSet::new();
    for i in 0..12 {
        let got = ask(&c, &base, "").await;
        let backend = got.header("x-backend").to_string();
        assert_ne!(backend, "b", "new user {i}");
        assert!(got.cookie("sy").is_some(), "new user {i}");
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// A sticky pool and a plain one, on two paths.
const TWO_POOLS: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
sticky_secret_env: SY_TEST_SECRET
pools:
  p:
    sticky: {cookie: sy}
    backends: [{addr: "{a}"}, {addr: "{b}"}]
  plain:
    backends: [{addr: "{c}"}]
routes:
  - {name: plain, match: {prefix: /plain}, pool: plain}
  - {name: all, pool: p}
"#;

#[tokio::test]
async fn the_sticky_cookie_is_kept_from_every_backend_not_only_its_pools() {
    let (_bs, at) = backends().await;
    let proxy = Proxy::start_with_env(TWO_POOLS, &at, 1, &[(SECRET_ENV, KEY)]).await;
    let c = support::client();
    let first = ask(&c, &format!("http://{}", proxy.addr), "").await;
    let token = first.cookie("sy").expect("a token").to_string();
    // The browser sends it to every path (Path=/): the plain pool's backend never sees it.
    let cookie = format!("app=1; sy={token}");
    let got = get_with(&c, &proxy.url("/plain/x"), &[("cookie", &cookie)]).await;
    assert_eq!(got.header("x-backend"), "c");
    assert_eq!(cookie_upstream(&got), "app=1");
    assert!(got.set_cookies().is_empty(), "{:?}", got.set_cookies());
}
