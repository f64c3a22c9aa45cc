//! The admin page in headless Chromium, driven through chromedriver's W3C WebDriver
//! protocol: sign in, see a dead job, redrive it, see it complete.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::wait_for;
use crate::ops::{ADMIN_TOKEN, app_with_admin, create_customer, dead_grant};

struct Browser {
    driver: Child,
    endpoint: String,
    http: reqwest::Client,
    profile: std::path::PathBuf,
}

impl Browser {
    async fn start() -> Self {
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

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.endpoint));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(response["value"]["error"].is_null(), "webdriver {path}: {response}");
        response["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn element(&self, css: &str) -> String {
        let found =
            self.call(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css }))).await;
        // A W3C element reference is an object with one (well-known) key.
        found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text }))).await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    async fn page(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap().to_owned()
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap().to_owned()
    }

    async fn quit(mut self) {
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
