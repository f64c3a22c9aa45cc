//! Our pages in headless Chromium, driven through chromedriver's W3C WebDriver protocol:
//! the admin page (sign in, see a dead job, redrive it, see it complete) and the
//! customer dashboard end to end (sign in by the emailed link, add a card through the
//! Stripe.js form, subscribe, usage, cancel and resume, sign out), each page checked
//! with axe-core and at a phone's width, and photographed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::wait_for;
use crate::ops::{ADMIN_TOKEN, app_with_admin, create_customer, dead_grant};

pub(crate) struct Browser {
    driver: Child,
    endpoint: String,
    http: reqwest::Client,
    profile: std::path::PathBuf,
}

impl Browser {
    pub(crate) async fn start() -> Self {
        let chromedriver = std::env::var("TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{chromedriver} starts (scripts/test installs chromium-driver): {e}"));
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        wait_for("chromedriver", Duration::from_secs(20), || {
            let (http, status) = (http.clone(), status.clone());
            async move { http.get(&status).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        let profile = std::env::temp_dir().join(format!("rsolv-chromium-{}", uuid::Uuid::new_v4().simple()));
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args }
        }}});
        let session: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let id =
            session["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("a browser session: {session}")).to_owned();
        Self { driver, endpoint: format!("{base}/session/{id}"), http, profile }
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.endpoint));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(response["value"]["error"].is_null(), "webdriver {path}: {response}");
        response["value"].clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    pub(crate) async fn element(&self, css: &str) -> String {
        let found =
            self.call(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css }))).await;
        // A W3C element reference is an object with one (well-known) key.
        found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_owned()
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text }))).await;
    }

    pub(crate) async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    pub(crate) async fn page(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap().to_owned()
    }

    pub(crate) async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap().to_owned()
    }

    /// Runs `script` in the page (not subject to its CSP: WebDriver's own evaluation).
    pub(crate) async fn execute(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    /// As [`execute`](Self::execute), for a script that calls its last argument when done.
    pub(crate) async fn execute_async(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/async", Some(json!({ "script": script, "args": [] }))).await
    }

    /// The window's size, in CSS pixels.
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.call(reqwest::Method::POST, "/window/rect", Some(json!({ "width": width, "height": height }))).await;
    }

    /// A PNG of the viewport, written to `path`.
    pub(crate) async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// The value of a cookie the browser holds for the current page.
    pub(crate) async fn cookie(&self, name: &str) -> Option<String> {
        let cookies = self.call(reqwest::Method::GET, "/cookie", None).await;
        cookies.as_array()?.iter().find(|c| c["name"] == name).and_then(|c| c["value"].as_str()).map(str::to_owned)
    }

    pub(crate) async fn quit(mut self) {
        let _ = self.http.delete(&self.endpoint).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test]
async fn an_operator_signs_in_sees_a_dead_job_and_redrives_it_to_completion() {
    let app = app_with_admin().await;
    let (id, customer) = dead_grant(&app).await;
    create_customer(&app, customer).await;
    let browser = Browser::start().await;

    browser.goto(&app.url("/admin")).await;
    assert!(browser.url().await.ends_with("/admin/login"), "signed-out browsers are sent to sign in");
    browser.type_into("input[name=token]", ADMIN_TOKEN).await;
    browser.click("#sign-in").await;
    let row = format!("id=\"job-{id}\"");
    wait_for("the overview after signing in", Duration::from_secs(10), || async {
        browser.page().await.contains(&row)
    })
    .await;
    let overview = browser.page().await;
    assert!(overview.contains(&format!("id=\"job-{id}\"")), "the dead job is listed");
    assert!(overview.contains("does not exist"), "with its error");

    browser.click(&format!("#job-{id} button.redrive")).await;
    let flash = format!("Job {id}: redrive done");
    wait_for("the page to confirm the redrive", Duration::from_secs(10), || async {
        browser.page().await.contains(&flash)
    })
    .await;

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        browser.goto(&app.url(&format!("/admin/jobs/{id}"))).await;
        if browser.page().await.contains("<td id=\"status\">completed</td>") {
            break;
        }
        assert!(Instant::now() < deadline, "the redriven job did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.balance(customer).await, 7);
    browser.quit().await;
}
