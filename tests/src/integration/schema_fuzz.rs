//! schemathesis (PyPI) generates requests from the served OpenAPI document and runs
//! every check it has (`--checks all`): no server error, every status, content type,
//! header and body as documented, schema-valid requests accepted and schema-invalid ones
//! refused, undeclared methods answered 405 with `Allow`, authentication not ignored.
//! The run must report no failure.

use std::process::Command;

use crate::helpers::{TestApp, WEBHOOK_SECRET};

const ADMIN_TOKEN: &str = "admin-token-for-the-fuzzer-0123456789";

#[tokio::test]
async fn every_schemathesis_check_passes_against_the_served_document() {
    let limits = "100000";
    let app = TestApp::spawn_billing(
        &[
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            // The fuzzer sends thousands of requests a minute: limits would turn most
            // of them into 429s, which prove nothing about the routes.
            ("RATE_LIMIT_ONBOARD_PER_MINUTE", limits),
            ("RATE_LIMIT_USAGE_PER_MINUTE", limits),
            ("RATE_LIMIT_API_PER_MINUTE", limits),
            ("RATE_LIMIT_ANONYMOUS_PER_MINUTE", limits),
        ],
        true,
    )
    .await;
    let (_, key, _) = app.stripe_customer("fuzz@example.com").await;
    // With a card on file every billing route can succeed (subscribing needs one).
    app.add_card(&key, "pm_card_visa").await;
    let python =
        std::path::PathBuf::from(std::env::var("TEST_PYTHON").expect("TEST_PYTHON is unset: run scripts/test"));
    let mut schemathesis = Command::new(python.with_file_name("schemathesis"));
    schemathesis
        .args(["--config-file", concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/schemathesis.toml")])
        .args(["run", &app.url("/api/openapi.json"), "--checks", "all"])
        // A fixed seed keeps CI reproducible; to explore, set RSOLV_FUZZ_SEED and
        // RSOLV_FUZZ_EXAMPLES. One worker: hypothesis' lambda descriptions are not
        // thread-safe (a runtime error in the fuzzer, not a finding).
        .args(["--max-examples", &std::env::var("RSOLV_FUZZ_EXAMPLES").unwrap_or_else(|_| "30".into())])
        .args(["--seed", &std::env::var("RSOLV_FUZZ_SEED").unwrap_or_else(|_| "20261201".into())])
        .args(["--workers", "1"])
        // Hooks that make each request one a real client would send (see the file).
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz"))
        .env("RSOLV_FUZZ_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("RSOLV_FUZZ_API_KEY", &key)
        .env("RSOLV_FUZZ_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("NO_COLOR", "1");
    // Waited for off the test's runtime: the API's group commits run on it.
    let output = tokio::task::spawn_blocking(move || schemathesis.output())
        .await
        .unwrap()
        .expect("schemathesis runs (scripts/test installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every documented operation was exercised.
    let documented: serde_json::Value =
        app.client.get(app.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    let operations: usize =
        documented["paths"].as_object().unwrap().values().map(|item| item.as_object().unwrap().len()).sum();
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "schemathesis tested all {operations} operations:\n{report}"
    );
}
