//! A/B splits over the wire: a pool drawn by weight and named in the split cookie, a
//! cookie that forces its pool, the cookie kept from the backend, the chosen pool's own
//! sticky cookie picking the backend; and what `explain` says of a split.
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use support::matrix::*;
use support::{Got, Proxy};
use switchyard::sticky::Verdict;

/// The variable the tests' configs name in `sticky_secret_env`, and the key in it.
const SECRET_ENV: &str = "SY_TEST_SECRET";
const KEY: &str = "test-key-0123456789abcdef";

/// Pools `a` and `b` of one echo backend each (named after its pool), split 90 / 10.
const AB: &str = r#"
listeners: [{name: web, bind: "{listen}"}]
access_log: off
pools:
  a: {backends: [{addr: "{a}"}]}
  b: {backends: [{addr: "{b}"}]}
routes:
  - name: all
    split: {cookie: sy_ab, pools: [{pool: a, weight: 90}, {pool: b, weight: 10}]}
"#;

#[tokio::test]
async fn a_90_10_split_draws_by_weight_and_names_the_pool_in_its_cookie() {
    let (a, b) = (
        support::Backend::echo("a").await,
        support::Backend::echo("b").await,
    );
    let p = Proxy::start(AB, &[("a", a.addr), ("b", b.addr)]).await;
    let c = support::client();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..1000 {
        let got = support::get_with(&c, &p.url("/x"), &[]).await;
        assert_eq!(got.status, 200, "request {i}");
        let pool = got.header("x-backend").to_string();
        assert_eq!(
            got.set_cookies(),
            [format!("sy_ab={pool}; Path=/; HttpOnly; SameSite=Lax")],
            "request {i}"
        );
        *seen.entry(pool).or_default() += 1;
    }
    let to_a = seen.get("a").copied().unwrap_or(0);
    // 90% of 1,000 is 900 with a standard deviation of about 9.5.
    assert!((800..=970).contains(&to_a), "{seen:?}");
    assert_eq!(to_a + seen.get("b").copied().unwrap_or(0), 1000, "{seen:?}");
}

/// A split of [`POOL`] (one echo backend `u`) and pool `b` (one echo backend `b`),
/// 90 / 10, on cookie `sy_ab`.
fn split_spec() -> Spec {
    Spec::new(vec![Kind::Echo("u")])
        .other_pool("b", vec![Kind::Echo("b")], "")
        .route_to(&format!(
            "split: {{cookie: sy_ab, pools: [{{pool: {POOL}, weight: 90}}, {{pool: b, weight: 10}}]}}"
        ))
}

/// The `Cookie` field the echo backend received (null when none).
fn cookie_upstream(got: &Got) -> serde_json::Value {
    got.json()["headers"]["cookie"].clone()
}

/// The pool an echo backend of [`split_spec`] is in.
fn pool_of(backend: &str) -> &'static str {
    match backend {
        "u" => POOL,
        "b" => "b",
        other => panic!("unknown backend {other:?}"),
    }
}

#[tokio::test]
async fn the_split_cookie_forces_its_pool_and_is_kept_from_the_backend() {
    every_shape(|shape| async move {
        let m = Matrix::start(shape, split_spec()).await;
        let secure = if m.tls() { "; Secure" } else { "" };
        // Drawn: the cookie names the pool that answered.
        let got = m.send(&Req::get("/app/x")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let pool = pool_of(got.header("x-backend"));
        assert_eq!(
            got.set_cookies(),
            [format!(
                "sy_ab={pool}; Path=/; HttpOnly; SameSite=Lax{secure}"
            )]
        );
        // Forced, to the 10% side, every time: no cookie set, none passed on.
        for i in 0..20 {
            let got = m
                .send(&Req::get("/app/x").header("cookie", "sy_ab=b"))
                .await;
            assert_eq!(got.header("x-backend"), "b", "request {i}");
            assert!(got.set_cookies().is_empty(), "request {i}");
            assert_eq!(cookie_upstream(&got), serde_json::Value::Null);
        }
        let got = m
            .send(&Req::get("/app/x").header("cookie", r#"x=1; sy_ab=b; y="2 3""#))
            .await;
        assert_eq!(got.header("x-backend"), "b");
        assert_eq!(cookie_upstream(&got), r#"x=1; y="2 3""#);
        let got = m
            .send(&Req::get("/app/x").header("cookie", &format!("sy_ab={POOL}")))
            .await;
        assert_eq!(got.header("x-backend"), "u");
        assert!(got.set_cookies().is_empty());
        // A value naming no pool of the split: drawn again, and still kept from the backend.
        let got = m
            .send(&Req::get("/app/x").header("cookie", "sy_ab=nope; z=9"))
            .await;
        let pool = pool_of(got.header("x-backend"));
        assert_eq!(
            got.set_cookies(),
            [format!(
                "sy_ab={pool}; Path=/; HttpOnly; SameSite=Lax{secure}"
            )]
        );
        assert_eq!(cookie_upstream(&got), "z=9");
    })
    .await;
}

#[tokio::test]
async fn after_the_split_the_chosen_pools_sticky_cookie_picks_the_backend() {
    every_shape(|shape| async move {
        let m = Matrix::start(
            shape,
            Spec::new(vec![Kind::Echo("u0"), Kind::Echo("u1"), Kind::Echo("u2")])
                .pool("sticky: {cookie: sy_u}")
                .other_pool(
                    "v",
                    vec![Kind::Echo("v0"), Kind::Echo("v1"), Kind::Echo("v2")],
                    "sticky: {cookie: sy_v}",
                )
                .route_to(&format!(
                    "split: {{cookie: sy_ab, pools: [{{pool: {POOL}, weight: 1}}, {{pool: v, weight: 1}}]}}"
                ))
                .top(&format!("sticky_secret_env: {SECRET_ENV}"))
                .env(SECRET_ENV, KEY),
        )
        .await;
        let now = support::unix_now();
        // (pool, its sticky cookie, its backends' names) for an echo backend's name.
        let pool_of = |backend: &str| -> (&'static str, &'static str, usize) {
            let i = usize::from(backend.as_bytes()[1] - b'0');
            match backend.as_bytes()[0] {
                b'u' => (POOL, "sy_u", i),
                b'v' => ("v", "sy_v", i),
                _ => panic!("unknown backend {backend:?}"),
            }
        };
        for user in 0..6 {
            let first = m.send(&Req::get("/app/s")).await;
            assert_eq!(first.status, 200, "{}", first.text());
            let backend = first.header("x-backend").to_string();
            let (pool, sticky_cookie, i) = pool_of(&backend);
            assert_eq!(first.cookie("sy_ab"), Some(pool), "user {user}");
            let token = first
                .cookie(sticky_cookie)
                .unwrap_or_else(|| panic!("user {user}: {:?}", first.set_cookies()))
                .to_string();
            assert_eq!(first.set_cookies().len(), 2, "{:?}", first.set_cookies());
            let addrs: Vec<SocketAddr> = m.pool(pool).iter().map(|u| u.addr).collect();
            assert_eq!(
                support::sticky(pool, &addrs, KEY, None).verify(token.as_bytes(), now),
                Verdict::Valid {
                    backend: Some(i),
                    old_key: false
                },
                "user {user}"
            );
            let both = format!("other=1; sy_ab={pool}; {sticky_cookie}={token}");
            for n in 0..15 {
                let got = m.send(&Req::get("/app/s").header("cookie", &both)).await;
                assert_eq!(got.header("x-backend"), backend, "user {user}, request {n}");
                assert!(got.set_cookies().is_empty(), "user {user}, request {n}");
                assert_eq!(cookie_upstream(&got), "other=1", "both stripped");
            }
        }
        // Forced into `v` without its sticky cookie: only the sticky cookie is set, and
        // with it the user stays.
        let got = m.send(&Req::get("/app/s").header("cookie", "sy_ab=v")).await;
        let backend = got.header("x-backend").to_string();
        assert!(backend.starts_with('v'), "{backend}");
        assert_eq!(got.cookie("sy_ab"), None);
        let token = got.cookie("sy_v").expect("a token for v").to_string();
        let both = format!("sy_ab=v; sy_v={token}");
        for n in 0..10 {
            let got = m.send(&Req::get("/app/s").header("cookie", &both)).await;
            assert_eq!(got.header("x-backend"), backend, "request {n}");
            assert!(got.set_cookies().is_empty(), "request {n}");
        }
        // A user who moved variants still carries the other pool's token: it is the
        // proxy's cookie too, and no backend of either pool sees it.
        let moved = format!("a=1; sy_u=whatever; sy_ab=v; sy_v={token}; b=2");
        let got = m.send(&Req::get("/app/s").header("cookie", &moved)).await;
        assert_eq!(got.header("x-backend"), backend);
        assert_eq!(cookie_upstream(&got), "a=1; b=2");
    })
    .await;
}

#[test]
fn explain_shows_the_split_its_weights_and_what_the_cookie_forces() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    let b_addrs: Vec<SocketAddr> = vec![
        "127.0.0.1:9002".parse().unwrap(),
        "127.0.0.1:9003".parse().unwrap(),
    ];
    std::fs::write(
        &config,
        AB.replace("{listen}", "127.0.0.1:0")
            .replace("{a}", "127.0.0.1:9001")
            .replace(
                r#"b: {backends: [{addr: "{b}"}]}"#,
                r#"b: {sticky: {cookie: sy_b}, backends: [{addr: "127.0.0.1:9002"}, {addr: "127.0.0.1:9003"}]}"#,
            )
            .replace("access_log: off", &format!("access_log: off\nsticky_secret_env: {SECRET_ENV}")),
    )
    .unwrap();
    let env = [(SECRET_ENV, KEY)];
    let explain = |cookies: &[&str]| {
        let mut args = vec!["GET", "http://shop.test/x"];
        for c in cookies {
            args.extend(["--cookie", c]);
        }
        let (code, json) = support::explain_json(&config, &env, &args);
        assert_eq!(code, Some(0), "{json}");
        json
    };
    let split = |forced: serde_json::Value| {
        serde_json::json!({
            "cookie": "sy_ab",
            "pools": [{"pool": "a", "weight": 90}, {"pool": "b", "weight": 10}],
            "forced": forced,
        })
    };
    let forced = explain(&["sy_ab=b"]);
    assert_eq!(forced["split"], split("b".into()), "{forced}");
    assert_eq!(forced["pool"], "b");
    assert_eq!(forced["route"], "all");
    for cookies in [&[][..], &["sy_ab=nope"][..]] {
        let drawn = explain(cookies);
        assert_eq!(
            drawn["split"],
            split(serde_json::Value::Null),
            "{cookies:?}: {drawn}"
        );
        assert_eq!(drawn["pool"], serde_json::Value::Null, "{drawn}");
        assert_eq!(drawn["backend"], serde_json::Value::Null, "{drawn}");
    }
    // Forced, and the forced pool's sticky token names the backend.
    let token = support::sticky("b", &b_addrs, KEY, None).token(1, support::unix_now());
    let cookie = format!("sy_b={}", std::str::from_utf8(&token).unwrap());
    let both = explain(&["sy_ab=b", &cookie]);
    assert_eq!(both["split"]["forced"], "b", "{both}");
    assert_eq!(both["backend"], "127.0.0.1:9003", "{both}");

    // The text form says the same.
    let text = |cookie: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["explain", "--config", config.to_str().unwrap()])
            .args(["GET", "http://shop.test/x"])
            .env(SECRET_ENV, KEY);
        if let Some(c) = cookie {
            cmd.args(["--cookie", c]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    let forced = text(Some("sy_ab=b"));
    assert!(forced.contains("sy_ab") && forced.contains("a 90") && forced.contains("b 10"));
    assert!(forced.contains("forces b"), "{forced}");
    assert!(text(None).contains("drawn by weight"));
}
