//! Fault-injection hooks for tests (built only with the `failpoints` feature, as the
//! test suite builds): a test can hold every run of a kind after its effect and before
//! its result is reported, asynchronously (a blocking failpoint would stall the whole
//! worker, which polls its runs on one task), and make that run fail.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use futures::future::BoxFuture;

/// What a held run does: wait for the test, then report as it was (`Ok`) or fail.
pub type Hook = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

static HOOKS: LazyLock<Mutex<HashMap<&'static str, Hook>>> = LazyLock::new(Default::default);

/// Holds every finished run of `kind` in `hook` until [`clear`].
pub fn hold_after_run(kind: &'static str, hook: Hook) {
    HOOKS.lock().expect("hooks lock").insert(kind, hook);
}

pub fn clear(kind: &'static str) {
    HOOKS.lock().expect("hooks lock").remove(kind);
}

pub(super) async fn after_run(kind: &'static str) -> Result<(), String> {
    let hook = HOOKS.lock().expect("hooks lock").get(kind).cloned();
    match hook {
        Some(hook) => hook().await,
        None => Ok(()),
    }
}
