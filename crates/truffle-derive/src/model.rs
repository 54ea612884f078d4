//! The intermediate representation handed from [`crate::parse`] to
//! [`crate::codegen`].
//!
//! Everything in here has already been validated: once a [`Container`]
//! exists, code generation cannot fail.

use std::fmt;

use proc_macro2::Span;
use syn::{Generics, Ident, LitStr};

/// Maximum length of a store id, in bytes.
///
/// Must stay in sync with the runtime check in `truffle-actors`.
pub(crate) const MAX_STORE_ID_LEN: usize = 128;

/// Human-readable description of the store id rule, appended to every
/// validation error so the user sees how to fix it.
pub(crate) const STORE_ID_RULE: &str =
    "store ids must be 1-128 bytes of ASCII letters, digits, `.`, `_` and `-` ([A-Za-z0-9._-])";

/// A struct that `#[derive(Syncable)]` was applied to, reduced to what the
/// code generator needs.
pub(crate) struct Container<'a> {
    /// The struct's name.
    pub(crate) ident: &'a Ident,
    /// The struct's generics, including its where clause.
    pub(crate) generics: &'a Generics,
    /// The validated value of `#[syncable(id = "...")]`.
    pub(crate) store_id: StoreId,
}

/// A validated store id, remembering where it was written so generated code
/// points back at the user's literal.
#[derive(Debug, Clone)]
pub(crate) struct StoreId {
    value: String,
    span: Span,
}

impl StoreId {
    /// Validates a string literal as a store id.
    ///
    /// On failure the returned error is spanned at the literal.
    pub(crate) fn from_lit(lit: &LitStr) -> syn::Result<Self> {
        let value = lit.value();
        validate_store_id(&value).map_err(|err| syn::Error::new(lit.span(), err))?;
        Ok(Self {
            value,
            span: lit.span(),
        })
    }

    /// The store id as a string.
    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.value
    }

    /// The store id as a string literal token carrying the original span.
    pub(crate) fn to_lit(&self) -> LitStr {
        LitStr::new(&self.value, self.span)
    }
}

/// Why a store id was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreIdError {
    /// The id is the empty string.
    Empty,
    /// The id is longer than [`MAX_STORE_ID_LEN`] bytes; carries the length.
    TooLong(usize),
    /// The id contains a character outside `[A-Za-z0-9._-]`.
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the id.
        index: usize,
    },
}

impl fmt::Display for StoreIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "store id must not be empty; {STORE_ID_RULE}"),
            Self::TooLong(len) => write!(
                f,
                "store id is {len} bytes long, the maximum is {MAX_STORE_ID_LEN}; {STORE_ID_RULE}"
            ),
            Self::InvalidChar { ch, index } => write!(
                f,
                "store id contains invalid character {ch:?} at byte {index}; {STORE_ID_RULE}"
            ),
        }
    }
}

/// Returns `true` if `ch` may appear in a store id.
fn is_store_id_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')
}

/// Checks a store id against the rule shared with the runtime: non-empty, at
/// most [`MAX_STORE_ID_LEN`] bytes, only `[A-Za-z0-9._-]`.
pub(crate) fn validate_store_id(id: &str) -> Result<(), StoreIdError> {
    if id.is_empty() {
        return Err(StoreIdError::Empty);
    }
    if let Some((index, ch)) = id.char_indices().find(|&(_, ch)| !is_store_id_char(ch)) {
        return Err(StoreIdError::InvalidChar { ch, index });
    }
    if id.len() > MAX_STORE_ID_LEN {
        return Err(StoreIdError::TooLong(id.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for id in [
            "todos", "a", "my-store", "my_store", "v1.2.3", "A-z_0.9", "...", "-",
        ] {
            assert_eq!(validate_store_id(id), Ok(()), "{id:?}");
        }
        let longest = "x".repeat(MAX_STORE_ID_LEN);
        assert_eq!(validate_store_id(&longest), Ok(()));
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(validate_store_id(""), Err(StoreIdError::Empty));
    }

    #[test]
    fn rejects_too_long() {
        let id = "x".repeat(MAX_STORE_ID_LEN + 1);
        assert_eq!(
            validate_store_id(&id),
            Err(StoreIdError::TooLong(MAX_STORE_ID_LEN + 1))
        );
    }

    #[test]
    fn rejects_invalid_chars() {
        for (id, ch, index) in [
            ("to do", ' ', 2),
            ("a/b", '/', 1),
            ("todos!", '!', 5),
            ("caf\u{e9}", '\u{e9}', 3),
            ("a:b", ':', 1),
            ("tab\t", '\t', 3),
        ] {
            assert_eq!(
                validate_store_id(id),
                Err(StoreIdError::InvalidChar { ch, index }),
                "{id:?}"
            );
        }
    }

    #[test]
    fn messages_explain_the_rule() {
        for err in [
            StoreIdError::Empty,
            StoreIdError::TooLong(200),
            StoreIdError::InvalidChar { ch: ' ', index: 0 },
        ] {
            let msg = err.to_string();
            assert!(msg.contains("[A-Za-z0-9._-]"), "{msg}");
        }
        assert_eq!(
            StoreIdError::InvalidChar { ch: ' ', index: 2 }.to_string(),
            format!("store id contains invalid character ' ' at byte 2; {STORE_ID_RULE}")
        );
    }

    #[test]
    fn from_lit_keeps_value() {
        let lit: LitStr = syn::parse_quote!("my.store-1_x");
        let id = StoreId::from_lit(&lit).unwrap();
        assert_eq!(id.as_str(), "my.store-1_x");
        assert_eq!(id.to_lit().value(), "my.store-1_x");
    }

    #[test]
    fn from_lit_handles_escapes_and_raw_strings() {
        let lit: LitStr = syn::parse_quote!(r"raw-id");
        assert_eq!(StoreId::from_lit(&lit).unwrap().as_str(), "raw-id");
        let lit: LitStr = syn::parse_quote!("a\x20b");
        let err = StoreId::from_lit(&lit).unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
    }
}
