//! Prometheus metrics. Code records through the `metrics` facade; each process exposes
//! them at `/metrics`: the worker on `METRICS_ADDR`, the API on its public port or, with
//! `API_METRICS_ADDR`, on that address only. With `METRICS_TOKEN` set, both ask for
//! `Authorization: Bearer <METRICS_TOKEN>`.
//!
//! | metric | labels |
//! |---|---|
//! | `rsolv_http_request_duration_seconds` (histogram) | `route`, `method`, `status` |
//! | `rsolv_jobs_started_total`, `rsolv_jobs_succeeded_total`, `rsolv_jobs_failed_total`, `rsolv_jobs_cancelled_total`, `rsolv_jobs_dead_total`, `rsolv_jobs_settled_in_claim_total` (completed in their claim, `queue::settle`), `rsolv_jobs_settle_failed_total` (settlements rolled back, their jobs run alone) | `kind` |
//! | `rsolv_job_duration_seconds` (histogram) | `kind` |
//! | `rsolv_queue_depth`, `rsolv_queue_oldest_waiting_seconds`, `rsolv_queue_dead` (gauges) | `queue` |
//! | `rsolv_ledger_postings_total` | `source` |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::Secret;

const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &DURATION_BUCKETS)
        .expect("buckets are non-empty")
}

/// Installs the process's recorder (once) and returns the handle that renders it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| builder().install_recorder().expect("no other metrics recorder is installed"))
}

/// Whether a scrape's `Authorization` header may read the metrics: anyone when no
/// `METRICS_TOKEN` is set, else only its bearer (compared in constant time).
pub fn scrape_allowed(authorization: Option<&str>, token: Option<&Secret>) -> bool {
    let Some(token) = token else { return true };
    let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default().trim();
    token.matches(given)
}
