//! A job's status, and the state machine it moves through.
//!
//! The `jobs.status` column is text with a CHECK listing these six values; Rust sees
//! them only as [`JobStatus`]. The SQL keeps its literals (`status = 'running'`), since
//! the partial indexes that make claiming cheap are defined on them and a planner proves
//! an index usable only from a literal, never from a bound value.
//!
//! Every transition, who makes it, and what it does to `attempts`:
//!
//! | transition | from → to | made by | attempts |
//! |---|---|---|---|
//! | insert | – → `available` (`run_at` now or later) | `enqueue` (in the caller's transaction) | 0 |
//! | claim | `available`, `retryable` (due) → `running` | the claimer (`CLAIM`) | +1 |
//! | settle | `available`, `retryable` (due) → `completed` | the claimer of a kind with a settler (`settle`), in the transaction of the job's effect | +1 |
//! | complete | `running` → `completed` | the acknowledger (`COMPLETE`), fenced by the claim | = |
//! | snooze | `running` → `available` (`run_at` later) | the acknowledger, `Outcome::Snooze` | −1 |
//! | cancel | `running` → `cancelled`, error kept | the acknowledger, `Outcome::Cancel` | = |
//! | fail | `running` → `retryable` (backoff in `run_at`), or `dead` after the last | the acknowledger, `Err` or run timeout | = |
//! | poison | `running` → `dead` | the claimer, args that do not decode | = |
//! | release | `running` → `available` | shutdown, for claimed jobs never started | −1 |
//! | give back | `running` → `retryable` or `dead` | the heartbeat, a job its own worker lost track of | = |
//! | rescue | `running` → `retryable` or `dead` | any heartbeat, jobs of a worker not seen for `orphan_after` | = |
//! | redrive | `dead` → `available` | an operator (`admin::redrive`, `redrive_all`) | reset to 0 |
//! | cancel by operator | `available`, `retryable` → `cancelled` | an operator (`admin::cancel`) | = |
//! | discard | `dead`, `cancelled` → deleted | an operator (`admin::discard`) | – |
//! | prune | `completed`, `cancelled`, `dead` (old) → deleted | the `prune_jobs` cron job | – |
//!
//! Only a claim (or a settlement) sets `locked_at`, and every transition out of `running` made for a
//! worker's run names the claim it came from (see `claim_fence!`), so a stale run never
//! moves a newer attempt.

use serde::{Deserialize, Serialize};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its `run_at`, or due and waiting for a worker.
    Available,
    /// Claimed by a worker (`locked_by`), running or about to.
    Running,
    /// Failed an attempt and waits for its backoff to pass.
    Retryable,
    Completed,
    /// Stopped for good by the job itself or an operator; the reason is in `errors`.
    Cancelled,
    /// Failed its last attempt; kept for an operator to read, redrive or discard.
    Dead,
}

impl JobStatus {
    pub const ALL: [Self; 6] =
        [Self::Available, Self::Running, Self::Retryable, Self::Completed, Self::Cancelled, Self::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Running => "running",
            Self::Retryable => "retryable",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Dead => "dead",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }

    /// Whether the job will still run (or is running): its outcome is not known yet.
    pub fn is_unfinished(self) -> bool {
        matches!(self, Self::Available | Self::Running | Self::Retryable)
    }

    /// Whether the job ended without doing its work.
    pub fn is_failed(self) -> bool {
        matches!(self, Self::Cancelled | Self::Dead)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(JobStatus::parse("Running"), None);
    }
}
