//! A fleet: two `switchyard` processes with one config and one sticky secret behave as one
//! proxy (SPEC "Scale"): a sticky token, a split variant and a hash key that one instance
//! assigned are honoured by the other, as they would be behind an L4 balancer that sends a
//! user's next connection anywhere. An instance with another secret does not honour them.
mod support;

use std::collections::BTreeMap;
use support::*;

const SECRET_ENV: &str = "SY_FLEET_SECRET";

const YAML: &str = r#"
listeners:
  - name: web
    bind: "127.0.0.1:0"
sticky_secret_env: SY_FLEET_SECRET
access_log: off
pools:
  sticky:
    sticky: { cookie: sy, max_age: 1h }
    backends: [{ addr: "{a}" }, { addr: "{b}" }, { addr: "{c}" }]
  hashed:
    balance: cookie_hash
    hash_key: session_id
    backends: [{ addr: "{a}" }, { addr: "{b}" }, { addr: "{c}" }]
  v1:
    backends: [{ addr: "{a}" }]
  v2:
    backends: [{ addr: "{b}" }]
routes:
  - name: sticky
    match: { prefix: /sticky }
    pool: sticky
  - name: hashed
    match: { prefix: /hashed }
    pool: hashed
  - name: split
    match: { prefix: /split }
    split:
      cookie: sy_ab
      pools: [{ pool: v1, weight: 50 }, { pool: v2, weight: 50 }]
"#;

async fn via(bin: &Binary, path: &str, cookie: Option<String>) -> Got {
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
    get_with(&client(), &bin.url(path), &headers).await
}

/// New users on `bin` until `want` backends answered: each backend's `cookie` value.
async fn draw(bin: &Binary, path: &str, cookie: &str, want: usize) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let got = via(bin, path, None).await;
        let value = got.cookie(cookie).expect("a new user gets the cookie");
        seen.insert(got.header("x-backend").to_string(), value.to_string());
        if seen.len() == want {
            break;
        }
    }
    assert_eq!(seen.len(), want, "{path}: every backend was drawn");
    seen
}

#[tokio::test]
async fn two_instances_with_one_config_and_secret_decide_alike() {
    let backends = [
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let addrs: Vec<(&str, std::net::SocketAddr)> = ["a", "b", "c"]
        .into_iter()
        .zip(backends.iter().map(|b| b.addr))
        .collect();
    std::fs::write(&path, render(YAML, &addrs)).unwrap();
    let one = Binary::start(&path, &[(SECRET_ENV, "fleet-key")], 1);
    let two = Binary::start(&path, &[(SECRET_ENV, "fleet-key")], 1);
    let other = Binary::start(&path, &[(SECRET_ENV, "another-key")], 1);

    // Sticky: every backend's token from one is a hit on two, with no new cookie.
    let tokens = draw(&one, "/sticky", "sy", 3).await;
    for (backend, token) in &tokens {
        for _ in 0..3 {
            let got = via(&two, "/sticky", Some(format!("sy={token}"))).await;
            assert_eq!(
                got.header("x-backend"),
                backend,
                "token of {backend} on two"
            );
            assert_eq!(got.cookie("sy"), None, "a hit sets no cookie");
        }
        // Another secret: not its token, so a new one.
        let got = via(&other, "/sticky", Some(format!("sy={token}"))).await;
        assert!(
            got.cookie("sy").is_some(),
            "another key re-issues the token"
        );
    }

    // Split: the variant one picked stays on two (v1 is backend a, v2 is b).
    let variants = draw(&one, "/split", "sy_ab", 2).await;
    for (backend, variant) in &variants {
        for _ in 0..3 {
            let got = via(&two, "/split", Some(format!("sy_ab={variant}"))).await;
            assert_eq!(got.header("x-backend"), backend, "variant {variant} on two");
        }
    }

    // cookie_hash: the same key, the same backend, whichever instance.
    let mut spread = BTreeMap::new();
    for k in 0..24 {
        let cookie = format!("session_id=user-{k}");
        let a = via(&one, "/hashed", Some(cookie.clone())).await;
        let b = via(&two, "/hashed", Some(cookie)).await;
        assert_eq!(a.header("x-backend"), b.header("x-backend"), "key user-{k}");
        *spread.entry(a.header("x-backend").to_string()).or_insert(0) += 1;
    }
    assert!(spread.len() >= 2, "keys spread over backends: {spread:?}");
}
