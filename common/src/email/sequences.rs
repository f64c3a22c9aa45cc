//! The email sequences of the domain spec, as data: named steps, each with its delay
//! after the trigger, its content, and an optional stop condition checked when the
//! step runs. Paragraphs are minijinja templates over the step's variables
//! (`name`, and whatever the trigger passed, e.g. `amount` and `next_attempt`).

/// Why a step is skipped when its time comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCondition {
    /// The customer unsubscribed.
    Unsubscribed,
    /// The customer unsubscribed or no longer needs the nudge (has a card, or is Pro).
    UnsubscribedOrUpgraded,
    /// The customer unsubscribed or came back: reported a fix after the day the
    /// inactivity began (the step's occurrence).
    UnsubscribedOrReturned,
}

#[derive(Debug)]
pub struct Step {
    pub key: &'static str,
    pub delay_days: i64,
    pub subject: &'static str,
    pub heading: &'static str,
    pub paragraphs: &'static [&'static str],
    /// Button label and path on the product site.
    pub action: (&'static str, &'static str),
}

#[derive(Debug)]
pub struct Sequence {
    pub name: &'static str,
    /// What the customer reads about it in their email preferences.
    pub about: &'static str,
    /// `None` for transactional email, which goes out even after an unsubscribe.
    pub stop: Option<StopCondition>,
    pub steps: &'static [Step],
}

impl Sequence {
    pub fn step(&self, key: &str) -> Option<&'static Step> {
        self.steps.iter().find(|s| s.key == key)
    }
}

pub const ONBOARDING: Sequence = Sequence {
    name: "onboarding",
    about: "Getting started: a welcome and tips in your first days.",
    stop: Some(StopCondition::Unsubscribed),
    steps: &[
        Step {
            key: "welcome",
            delay_days: 0,
            subject: "Welcome to RSOLV",
            heading: "Welcome, {{ name }}!",
            paragraphs: &[
                "Your RSOLV account is ready, with {{ trial_credits }} free credits: each deployed fix uses one.",
                "Your API key was shown once when you signed up; keep it somewhere safe.",
            ],
            action: ("Open your dashboard", "/dashboard"),
        },
        Step {
            key: "getting_started",
            delay_days: 1,
            subject: "Getting started with RSOLV",
            heading: "Your first fix in three steps",
            paragraphs: &["Connect a repository, run a scan, and let RSOLV open a pull request with the fix."],
            action: ("Read the guide", "/docs/getting-started"),
        },
        Step {
            key: "setup_verification",
            delay_days: 3,
            subject: "Is RSOLV set up correctly?",
            heading: "Let's check your setup, {{ name }}",
            paragraphs: &["A quick checklist makes sure scans run on every push and fixes reach your reviewers."],
            action: ("Verify your setup", "/docs/verify"),
        },
        Step {
            key: "feature_deep_dive",
            delay_days: 5,
            subject: "What RSOLV can do for you",
            heading: "Beyond the first fix",
            paragraphs: &[
                "Validations and scans are free; only deployed fixes use credits. Here is how teams get the most out of them.",
            ],
            action: ("Explore the features", "/docs/features"),
        },
        Step {
            key: "feedback_request",
            delay_days: 7,
            subject: "How is RSOLV working for you?",
            heading: "We would love your feedback",
            paragraphs: &["Two minutes of your time tell us what to build next."],
            action: ("Share feedback", "/feedback"),
        },
        Step {
            key: "success_checkin",
            delay_days: 14,
            subject: "Two weeks with RSOLV",
            heading: "How are your fixes going, {{ name }}?",
            paragraphs: &["If anything is in your way, reply to this email: a person reads it."],
            action: ("See your usage", "/dashboard/usage"),
        },
    ],
};

pub const EXPIRING_TRIAL: Sequence = Sequence {
    name: "expiring_trial",
    about: "When your trial credits run low.",
    stop: Some(StopCondition::UnsubscribedOrUpgraded),
    steps: &[
        Step {
            key: "credits_running_low",
            delay_days: 0,
            subject: "Your RSOLV trial credits are running out",
            heading: "Keep your fixes coming",
            paragraphs: &[
                "Add a payment method to keep fixing after your trial credits: {{ fix_price }} per fix, or Pro for {{ pro_credits }} fixes a month at {{ pro_price }}.",
            ],
            action: ("Add a payment method", "/dashboard/billing"),
        },
        Step {
            key: "trial_reminder",
            delay_days: 3,
            subject: "A reminder about your RSOLV trial",
            heading: "Don't lose momentum, {{ name }}",
            paragraphs: &["Adding a card also gives you {{ billing_credits }} more credits."],
            action: ("Add a payment method", "/dashboard/billing"),
        },
        Step {
            key: "last_call",
            delay_days: 7,
            subject: "Last call: your RSOLV trial",
            heading: "Your trial has ended",
            paragraphs: &["Your account stays; add a payment method whenever you are ready."],
            action: ("Continue with RSOLV", "/dashboard/billing"),
        },
    ],
};

pub const RE_ENGAGEMENT: Sequence = Sequence {
    name: "re_engagement",
    about: "News and a nudge when you have not used RSOLV for a while.",
    stop: Some(StopCondition::UnsubscribedOrReturned),
    steps: &[
        Step {
            key: "we_miss_you",
            delay_days: 0,
            subject: "We miss you at RSOLV",
            heading: "It's been a while, {{ name }}",
            paragraphs: &["New fixes may be waiting in your repositories."],
            action: ("Run a scan", "/dashboard"),
        },
        Step {
            key: "whats_new",
            delay_days: 3,
            subject: "What's new in RSOLV",
            heading: "New since your last visit",
            paragraphs: &["Faster scans and more languages are supported."],
            action: ("See what's new", "/changelog"),
        },
        Step {
            key: "last_check_in",
            delay_days: 7,
            subject: "Should we stay in touch?",
            heading: "One last note",
            paragraphs: &["If RSOLV is not for you right now, the link below stops these emails."],
            action: ("Come back to RSOLV", "/dashboard"),
        },
    ],
};

/// Sent once per failed invoice; transactional, so an unsubscribe does not stop it.
pub const DUNNING: Sequence = Sequence {
    name: "dunning",
    about: "When a payment fails. Always sent: it is about your account.",
    stop: None,
    steps: &[Step {
        key: "payment_failed",
        delay_days: 0,
        subject: "Payment Failed - Action Required",
        heading: "We couldn't charge your card",
        paragraphs: &[
            "Your payment of {{ amount }} for RSOLV Pro failed.",
            "{% if next_attempt %}We will try again on {{ next_attempt }}.{% else %}We will not retry automatically.{% endif %} Please update your payment method to keep Pro.",
        ],
        action: ("Update your payment method", "/dashboard/billing"),
    }],
};

pub const ALL: [&Sequence; 4] = [&ONBOARDING, &EXPIRING_TRIAL, &RE_ENGAGEMENT, &DUNNING];

pub fn find(name: &str) -> Option<&'static Sequence> {
    ALL.into_iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_onboarding_sequence_follows_the_domain_spec() {
        let days: Vec<i64> = ONBOARDING.steps.iter().map(|s| s.delay_days).collect();
        assert_eq!(days, [0, 1, 3, 5, 7, 14]);
        for sequence in [&EXPIRING_TRIAL, &RE_ENGAGEMENT] {
            assert_eq!(sequence.steps.iter().map(|s| s.delay_days).collect::<Vec<_>>(), [0, 3, 7]);
        }
        assert_eq!(DUNNING.steps[0].subject, "Payment Failed - Action Required");
        assert_eq!(find("onboarding").unwrap().step("welcome").unwrap().delay_days, 0);
        assert!(find("nope").is_none());
    }
}
