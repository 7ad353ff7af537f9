//! The error every typed config's `validate()` returns.

/// A config field holds a value outside what is allowed. The message names the field, the
/// value given and what would be accepted, so it can be fixed without reading the source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `{field}` = {value}: expected {expected}")]
pub struct ConfigError {
    /// Field path, e.g. `producer.linger`.
    pub field: String,
    /// The rejected value, rendered for humans (secrets are never rendered).
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

impl ConfigError {
    /// A new error for `field`.
    pub fn new(
        field: impl Into<String>,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// Checks `lo <= value <= hi`, naming `field` on failure.
    pub fn check_range<T: PartialOrd + std::fmt::Debug>(
        field: &str,
        value: T,
        lo: T,
        hi: T,
    ) -> Result<(), ConfigError> {
        if value < lo || value > hi {
            return Err(ConfigError::new(
                field,
                format!("{value:?}"),
                format!("{lo:?} ..= {hi:?}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_error_names_field_value_and_bounds() {
        let e =
            ConfigError::check_range("producer.batch_records", 0usize, 1, 1_000_000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config `producer.batch_records` = 0: expected 1 ..= 1000000"
        );
        assert!(ConfigError::check_range("x", 5, 1, 10).is_ok());
    }
}
