use std::collections::HashSet;
use std::sync::OnceLock;

use super::ParseError;

/// An email address we accept for a customer: well-formed, at most 254 characters,
/// not from a disposable-mail domain, and normalized (trimmed, lower-case) so that
/// uniqueness ignores case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl TryFrom<String> for Email {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

const MAX_LEN: usize = 254;

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let normalized = raw.trim().to_lowercase();
        if normalized.is_empty() {
            return Err(ParseError::new("email must not be empty"));
        }
        // Counted as sent, as the API's schema (`maxLength`) counts it.
        if raw.chars().count() > MAX_LEN {
            return Err(ParseError::new(format!("email must be at most {MAX_LEN} characters")));
        }
        let parsed: email_address::EmailAddress =
            normalized.parse().map_err(|_| ParseError::new("email is not a valid address"))?;
        // email_address accepts display forms and bare local domains; a customer needs a
        // routable mailbox, so demand a dotted domain and the plain address form.
        if parsed.email() != normalized || !parsed.domain().contains('.') {
            return Err(ParseError::new("email is not a valid address"));
        }
        if is_disposable(parsed.domain()) {
            return Err(ParseError::new("email from a disposable email domain is not accepted"));
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The domain or any parent domain is on mailchecker's list of disposable providers.
fn is_disposable(domain: &str) -> bool {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let list = LIST.get_or_init(|| mailchecker::blacklist().into_iter().collect());
    let mut rest = domain;
    loop {
        if list.contains(rest) {
            return true;
        }
        match rest.split_once('.') {
            Some((_, parent)) => rest = parent,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalizes_a_plain_address() {
        let email = Email::parse("  Ada.Lovelace@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "ada.lovelace@example.com");
        assert_eq!(email.domain(), "example.com");
    }

    #[test]
    fn refuses_malformed_addresses() {
        for raw in [
            "",
            "   ",
            "plainaddress",
            "a@b",
            "@example.com",
            "a@@example.com",
            "Ada <a@example.com>",
            "a b@example.com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} should be refused");
        }
    }

    #[test]
    fn refuses_over_long_addresses() {
        let raw = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&raw).is_err());
    }

    #[test]
    fn refuses_disposable_domains_and_their_subdomains() {
        assert!(Email::parse("someone@mailinator.com").is_err());
        assert!(Email::parse("someone@x.33mail.com").is_err());
        assert!(Email::parse("someone@gmail.com").is_ok());
    }
}
