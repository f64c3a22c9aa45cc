//! The request id that follows a request into the jobs it causes.
//!
//! The API gives every request an id (the client's `X-Request-Id` when it is a sane one,
//! else a new one) and runs the request inside [`scope`]. Whatever the request enqueues
//! is stored with that id (`jobs.request_id`), and each run of such a job runs inside
//! [`scope`] again, so the jobs it enqueues in turn carry the same id. Every log line of
//! the request and of the job runs names it: one `grep` follows a webhook to the jobs
//! and ledger entries it caused.
//!
//! A task-local rather than a parameter: the id is context, like the tracing span it
//! also sits in, and threading it through every function that may enqueue would put it
//! into every signature between a handler and `queue::enqueue`.

use std::fmt;
use std::future::Future;

/// Longest request id kept; a longer one sent by a client is replaced.
pub const MAX_LEN: usize = 64;

/// A request id: 1 to 64 characters of `A-Z a-z 0-9 - _ . :` (what tracing systems and
/// load balancers send: UUIDs, ULIDs, `Root:1-…` style ids), so it is safe in a log line
/// and a header as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// A client's id, if it is one we keep.
    pub fn parse(value: &str) -> Option<Self> {
        let valid = !value.is_empty()
            && value.len() <= MAX_LEN
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        valid.then(|| Self(value.to_owned()))
    }

    /// A new id for a request that brought none.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

tokio::task_local! {
    static CURRENT: Option<RequestId>;
}

/// Runs `future` as part of the request `id` (none: as part of no request).
pub async fn scope<F: Future>(id: Option<RequestId>, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

/// The request the running code is part of, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_refuses_the_rest() {
        for kept in ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "Root:1-5759e988.x_y"] {
            assert_eq!(RequestId::parse(kept).unwrap().as_str(), kept);
        }
        for refused in ["", "a b", "x\ny", "<script>", "é", &"a".repeat(MAX_LEN + 1)] {
            assert!(RequestId::parse(refused).is_none(), "{refused:?} is refused");
        }
        assert!(RequestId::parse(&"a".repeat(MAX_LEN)).is_some());
    }

    #[tokio::test]
    async fn the_id_is_current_inside_its_scope_only() {
        assert_eq!(current(), None);
        let id = RequestId::generate();
        let inside = scope(Some(id.clone()), async { current() }).await;
        assert_eq!(inside, Some(id));
        assert_eq!(current(), None);
    }
}
