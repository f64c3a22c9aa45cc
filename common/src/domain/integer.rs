//! Integers as JSON carries them. JSON has one number type, and JSON Schema counts `5.0`
//! as an integer; a client (or a JavaScript runtime) may well send it. Fields documented
//! as integers accept any number without a fraction that fits, and nothing else.

use serde::{Deserialize, Deserializer, de::Error};

/// `#[serde(deserialize_with = "integral")]` for an `i64` field.
pub fn integral<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(value) = number.as_i64() {
        return Ok(value);
    }
    match number.as_f64() {
        // Strictly inside ±2^63: a number written just outside the range rounds to ±2^63
        // as a float, and must not be taken for i64::MIN. (i64::MIN itself, written as an
        // integer, was read above.)
        Some(value) if value.fract() == 0.0 && value.abs() < 9.223_372_036_854_776e18 => Ok(value as i64),
        _ => Err(D::Error::custom(format!("{number} is not an integer that fits in 64 bits"))),
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Amount {
        #[serde(deserialize_with = "super::integral")]
        amount: i64,
    }

    fn amount(json: &str) -> Result<i64, serde_json::Error> {
        serde_json::from_str::<Amount>(json).map(|a| a.amount)
    }

    #[test]
    fn whole_numbers_in_any_spelling_are_integers_and_nothing_else_is() {
        assert_eq!(amount(r#"{"amount": -5}"#).unwrap(), -5);
        assert_eq!(amount(r#"{"amount": -66556.0}"#).unwrap(), -66556);
        assert_eq!(amount(r#"{"amount": 1e3}"#).unwrap(), 1000);
        assert!(amount(r#"{"amount": 1.5}"#).is_err());
        assert!(amount(r#"{"amount": 9223372036854775808}"#).is_err());
        assert!(amount(r#"{"amount": 1e19}"#).is_err());
        assert!(amount(r#"{"amount": -9223372036854775809}"#).is_err(), "rounds to -2^63 as a float");
        assert_eq!(amount(r#"{"amount": -9223372036854775808}"#).unwrap(), i64::MIN);
        assert!(amount(r#"{"amount": "5"}"#).is_err());
    }
}
