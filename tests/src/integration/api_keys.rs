//! API key management, and no route showing one customer another's data.

use serde_json::{Value, json};

use crate::helpers::TestApp;

#[tokio::test]
async fn keys_are_created_listed_without_the_secret_and_revoked_at_once() {
    let app = TestApp::with_worker().await;
    let (_, first) = app.onboarded_customer("keys@example.com").await;

    let created = app.post_with_key("/api/v1/api-keys", &first, &json!({ "name": "ci" })).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let second = created["api_key"].as_str().unwrap().to_owned();
    assert!(second.starts_with("rsolv_") && second != first);
    assert_eq!(app.get_with_key("/api/v1/customers/me", &second).await.status(), 200, "usable at once");

    let listed = app.get_with_key("/api/v1/api-keys", &second).await.text().await.unwrap();
    assert!(!listed.contains(&second) && !listed.contains(&first), "listings never show a key");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<&str> = listed["api_keys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ci", "default"]);

    let id = created["id"].as_str().unwrap();
    let revoked =
        app.client.delete(app.url(&format!("/api/v1/api-keys/{id}"))).header("x-api-key", &first).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    let refused = app.get_with_key("/api/v1/customers/me", &second).await;
    assert_eq!(refused.status(), 401, "a revoked key is refused at once");
    assert_eq!(app.get_with_key("/api/v1/customers/me", &first).await.status(), 200);

    let blank = app.post_with_key("/api/v1/api-keys", &first, &json!({ "name": " " })).await;
    assert_eq!(blank.status(), 422);
}

#[tokio::test]
async fn no_route_shows_or_changes_another_customers_data() {
    let app = TestApp::with_worker().await;
    let (alice, alice_key) = app.onboarded_customer("alice@example.com").await;
    let (_, bob_key) = app.onboarded_customer("bob@example.com").await;
    // Alice's own things.
    let alice_keys: Value = app.get_with_key("/api/v1/api-keys", &alice_key).await.json().await.unwrap();
    let alice_key_id = alice_keys["api_keys"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.post_with_key("/api/v1/usage/fixes", &alice_key, &json!({ "fix_id": "alice-fix", "repo": "r" }))
            .await
            .status(),
        202
    );
    crate::helpers::wait_for_kind_finished(&app.db.pool, "record_usage", std::time::Duration::from_secs(10)).await;

    let me: Value = app.get_with_key("/api/v1/customers/me", &bob_key).await.json().await.unwrap();
    assert_eq!(me["email"], "bob@example.com");
    assert_eq!(app.get_with_key("/api/v1/usage/fixes/alice-fix", &bob_key).await.status(), 404);
    let bobs: Value = app.get_with_key("/api/v1/api-keys", &bob_key).await.json().await.unwrap();
    assert!(!bobs.to_string().contains(&alice_key_id));
    let revoke = app
        .client
        .delete(app.url(&format!("/api/v1/api-keys/{alice_key_id}")))
        .header("x-api-key", &bob_key)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 404, "Bob cannot revoke Alice's key");
    assert_eq!(app.get_with_key("/api/v1/customers/me", &alice_key).await.status(), 200);
    let alices =
        common::queue::testing::all_jobs(&app.db.pool).await.into_iter().filter(|job| job.customer_id == Some(alice));
    for id in alices.map(|job| job.id) {
        // Billing operation status URLs are per customer too (see billing tests); any job id of Alice's is 404 to Bob.
        assert_eq!(app.get_with_key(&format!("/api/v1/billing/operations/{id}"), &bob_key).await.status(), 404);
    }
}

#[tokio::test]
async fn the_live_key_cap_holds_under_concurrent_creates() {
    let app = TestApp::with_worker().await;
    let (customer, key) = app.onboarded_customer("cap@example.com").await;
    let bodies: Vec<Value> = (0..30).map(|i| json!({ "name": format!("k{i}") })).collect();
    let creates = bodies.iter().map(|body| app.post_with_key("/api/v1/api-keys", &key, body));
    let mut created = 0;
    for response in futures::future::join_all(creates).await {
        match response.status().as_u16() {
            201 => created += 1,
            409 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "TOO_MANY_KEYS");
            }
            other => panic!("a create answered {other}"),
        }
    }
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE customer_id = $1 AND revoked_at IS NULL")
        .bind(customer)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(live, 20, "the onboarding key and 19 more");
    assert_eq!(created, 19);
}

#[tokio::test]
async fn a_customer_who_never_saw_its_key_gets_a_new_one_from_support_on_the_audit_log() {
    let app = TestApp::with_worker().await;
    // The onboarding's answer (the only copy of the key) is lost on its way.
    let (customer, _lost) = app.onboarded_customer("lost-answer@example.com").await;
    let issued = crate::helpers::our_command("rsolv-worker", &app.db.url)
        .args(["issue-key", "--customer", "lost-answer@example.com", "--reason", "ticket 88: onboarding answer lost"])
        .env("USER", "support-ada")
        .output()
        .unwrap();
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let stdout = String::from_utf8(issued.stdout).unwrap();
    let key = stdout.lines().last().unwrap().trim();
    let me = app.get_with_key("/api/v1/customers/me", key).await;
    assert_eq!(me.status(), 200, "the issued key works");
    let audit: (String, String, Option<String>) =
        sqlx::query_as("SELECT actor, target, reason FROM audit_log WHERE action = 'issue_api_key'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        audit,
        ("cli:support-ada".into(), format!("customer:{customer}"), Some("ticket 88: onboarding answer lost".into()))
    );
    let logged: String =
        sqlx::query_scalar("SELECT detail::text FROM audit_log").fetch_one(&app.db.pool).await.unwrap();
    assert!(!logged.contains(key), "the audit log never holds the key");
}

/// Where the server sends no email a key is the only way into the dashboard: the API
/// does not revoke a customer's last live key (409 `LAST_KEY`), and does once there is
/// another.
#[tokio::test]
async fn with_email_off_the_last_live_key_is_not_revoked() {
    let app = TestApp::with_worker().await;
    assert!(app.settings.email.is_none());
    let (customer_id, only) = app.onboarded_customer("last@example.com").await;
    let only_id = common::db::api_keys::list(&app.db.pool, customer_id).await.unwrap()[0].id;
    let delete = |id: uuid::Uuid, key: String| {
        let request = app.client.delete(app.url(&format!("/api/v1/api-keys/{id}"))).header("x-api-key", key);
        async move { request.send().await.unwrap() }
    };
    let refused = delete(only_id, only.clone()).await;
    assert_eq!(refused.status(), 409);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "LAST_KEY", "{body}");
    assert_eq!(app.get_with_key("/api/v1/customers/me", &only).await.status(), 200, "still live");

    let created = app.post_with_key("/api/v1/api-keys", &only, &json!({ "name": "next" })).await;
    let next = created.json::<Value>().await.unwrap()["api_key"].as_str().unwrap().to_owned();
    assert_eq!(delete(only_id, next.clone()).await.status(), 200);
    assert_eq!(app.get_with_key("/api/v1/customers/me", &only).await.status(), 401);
}

/// Two revocations at once of a customer's last two keys leave one: the second counts the
/// live keys only once the first has committed. Here the first holds the revocations'
/// lock with its key revoked but not committed; without the lock the second would count
/// both keys as live and revoke its own, leaving none.
#[tokio::test]
async fn two_revocations_at_once_of_the_last_two_keys_leave_one() {
    use common::db::api_keys::{self, Revocation};
    let app = TestApp::api_only().await;
    let seeded = common::factories::create(
        &app.db.pool,
        &app.settings,
        common::factories::CustomerState::Pro,
        common::domain::Email::parse("two@example.com").unwrap(),
    )
    .await
    .unwrap();
    let customer = seeded.customer_id;
    let key = common::domain::ApiKey::generate();
    let mut tx = app.db.pool.begin().await.unwrap();
    api_keys::create(&mut tx, customer, "second", &key.hash(), &key.display_prefix(), 5, None).await.unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<uuid::Uuid> = api_keys::list(&app.db.pool, customer).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(ids.len(), 2);

    let mut first = app.db.pool.begin().await.unwrap();
    sqlx::query(api_keys::REVOCATIONS_LOCK).bind(customer).execute(&mut *first).await.unwrap();
    assert!(api_keys::revoke(&mut *first, customer, ids[0]).await.unwrap());
    let pool = app.db.pool.clone();
    let second = tokio::spawn(async move { api_keys::revoke_unless_last(&pool, customer, ids[1]).await.unwrap() });
    // The second waits on the lock while the first is open.
    crate::helpers::wait_for("the second revocation to wait on the lock", std::time::Duration::from_secs(10), || {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'
                   AND query LIKE '%api_keys:%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        }
    })
    .await;
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), Revocation::LastKey);
    let live = api_keys::list(&app.db.pool, customer).await.unwrap().iter().filter(|k| k.revoked_at.is_none()).count();
    assert_eq!(live, 1);
}
