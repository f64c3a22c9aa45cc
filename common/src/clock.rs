//! The time as the application reads it for decisions that depend on the wall clock
//! (today: which rate-limit window a request falls in). Production reads the system
//! clock; a test holds it still, or moves it, so that what it asserts never depends on
//! the second it happened to run in.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock.
    manual: Option<Arc<Mutex<DateTime<Utc>>>>,
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now(),
            Some(at) => *at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        }
    }

    /// A clock that shows `at` until moved (tests).
    #[cfg(feature = "testing")]
    pub fn manual(at: DateTime<Utc>) -> Self {
        Self { manual: Some(Arc::new(Mutex::new(at))) }
    }

    /// Moves a manual clock forward (tests); the system clock moves by itself.
    #[cfg(feature = "testing")]
    pub fn advance(&self, by: chrono::Duration) {
        if let Some(at) = &self.manual {
            *at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += by;
        }
    }
}
