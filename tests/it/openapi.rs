//! `GET /api/openapi.json` and `GET /api/docs`: the document has the OpenAPI 3.0 structure, is
//! the one the route registration collects (REST routes can only be registered with their
//! documentation: see `switchboard::http::Routes`), every documented operation is a route the
//! server answers, and the page loads nothing from elsewhere. The full validation
//! (openapi-spec-validator) and schemathesis run in the `api` step of scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::TestServer;
use serde_json::Value;
use std::collections::BTreeSet;

#[actix_web::test]
async fn the_document_covers_every_route_and_has_the_openapi_3_structure() {
    let s = TestServer::start().await;
    let (status, doc) = s.get("/api/openapi.json", None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0."));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().unwrap();

    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'), "{path}");
        for (method, op) in item.as_object().unwrap() {
            assert!(
                ["get", "head", "post", "put", "patch", "delete"].contains(&method.as_str()),
                "{method} {path}"
            );
            documented.insert((method.clone(), path.clone()));
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path} has responses");
            for (code, response) in responses {
                assert!(code.len() == 3 && code.parse::<u16>().is_ok(), "{code}");
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {code}"
                );
            }
            let names: Vec<(String, String)> = op["parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| (p["in"].to_string(), p["name"].to_string()))
                .collect();
            let unique: BTreeSet<_> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{method} {path}: {names:?}");
            // Path parameters are declared exactly for the template's segments.
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            let template: BTreeSet<String> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_owned)
                .collect();
            assert_eq!(declared, template, "{method} {path}");
        }
    }
    // The realtime transports are described, not listed.
    let description = doc["info"]["description"].as_str().unwrap();
    assert!(description.contains("`GET /ws`") && description.contains("`/socket.io/`"));
    assert!(!paths.contains_key("/ws") && !paths.contains_key("/socket.io/"));
    // Served as generated from the registration.
    assert_eq!(doc, switchboard::http::openapi::document());
    assert!(documented.contains(&("post".to_owned(), "/api/auth/login".to_owned())));
    assert!(documented.contains(&("post".to_owned(), "/auth/login".to_owned())));

    // Every documented path answers something other than the unknown-route 404.
    let (status, body) = s.get("/api/users/profile", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("missing_token"))
    );

    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for part in text.split("#/components/schemas/").skip(1) {
        let name: String = part.chars().take_while(|c| *c != '"').collect();
        assert!(schemas.contains_key(&name), "dangling $ref {name}");
    }
    let error: &Value = &schemas["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
}

/// Status and `Content-Length` of a HEAD request.
async fn head(s: &TestServer, path: &str) -> (u16, Option<String>) {
    let res = s.client.head(s.url(path)).send().await.unwrap();
    let length = res
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status().as_u16(), length)
}

/// Every documented operation is served: a request to it (path parameters filled in, no token,
/// no body) gets an answer other than the unknown-route 404 that an unregistered method or path
/// gets (for HEAD, whose answers have no body, one of another length).
#[actix_web::test]
async fn every_documented_operation_is_a_registered_route() {
    let s = TestServer::start().await;
    let (status, body) = s.call("PATCH", "/api/ping", None, None).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (404, Some("no such route"))
    );
    let unrouted_head = head(&s, "/api/ping/nowhere").await;
    assert_eq!(unrouted_head.0, 404);
    let doc = switchboard::http::openapi::document();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let unrouted = if method == "head" {
                head(&s, &concrete).await == unrouted_head
            } else {
                let (status, body) = s.call(&method.to_uppercase(), &concrete, None, None).await;
                status == 404 && body["error"]["message"] == "no such route"
            };
            assert!(!unrouted, "{method} {path} is documented but not served");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
}

#[actix_web::test]
async fn the_docs_page_is_self_contained_html() {
    let s = TestServer::start().await;
    let mut res = s.client.get(s.url("/api/docs")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ctype = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let csp = res
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    assert!(html.contains("/api/openapi.json"));
    for external in ["src=\"http", "href=\"http", "@import", "src=\"//"] {
        assert!(
            !html.contains(external),
            "loads something external: {external}"
        );
    }
}

/// `OPENAPI_DUMP=FILE cargo test --test it -- openapi::dump` writes the document to FILE (for
/// scripts/openapi-compare.py); without the variable it only checks that the document builds.
#[test]
fn dump() {
    let doc = switchboard::http::openapi::document();
    if let Some(path) = std::env::var_os("OPENAPI_DUMP") {
        std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
}
