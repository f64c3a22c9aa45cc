//! The rule for the free-text fields of request bodies (ids, names, repositories), in
//! the one form the OpenAPI schema can state exactly: at most N characters as sent
//! (`maxLength`), no control character, not blank (`pattern`). The value is used
//! trimmed. Request structs repeat the pattern literally in `#[schema(pattern = …)]`
//! (an attribute takes no constant); [`LINE_PATTERN`] is the one they copy.

use crate::errors::ApiError;

/// The schema pattern of a required line of text.
pub const LINE_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$";

/// `value` trimmed, if it is 1 to `max` characters as sent, not blank and free of control
/// characters.
pub fn line(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::validation(format!("{field} must be 1 to {max} printable characters, not blank")));
    }
    Ok(trimmed.to_owned())
}

/// An optional line: blank is as good as absent (its schema pattern allows blank:
/// [`OPTIONAL_LINE_PATTERN`]).
pub fn optional_line(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        Some(value) if value.chars().count() > max || value.chars().any(char::is_control) => {
            Err(ApiError::validation(format!("{field} must be at most {max} printable characters")))
        }
        Some(value) if !value.trim().is_empty() => Ok(Some(value.trim().to_owned())),
        _ => Ok(None),
    }
}

/// The schema pattern of an optional line of text.
pub const OPTIONAL_LINE_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_counted_as_sent_and_used_trimmed() {
        assert_eq!(line("f", "  a b ", 6).unwrap(), "a b");
        assert!(line("f", "  a b  ", 6).is_err(), "7 characters as sent");
        assert!(line("f", "   ", 6).is_err());
        assert!(line("f", "a\u{0085}", 6).is_err(), "a C1 control character");
        assert_eq!(optional_line("f", Some("  "), 6).unwrap(), None);
        assert!(optional_line("f", Some("\u{7}"), 6).is_err());
        assert!(optional_line("f", Some("       "), 6).is_err(), "blank, but longer than allowed");
    }
}
