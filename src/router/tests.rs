use super::*;
use std::path::Path;

/// Routes from YAML (one pool `p`), so tests read like the config users write.
fn router(routes: &str) -> (Router, Vec<String>) {
    let yaml = format!(
        "listeners: [{{name: web, bind: \"127.0.0.1:0\"}}]\n\
         pools: {{p: {{backends: [{{addr: \"127.0.0.1:1\"}}]}}}}\n\
         routes:\n{routes}"
    );
    let loaded = crate::config::parse(Path::new("t.yaml"), &yaml).expect("valid test config");
    let names = loaded
        .config
        .routes
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    (
        Router::compile(&loaded.config.routes).expect("compiles"),
        names,
    )
}

fn find(r: &(Router, Vec<String>), req: http::Request<()>) -> Option<&str> {
    let (parts, ()) = req.into_parts();
    let host = parts
        .headers
        .get("host")
        .map(|h| h.to_str().unwrap().to_string())
        .unwrap_or_default();
    r.0.find(host.as_bytes(), parts.uri.path(), &parts)
        .map(|i| r.1[i].as_str())
}

fn get(host: &str, path: &str) -> http::Request<()> {
    http::Request::get(path)
        .header("host", host)
        .body(())
        .unwrap()
}

#[test]
fn prefix_does_not_match_sibling_segment() {
    let r = router("  - {name: pay, match: {prefix: /api/payments}, pool: p}\n");
    assert_eq!(find(&r, get("x", "/api/payments")), Some("pay"));
    assert_eq!(find(&r, get("x", "/api/payments/")), Some("pay"));
    assert_eq!(find(&r, get("x", "/api/payments/1/refund")), Some("pay"));
    assert_eq!(find(&r, get("x", "/api/paymentsX")), None);
    assert_eq!(find(&r, get("x", "/api")), None);
}

#[test]
fn longer_prefix_wins_and_shorter_catches_the_rest() {
    let r = router(
        "  - {name: root, match: {prefix: /}, pool: p}\n\
         \x20 - {name: api, match: {prefix: /api}, pool: p}\n\
         \x20 - {name: users, match: {prefix: /api/users/}, pool: p}\n",
    );
    assert_eq!(find(&r, get("x", "/api/users/7")), Some("users"));
    assert_eq!(find(&r, get("x", "/api/users")), Some("users"));
    assert_eq!(find(&r, get("x", "/api/usersX")), Some("api"));
    assert_eq!(find(&r, get("x", "/apix")), Some("root"));
    assert_eq!(find(&r, get("x", "/")), Some("root"));
}

#[test]
fn exact_beats_parameter_beats_prefix() {
    let r = router(
        "  - {name: prefix, match: {prefix: /users}, pool: p}\n\
         \x20 - {name: param, match: {path: \"/users/{id}\"}, pool: p}\n\
         \x20 - {name: exact, match: {path: /users/me}, pool: p}\n",
    );
    assert_eq!(find(&r, get("x", "/users/me")), Some("exact"));
    assert_eq!(find(&r, get("x", "/users/42")), Some("param"));
    assert_eq!(find(&r, get("x", "/users/42/orders")), Some("prefix"));
}

#[test]
fn parameter_patterns_with_different_names_share_an_entry() {
    let r = router(
        "  - {name: a, match: {path: \"/u/{id}\", methods: [POST]}, pool: p}\n\
         \x20 - {name: b, match: {path: \"/u/{name}\"}, pool: p}\n",
    );
    assert_eq!(find(&r, get("x", "/u/1")), Some("b"));
}

#[test]
fn failed_conditions_fall_back_to_less_specific_routes() {
    let r = router(
        "  - {name: all, match: {prefix: /}, pool: p}\n\
         \x20 - {name: api, match: {prefix: /api}, pool: p}\n\
         \x20 - {name: canary, match: {prefix: /api/v1, headers: {x-canary: \"1\"}}, pool: p}\n\
         \x20 - {name: post, match: {path: \"/api/v1/{x}\", methods: [POST]}, pool: p}\n\
         \x20 - {name: beta, match: {path: \"/api/{*rest}\", cookies: {beta: \"yes\"}}, pool: p}\n",
    );
    assert_eq!(find(&r, get("x", "/api/v1/a")), Some("api"));
    let canary = http::Request::get("/api/v1/a")
        .header("x-canary", "1")
        .body(())
        .unwrap();
    assert_eq!(find(&r, canary), Some("canary"));
    let post = http::Request::post("/api/v1/a").body(()).unwrap();
    assert_eq!(find(&r, post), Some("post"));
    let beta = http::Request::get("/api/v1/a")
        .header("cookie", "a=b; beta=yes")
        .body(())
        .unwrap();
    assert_eq!(find(&r, beta), Some("beta"));
    let wrong = http::Request::get("/api/v1/a")
        .header("cookie", "beta=no")
        .body(())
        .unwrap();
    assert_eq!(find(&r, wrong), Some("api"));
    assert_eq!(find(&r, get("x", "/other")), Some("all"));
}

#[test]
fn same_match_routes_are_tried_in_file_order() {
    let r = router(
        "  - {name: gets, match: {prefix: /a, methods: [GET, HEAD]}, pool: p}\n\
         \x20 - {name: rest, match: {prefix: /a}, pool: p}\n",
    );
    assert_eq!(find(&r, get("x", "/a")), Some("gets"));
    let del = http::Request::delete("/a").body(()).unwrap();
    assert_eq!(find(&r, del), Some("rest"));
}

#[test]
fn host_tiers_exact_then_wildcard_then_any() {
    let r = router(
        "  - {name: any, match: {prefix: /}, pool: p}\n\
         \x20 - {name: wild, match: {host: \"*.example.com\", prefix: /}, pool: p}\n\
         \x20 - {name: shop, match: {host: shop.example.com, prefix: /cart}, pool: p}\n",
    );
    assert_eq!(find(&r, get("shop.example.com", "/cart/1")), Some("shop"));
    // The exact tier has no route for /other, so the request falls through to the wildcard.
    assert_eq!(find(&r, get("shop.example.com", "/other")), Some("wild"));
    assert_eq!(find(&r, get("api.example.com", "/")), Some("wild"));
    // One label exactly: neither the bare parent nor two labels.
    assert_eq!(find(&r, get("example.com", "/")), Some("any"));
    assert_eq!(find(&r, get("a.b.example.com", "/")), Some("any"));
}

#[test]
fn nothing_matching_is_a_miss() {
    let r = router("  - {name: a, match: {host: a.test, prefix: /}, pool: p}\n");
    assert_eq!(find(&r, get("b.test", "/")), None);
}

#[test]
fn patterns_are_renamed_by_position() {
    assert_eq!(pattern("/u/{id}/f/{*rest}").unwrap(), "/u/{p0}/f/{*p1}");
    assert_eq!(pattern("/lit/{{x}}").unwrap(), "/lit/{{x}}");
    assert!(pattern("/u/{").is_err());
    assert!(pattern("/u/{}").is_err());
    assert!(pattern("/u/{*rest}/x").is_err());
}
