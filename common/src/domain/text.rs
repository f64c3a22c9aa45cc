//! The rule for free text a person or a client names things with (a customer's name,
//! an API key's name, a fix id, an operator's reason): at most N characters as sent, no
//! control character, no invisible formatting character (zero-width spaces, direction
//! overrides, line separators: they make a name look blank or read as something else
//! on the admin page, in the audit log and in email), and not blank. It is used trimmed.
//!
//! The API's schema states the same rule as a pattern ([`LINE_PATTERN`]), so a client
//! can check a value before sending it.

/// Control characters (Cc) and the invisible formatting characters refused in text.
pub fn is_refused(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{AD}' | '\u{61C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// The refused characters as a regular-expression class body (ECMAScript and Python).
macro_rules! refused_class {
    () => {
        r"\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    };
}

/// The schema pattern of a required line: refused characters nowhere, one character
/// that is neither space nor refused. (Request structs repeat it literally in their
/// `#[schema(pattern = …)]`, an attribute takes no constant; a test compares them.)
pub const LINE_PATTERN: &str =
    concat!("^[^", refused_class!(), "]*[^\\s", refused_class!(), "][^", refused_class!(), "]*$");

/// The schema pattern of an optional line (blank is as good as absent).
pub const OPTIONAL_LINE_PATTERN: &str = concat!("^[^", refused_class!(), "]*$");

/// `raw` trimmed, if it is 1 to `max` characters as sent, holds no refused character
/// and is not blank.
pub fn line(raw: &str, max: usize) -> Option<&str> {
    let trimmed = raw.trim();
    let ok = !trimmed.is_empty() && raw.chars().count() <= max && !raw.chars().any(is_refused);
    ok.then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_counted_as_sent_used_trimmed_and_never_invisible() {
        assert_eq!(line("  a b ", 6), Some("a b"));
        assert_eq!(line("  a b  ", 6), None, "7 characters as sent");
        assert_eq!(line("   ", 6), None);
        assert_eq!(line("\tAcme", 6), None, "a control character, even where trimming would drop it");
        assert_eq!(line("a\u{85}", 6), None, "a C1 control character");
        assert_eq!(line("\u{200B}\u{200B}", 6), None, "zero-width spaces only");
        assert_eq!(line("ab\u{202E}c", 6), None, "a direction override");
        assert_eq!(line("Zoë Ünal", 20), Some("Zoë Ünal"));
    }
}
