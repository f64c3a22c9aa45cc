//! `GET /dashboard/usage` (and `.csv`): the customer's fixes, newest first, filtered by
//! repository and outcome, fifty to a page; the CSV holds every fix the filter keeps (up
//! to `CSV_MAX_ROWS`), streamed a page at a time.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use common::db;
use common::db::usage::{self, FixHistoryRow, FixOutcome, HistoryFilter};
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{page, signed_in, to_sign_in};
use crate::dashboard_auth::Dashboard;
use crate::errors::ApiError;

const PAGE: i64 = 50;
/// The most rows one CSV export holds, read and sent `CSV_PAGE` at a time.
const CSV_MAX_ROWS: usize = 100_000;
const CSV_PAGE: i64 = 1_000;

#[derive(Deserialize, Default)]
pub struct UsageQuery {
    repo: Option<String>,
    outcome: Option<String>,
    /// The page after the fix `{created_at in µs}:{fix_id}` (the last one shown).
    before: Option<String>,
}

impl UsageQuery {
    /// The filter this query asks for, or what is wrong with it.
    fn filter(&self, limit: i64) -> Result<HistoryFilter, &'static str> {
        let repo = match crate::fields::optional_line("repo", self.repo.as_deref(), 200) {
            Ok(repo) => repo,
            Err(_) => return Err("A repository is at most 200 characters, without control characters."),
        };
        let outcome = match self.outcome.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => match FixOutcome::ALL.into_iter().find(|o| o.as_str() == text) {
                Some(outcome) => Some(outcome),
                None => return Err("The outcome is consumed or refused."),
            },
        };
        let before = match self.before.as_deref().filter(|b| !b.is_empty()) {
            None => None,
            Some(cursor) => Some(parse_cursor(cursor).ok_or("That page does not exist.")?),
        };
        Ok(HistoryFilter { repo, outcome, before, limit })
    }
}

fn parse_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let (micros, fix_id) = cursor.split_once(':')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, fix_id.to_owned()))
}

fn cursor_of(row: &FixHistoryRow) -> String {
    format!("{}:{}", row.created_at.timestamp_micros(), row.fix_id)
}

pub async fn show(
    dashboard: Dashboard,
    pool: web::Data<PgPool>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some((customer_id, csrf)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    let pool = pool.get_ref();
    let repos = usage::repos(pool, customer_id).await?;
    let (status, flash, rows) = match query.filter(PAGE + 1) {
        Ok(filter) => (StatusCode::OK, None, usage::history(pool, customer_id, &filter).await?),
        Err(problem) => (StatusCode::UNPROCESSABLE_ENTITY, Some(problem), Vec::new()),
    };
    let more = rows.len() as i64 > PAGE;
    let rows = &rows[..rows.len().min(PAGE as usize)];
    let next = more.then(|| rows.last().map(cursor_of)).flatten();
    let name = db::customers::find(pool, customer_id).await?.map(|c| c.name).unwrap_or_default();
    Ok(page(
        status,
        "usage.html",
        context! {
            nav => "usage",
            csrf => csrf,
            flash => flash,
            customer_name => name,
            repos => repos,
            repo => query.repo.as_deref().unwrap_or_default().trim(),
            outcome => query.outcome.as_deref().unwrap_or_default().trim(),
            rows => Serde(rows),
            next => next,
        },
    ))
}

/// A CSV field: always quoted (so a spreadsheet splitting on `;` or tabs keeps it whole),
/// and never read as a formula (one starting, after any blanks, with `=`, `+`, `-` or
/// `@`, or with a tab or return, gets a `'`): repositories and fix ids come from API
/// clients.
fn csv_field(value: &str) -> String {
    let formula = value.trim_start().starts_with(['=', '+', '-', '@']) || value.starts_with(['\t', '\r']);
    let value = if formula { format!("'{value}") } else { value.to_owned() };
    format!("\"{}\"", value.replace('"', "\"\""))
}

fn csv_line(row: &FixHistoryRow) -> String {
    let fields = [
        row.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        row.fix_id.clone(),
        row.repo.clone(),
        row.outcome.as_str().to_owned(),
        row.refusal_code.clone().unwrap_or_default(),
        row.charged_cents.map(|c| c.to_string()).unwrap_or_default(),
    ];
    let mut line = fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

pub async fn csv(
    dashboard: Dashboard,
    pool: web::Data<PgPool>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some((customer_id, _)) = signed_in(&dashboard) else { return Ok(to_sign_in()) };
    let filter = query.filter(CSV_PAGE).map_err(ApiError::validation)?;
    // The first page is read before answering, so that a failure there is an error page;
    // the rest follows a page at a time as the client takes it, so an export holds one
    // page in memory however many fixes it has.
    let first = usage::history(pool.get_ref(), customer_id, &filter).await?;
    let export = Export { pool, customer_id, filter, first: Some(first), written: 0, done: false };
    let name = format!("rsolv-usage-{}.csv", Utc::now().format("%Y-%m-%d"));
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .streaming(futures::stream::unfold(export, Export::next_chunk)))
}

/// A CSV export's pages, read one after the other (see `csv`).
struct Export {
    pool: web::Data<PgPool>,
    customer_id: Uuid,
    /// The next page's filter: after the last row written.
    filter: HistoryFilter,
    /// The first page, read before the answer began.
    first: Option<Vec<FixHistoryRow>>,
    written: usize,
    done: bool,
}

impl Export {
    const HEADER: &str = "\"date\",\"fix_id\",\"repo\",\"outcome\",\"refusal_code\",\"charged_cents\"\r\n";

    async fn next_chunk(mut self) -> Option<(Result<web::Bytes, std::io::Error>, Self)> {
        if self.done {
            return None;
        }
        let (mut chunk, rows) = match self.first.take() {
            Some(rows) => (Self::HEADER.to_owned(), rows),
            None => match usage::history(self.pool.get_ref(), self.customer_id, &self.filter).await {
                Ok(rows) => (String::new(), rows),
                Err(error) => {
                    // The answer has begun: cutting it short is all that is left, and the
                    // client sees a failed download rather than a file missing its end.
                    tracing::error!(customer_id = %self.customer_id, %error, "a usage export failed midway");
                    self.done = true;
                    return Some((Err(std::io::Error::other("the usage export failed midway")), self));
                }
            },
        };
        self.written += rows.len();
        self.done = (rows.len() as i64) < self.filter.limit || self.written >= CSV_MAX_ROWS;
        if let Some(last) = rows.last() {
            self.filter.before = Some((last.created_at, last.fix_id.clone()));
        }
        chunk.extend(rows.iter().map(csv_line));
        Some((Ok(web::Bytes::from(chunk)), self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("org/repo"), "\"org/repo\"");
        assert_eq!(csv_field("a,b;c"), "\"a,b;c\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "\"'=HYPERLINK(1)\"");
        assert_eq!(csv_field("  @SUM(1)"), "\"'  @SUM(1)\"");
        assert_eq!(csv_field("-1+2,3"), "\"'-1+2,3\"");
    }

    #[test]
    fn a_cursor_reads_back_and_nonsense_is_no_page() {
        let at = DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap();
        let row = FixHistoryRow {
            fix_id: "fix:7".into(),
            repo: "r".into(),
            outcome: FixOutcome::Consumed,
            refusal_code: None,
            charged_cents: None,
            created_at: at,
        };
        assert_eq!(parse_cursor(&cursor_of(&row)), Some((at, "fix:7".to_owned())));
        assert_eq!(parse_cursor("yesterday"), None);
        let query = UsageQuery { before: Some("x:y".into()), ..Default::default() };
        assert!(query.filter(10).is_err());
    }
}
