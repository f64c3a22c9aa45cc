//! `simulate-webhook`: builds a realistic event of one of the five types for a customer,
//! signs it with the first configured webhook secret, and posts it to the API.

use common::config::Settings;
use common::stripe::events::Handled;
use common::stripe::signature;
use common::stripe::simulated::Simulated;

use crate::Error;
use crate::cli::{find_customer, flag};

pub async fn run(pool: &sqlx::PgPool, settings: &Settings, args: &[String]) -> Result<(), Error> {
    let usage = "usage: simulate-webhook TYPE --customer EMAIL|ID [--url URL] [--status S] [--cancel-at-period-end] [--invoice ID] [--event-id ID]";
    let kind = args.first().and_then(|t| Handled::parse(t)).ok_or_else(|| {
        let types: Vec<_> = Handled::ALL.iter().map(|h| h.as_str()).collect();
        format!("{usage}\nTYPE is one of {}", types.join(", "))
    })?;
    let who = flag(args, "--customer").ok_or(usage)?;
    let customer = find_customer(pool, who).await?;
    let stripe_customer = customer.stripe_customer_id.clone().ok_or("the customer has no Stripe customer yet")?;
    let subscription = customer
        .stripe_subscription_id
        .clone()
        .unwrap_or_else(|| format!("sub_sim_{}", &uuid::Uuid::new_v4().simple().to_string()[..14]));
    let mut event = Simulated::new(
        &stripe_customer,
        &subscription,
        &settings.prices.pro_price_id,
        settings.prices.pro_monthly_cents,
    );
    event.currency = settings.prices.currency.clone();
    if let Some(status) = flag(args, "--status") {
        event.status = status.to_owned();
    }
    event.cancel_at_period_end = args.iter().any(|a| a == "--cancel-at-period-end");
    if let Some(invoice) = flag(args, "--invoice") {
        event.invoice_id = invoice.to_owned();
    }
    if let Some(id) = flag(args, "--event-id") {
        event.event_id = id.to_owned();
    }
    let secret = settings.webhook_secrets.first().ok_or("STRIPE_WEBHOOK_SECRET is not set")?;
    let body = serde_json::to_vec(&event.event(kind))?;
    let header = signature::sign(&body, secret.expose(), chrono_now());
    let url = flag(args, "--url").map(str::to_owned).unwrap_or_else(|| format!("http://{}", settings.bind_addr));
    let response = reqwest::Client::new()
        .post(format!("{}/api/webhooks/stripe", url.trim_end_matches('/')))
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(body)
        .send()
        .await?;
    let status = response.status();
    println!("{} {} → {} {}", kind.as_str(), event.event_id, status.as_u16(), response.text().await?);
    if status.is_success() { Ok(()) } else { Err("the API refused the event".into()) }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}
