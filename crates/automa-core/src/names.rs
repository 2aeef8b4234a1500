//! Validated values that users type: resource names and e-mail addresses. Past the API's edge, code only
//! handles values that were parsed here, so a bad name can never reach the database.

use serde::Serialize;
use std::fmt;

/// A field that failed validation, with the reason a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// The name of a script, task, agent, secret or token: 1-100 characters of letters, digits, `-`, `_`, `.` and
/// spaces, not starting or ending with a space, so it can be typed on a command line and shown in a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceName(String);

impl ResourceName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(field: &str, raw: &str) -> Result<Self, InvalidField> {
        if raw.is_empty() {
            return Err(InvalidField::new(field, "must not be empty"));
        }
        if raw.chars().count() > Self::MAX_LEN {
            return Err(InvalidField::new(field, format!("must be at most {} characters", Self::MAX_LEN)));
        }
        if raw.trim() != raw {
            return Err(InvalidField::new(field, "must not start or end with whitespace"));
        }
        if let Some(bad) = raw.chars().find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))) {
            return Err(InvalidField::new(
                field,
                format!("contains '{bad}': use letters, digits, spaces, '-', '_' or '.'"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address, normalised to lower case because addresses are compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, raw: &str) -> Result<Self, InvalidField> {
        let trimmed = raw.trim();
        let invalid = || InvalidField::new(field, "must be an e-mail address like name@example.com");
        if trimmed.len() > 254 || trimmed.chars().any(char::is_whitespace) {
            return Err(invalid());
        }
        let (local, domain) = trimmed.split_once('@').ok_or_else(invalid)?;
        if local.is_empty()
            || domain.is_empty()
            || domain.contains('@')
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(invalid());
        }
        Ok(Self(trimmed.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_usual_shapes() {
        for ok in ["backup", "nightly backup", "etl-2024.v2", "a_b"] {
            assert_eq!(ResourceName::parse("name", ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn names_reject_with_a_reason() {
        assert_eq!(ResourceName::parse("name", "").unwrap_err().message, "must not be empty");
        assert!(ResourceName::parse("name", " x").is_err());
        assert!(ResourceName::parse("name", "a/b").unwrap_err().message.contains("'/'"));
        assert!(ResourceName::parse("name", &"x".repeat(101)).is_err());
    }

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(Email::parse("email", "Ada@Example.COM").unwrap().as_str(), "ada@example.com");
        for bad in ["", "ada", "@x.org", "ada@", "a b@x.org", "a@b@c", "a@.x"] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
    }
}
