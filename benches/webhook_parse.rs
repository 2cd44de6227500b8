//! Per-delivery CPU of the webhook path's pure stages, on the fixture that `benches/webhooks.sh`
//! sends (issues/labeled, 14 KB): the HMAC check, the routing read (our borrowed view), and —
//! for comparison — octocrab's full webhook model and a plain `serde_json::Value`.
//!
//! `cargo bench --bench webhook_parse`. Needs ../shared/fixtures (skips without it).

use std::hint::black_box;
use std::time::{Duration, Instant};

use agent_orchestrator::github::{routing, webhook};

const ROUNDS: u32 = 5_000;

fn per_call(what: &str, mut f: impl FnMut()) {
    for _ in 0..ROUNDS / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    let each: Duration = start.elapsed() / ROUNDS;
    println!("{what:<48} {:>8.1} µs", each.as_secs_f64() * 1e6);
}

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/fixtures/github-webhooks/issues/labeled.payload.json"
    );
    let Ok(body) = std::fs::read(path) else {
        println!("skipped: no {path} (../shared/fixtures missing)");
        return;
    };
    let secret = webhook::Secret::new(b"peer-secret".to_vec());
    let mut headers = axum::http::HeaderMap::new();
    let signature = webhook::sign(b"peer-secret", &body);
    for (name, value) in [
        (webhook::SIGNATURE_HEADER, signature.as_str()),
        (webhook::EVENT_HEADER, "issues"),
        (webhook::DELIVERY_HEADER, "bench-1"),
    ] {
        match value.parse() {
            Ok(v) => {
                headers.insert(name, v);
            }
            Err(e) => {
                println!("bad header {name}: {e}");
                return;
            }
        }
    }
    let bytes = axum::body::Bytes::from(body.clone());
    println!(
        "issues/labeled, {} bytes, {ROUNDS} rounds each:",
        body.len()
    );
    per_call("HMAC-SHA256 check (webhook::verify)", || {
        black_box(webhook::verify(&secret, &headers, bytes.clone()).is_ok());
    });
    per_call("routing read (routing::extract, borrowed view)", || {
        black_box(routing::extract("issues", &body).is_ok());
    });
    per_call("octocrab WebhookEvent::try_from_header_and_body", || {
        black_box(routing::facts_from_model("issues", &body).is_ok());
    });
    per_call("serde_json::Value", || {
        black_box(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    });
}
