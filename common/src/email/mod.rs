//! Email: sequences as data, templates, unsubscribe tokens and the SMTP transport.
//!
//! # Guide
//!
//! A sequence starts with `jobs::SendEmailStep::schedule`, which enqueues one
//! `send_email_step` job per step at its time, in the caller's transaction
//! (provisioning starts onboarding; a failed invoice starts dunning). This module
//! knows nothing of jobs: it renders and sends. The step job re-checks the stop condition when it
//! runs, renders the step and sends it through [`Mailer`].
//!
//! # Delivery guarantee
//!
//! At most once per customer, sequence and step (and occurrence, for dunning): the
//! `email_deliveries` row moves `pending → sending → sent`, and only the run that moves
//! it to `sending` talks to SMTP. Before that, the SMTP server is reached with a probe;
//! if it cannot be, the step is `failed` and retried with backoff (so an SMTP outage
//! delays email, it does not lose or double it). A server's refusal (4xx) is retried,
//! a permanent refusal (5xx) is `rejected`. If the worker dies during the SMTP
//! conversation, or the connection breaks in it, we cannot know whether the server
//! accepted the message: the step is marked `uncertain` and is not sent again. A run
//! that finds a step `sending` snoozes until the conversation must have ended
//! ([`SENDING_DEADLINE`]); only a step still `sending` after that is `uncertain`.

pub mod sequences;
pub mod unsubscribe;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::Environment;
use serde_json::Value;
use uuid::Uuid;

use crate::config::{EmailSettings, Settings};
use sequences::Step;

/// The longest an SMTP conversation can last (the transport's timeout, with room):
/// a step `sending` for longer belongs to a run that stopped.
pub const SENDING_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
const SMTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A rendered email.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
    pub unsubscribe_url: String,
}

/// A step's template did not render: which one (a step's text, or a page), and why.
#[derive(Debug, thiserror::Error)]
#[error("template {template}: {source}")]
pub struct RenderError {
    template: &'static str,
    #[source]
    source: minijinja::Error,
}

/// The SMTP settings do not make a mailer.
#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("SMTP_URL is invalid: {0}")]
    SmtpUrl(#[source] lettre::transport::smtp::Error),
    #[error("EMAIL_FROM is invalid: {0}")]
    From(#[source] lettre::address::AddressError),
}

fn templates() -> &'static Environment<'static> {
    static TEMPLATES: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut env = Environment::new();
        env.add_template("email.html", include_str!("templates/email.html")).expect("the HTML template parses");
        env.add_template("email.txt", include_str!("templates/email.txt")).expect("the text template parses");
        env
    })
}

/// Where a step's button leads: the dashboard's pages are ours (`PUBLIC_BASE_URL`), the
/// rest (docs, changelog) the product site's (`PRODUCT_URL`).
fn action_url(settings: &Settings, path: &str) -> String {
    match path.starts_with("/dashboard") {
        true => format!("{}{path}", settings.public_base_url),
        false => format!("{}{path}", settings.product_url),
    }
}

/// Renders a step for a customer.
pub fn render(
    settings: &Settings,
    step: &Step,
    customer_id: Uuid,
    name: &str,
    vars: &Value,
) -> Result<Rendered, RenderError> {
    let env = templates();
    let mut context = match vars {
        Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    context.insert("name".into(), Value::from(name));
    // The numbers a step quotes come from configuration, never from its text.
    for (key, value) in offer(settings) {
        context.entry(key).or_insert(value);
    }
    let context = minijinja::Value::from(minijinja::value::Serde(Value::Object(context)));
    let fill =
        |text: &str| env.render_str(text, &context).map_err(|source| RenderError { template: "of the step", source });
    let paragraphs = step.paragraphs.iter().map(|p| fill(p)).collect::<Result<Vec<_>, _>>()?;
    let token = unsubscribe::token(&settings.unsubscribe_secret, customer_id);
    let unsubscribe_url = format!("{}/email/unsubscribe?token={token}", settings.public_base_url);
    let page = minijinja::context! {
        subject => step.subject,
        heading => fill(step.heading)?,
        name => name,
        paragraphs => paragraphs,
        action_label => step.action.0,
        action_url => action_url(settings, step.action.1),
        product_url => &settings.product_url,
        dashboard_url => format!("{}/dashboard", settings.public_base_url),
        unsubscribe_url => &unsubscribe_url,
    };
    Ok(Rendered {
        subject: step.subject.to_owned(),
        html: render_page(env, "email.html", &page)?,
        text: render_page(env, "email.txt", &page)?,
        unsubscribe_url,
    })
}

/// The credits and prices of the offer, as the steps' text quotes them.
fn offer(settings: &Settings) -> [(String, Value); 5] {
    let (credits, prices) = (&settings.credits, &settings.prices);
    let money = |cents: i64| match cents % 100 {
        0 => format!("{} {}", cents / 100, prices.currency.to_uppercase()),
        rest => format!("{}.{rest:02} {}", cents / 100, prices.currency.to_uppercase()),
    };
    [
        ("trial_credits".into(), Value::from(credits.trial_signup)),
        ("billing_credits".into(), Value::from(credits.billing_added)),
        ("pro_credits".into(), Value::from(credits.pro_invoice)),
        ("pro_price".into(), Value::from(format!("{} a month", money(prices.pro_monthly_cents)))),
        ("fix_price".into(), Value::from(money(prices.fix_payg_cents))),
    ]
}

fn render_page(env: &Environment<'_>, name: &'static str, page: &minijinja::Value) -> Result<String, RenderError> {
    env.get_template(name).and_then(|t| t.render(page)).map_err(|source| RenderError { template: name, source })
}

/// The dashboard's sign-in email: transactional (sent whatever the customer's email
/// preferences, with no unsubscribe link), its one button the one-time `link`.
pub fn render_sign_in(settings: &Settings, name: &str, link: &str) -> Result<Rendered, RenderError> {
    let minutes = crate::db::sign_in_links::LINK_TTL.as_secs() / 60;
    let page = minijinja::context! {
        subject => "Your RSOLV sign-in link",
        heading => "Sign in to your dashboard",
        name => name,
        paragraphs => vec![
            format!("This link signs you in to your RSOLV dashboard. It works once, for {minutes} minutes."),
            "If you did not ask to sign in, ignore this email: nothing changes without the link.".to_owned(),
        ],
        action_label => "Sign in",
        action_url => link,
        product_url => &settings.product_url,
        dashboard_url => format!("{}/dashboard", settings.public_base_url),
        transactional => true,
    };
    let env = templates();
    Ok(Rendered {
        subject: "Your RSOLV sign-in link".to_owned(),
        html: render_page(env, "email.html", &page)?,
        text: render_page(env, "email.txt", &page)?,
        unsubscribe_url: String::new(),
    })
}

/// Why a message was not (known to be) delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server was not reached or refused for now: nothing was accepted, retry.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The server refused the message for good.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The conversation broke after it began: the server may have accepted it.
    #[error("delivery uncertain: {0}")]
    Uncertain(String),
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(settings: &EmailSettings) -> Result<Self, MailerError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.smtp_url.expose())
            .map_err(MailerError::SmtpUrl)?
            .pool_config(PoolConfig::new().max_size(settings.pool_max))
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        let from = settings.from.parse().map_err(MailerError::From)?;
        Ok(Self { transport, from })
    }

    /// Whether the SMTP server answers now (a connection and NOOP, no message).
    pub async fn reachable(&self) -> Result<(), SendError> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendError::NotSent("the SMTP server did not answer NOOP".into())),
            Err(e) => Err(SendError::NotSent(e.to_string())),
        }
    }

    /// Sends; returns the Message-ID. Call [`reachable`](Self::reachable) first: an
    /// error here that is not the server's reply is [`SendError::Uncertain`].
    pub async fn send(&self, to: &str, email: &Rendered, message_id: &str) -> Result<(), SendError> {
        let to: Mailbox = to.parse().map_err(|e| SendError::Rejected(format!("recipient {to}: {e}")))?;
        let mut message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&email.subject)
            .message_id(Some(message_id.to_owned()))
            .multipart(MultiPart::alternative_plain_html(email.text.clone(), email.html.clone()))
            .map_err(|e| SendError::Rejected(format!("message: {e}")))?;
        // A transactional message (a sign-in link) has no list to leave.
        if !email.unsubscribe_url.is_empty() {
            let headers = message.headers_mut();
            headers.insert_raw(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{}>", email.unsubscribe_url),
            ));
            headers.insert_raw(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ));
        }
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Rejected(e.to_string())),
            Err(e) if e.is_transient() || e.is_tls() => Err(SendError::NotSent(e.to_string())),
            Err(e) => Err(SendError::Uncertain(e.to_string())),
        }
    }
}
