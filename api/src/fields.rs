//! Free-text fields of request bodies (ids, names, repositories) follow the domain's
//! rule for a line of text (`common::domain::text`): at most N characters as sent, no
//! control or invisible character, not blank; used trimmed. Request structs state it in
//! their schema with `pattern = …` literally (an attribute takes no constant); the test
//! below holds each literal to the domain's pattern.

use common::domain::text;

use crate::errors::ApiError;

/// `value` trimmed, if it is a line of text of at most `max` characters.
pub fn line(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    text::line(value, max).map(str::to_owned).ok_or_else(|| {
        ApiError::validation(format!(
            "{field} must be 1 to {max} characters, not blank, without control or invisible characters"
        ))
    })
}

/// An optional line: blank is as good as absent.
pub fn optional_line(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    match value {
        Some(value) if value.chars().count() > max || value.chars().any(text::is_refused) => Err(ApiError::validation(
            format!("{field} must be at most {max} characters, without control or invisible characters"),
        )),
        Some(value) if !value.trim().is_empty() => Ok(Some(value.trim().to_owned())),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_line_may_be_blank_but_not_too_long_or_invisible() {
        assert_eq!(optional_line("f", Some("  "), 6).unwrap(), None);
        assert_eq!(optional_line("f", Some(" ab "), 6).unwrap().as_deref(), Some("ab"));
        assert!(optional_line("f", Some("\u{7}"), 6).is_err());
        assert!(optional_line("f", Some("\u{200B}"), 6).is_err());
        assert!(optional_line("f", Some("       "), 6).is_err(), "blank, but longer than allowed");
    }

    #[test]
    fn every_text_field_states_the_domain_rule_in_its_schema() {
        let document = crate::openapi::ApiSurface::collect(|cfg| crate::routes::api(cfg, 1024), true);
        let json = serde_json::to_value(document.document()).unwrap();
        let schemas = &json["components"]["schemas"];
        for (schema, field) in [
            ("OnboardRequest", "name"),
            ("FixReport", "fix_id"),
            ("FixReport", "repo"),
            ("NewKey", "name"),
            ("CreditAdjustment", "reason"),
        ] {
            assert_eq!(schemas[schema]["properties"][field]["pattern"], text::LINE_PATTERN, "{schema}.{field}");
        }
        let source = &schemas["OnboardRequest"]["properties"]["source"];
        assert_eq!(source["pattern"], text::OPTIONAL_LINE_PATTERN);
    }
}
