//! Turns a [`DeriveInput`] into a validated [`Container`].
//!
//! Parsing never stops at the first problem: every error is collected in an
//! [`Errors`] accumulator and reported together, each spanned at the token
//! that caused it.

use proc_macro2::TokenTree;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, Data, DeriveInput, Expr, ExprLit, Lit, LitStr, Meta, Path, Token};

use crate::model::{Container, StoreId};

/// Name of the helper attribute, `#[syncable(...)]`.
const ATTR: &str = "syncable";
/// The only key accepted inside `#[syncable(...)]`.
const ID: &str = "id";

/// Collects errors so that all of them can be reported in one go.
#[derive(Default)]
pub(crate) struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    /// Records an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// Number of errors recorded so far.
    pub(crate) fn len(&self) -> usize {
        self.errors.len()
    }

    /// `Ok(())` if nothing was recorded, otherwise all errors combined into
    /// one.
    pub(crate) fn finish(self) -> syn::Result<()> {
        let mut iter = self.errors.into_iter();
        match iter.next() {
            None => Ok(()),
            Some(mut first) => {
                for error in iter {
                    first.combine(error);
                }
                Err(first)
            }
        }
    }
}

/// Parses and validates the derive input.
///
/// Returns every problem found, combined into one [`syn::Error`].
pub(crate) fn container(input: &DeriveInput) -> syn::Result<Container<'_>> {
    let mut errors = Errors::default();

    let is_struct = match &input.data {
        Data::Struct(_) => true,
        Data::Enum(data) => {
            errors.push(syn::Error::new(
                data.enum_token.span,
                "`Syncable` can only be derived for structs; \
                 enums are not supported (store the enum in a field of a struct instead)",
            ));
            false
        }
        Data::Union(data) => {
            errors.push(syn::Error::new(
                data.union_token.span,
                "`Syncable` can only be derived for structs; unions are not supported",
            ));
            false
        }
    };

    let store_id = store_id(input, is_struct, &mut errors);
    errors.finish()?;

    let store_id = store_id.ok_or_else(|| {
        // Unreachable: every path that yields no store id records an error.
        syn::Error::new(
            input.ident.span(),
            "internal error: no store id and no error",
        )
    })?;

    Ok(Container {
        ident: &input.ident,
        generics: &input.generics,
        store_id,
    })
}

/// Finds the single `#[syncable(...)]` attribute and extracts its store id.
///
/// The "missing attribute" error is only reported for structs: for enums and
/// unions the "structs only" error already tells the user what is wrong.
fn store_id(input: &DeriveInput, is_struct: bool, errors: &mut Errors) -> Option<StoreId> {
    let mut seen_attr = false;
    let mut store_id = None;

    for attr in input.attrs.iter().filter(|attr| attr.path().is_ident(ATTR)) {
        if seen_attr {
            errors.push(syn::Error::new_spanned(
                attr,
                "duplicate #[syncable] attribute; \
                 use a single #[syncable(id = \"...\")] attribute",
            ));
            continue;
        }
        seen_attr = true;
        store_id = syncable_attr(attr, errors);
    }

    if !seen_attr && is_struct {
        errors.push(syn::Error::new(
            input.ident.span(),
            format!(
                "missing #[syncable] attribute on `{}`; add #[syncable(id = \"my-store\")]",
                input.ident
            ),
        ));
    }

    store_id
}

/// Parses the contents of one `#[syncable(...)]` attribute.
///
/// Returns the store id if one was given and valid; records an error for
/// every problem otherwise.
fn syncable_attr(attr: &Attribute, errors: &mut Errors) -> Option<StoreId> {
    if !matches!(attr.meta, Meta::List(_)) {
        // `#[syncable]` or `#[syncable = "..."]`.
        errors.push(syn::Error::new_spanned(
            attr,
            "expected #[syncable(id = \"...\")]",
        ));
        return None;
    }

    let errors_before = errors.len();
    let mut seen_id = false;
    let mut store_id = None;

    let result = attr.parse_nested_meta(|meta| {
        if !meta.path.is_ident(ID) {
            errors.push(meta.error(format!(
                "unknown syncable attribute `{}`; expected `{ID}`",
                path_to_string(&meta.path)
            )));
            return skip_value(meta.input);
        }

        if seen_id {
            errors.push(meta.error("duplicate `id` in #[syncable(...)]"));
            return skip_value(meta.input);
        }
        seen_id = true;

        if !meta.input.peek(Token![=]) {
            errors.push(meta.error("expected `id = \"...\"`, e.g. #[syncable(id = \"my-store\")]"));
            return skip_value(meta.input);
        }

        match parse_lit_str(&meta)? {
            Ok(lit) => match StoreId::from_lit(&lit) {
                Ok(id) => store_id = Some(id),
                Err(err) => errors.push(err),
            },
            Err(err) => errors.push(err),
        }
        Ok(())
    });

    if let Err(err) = result {
        errors.push(err);
    }

    // Only complain about a missing `id` if the attribute was otherwise
    // clean: `#[syncable(idd = "x")]` already reports the misspelled key.
    if !seen_id && errors.len() == errors_before {
        errors.push(syn::Error::new_spanned(
            attr,
            "missing `id` in #[syncable(...)]; add `id = \"my-store\"`",
        ));
    }

    store_id
}

/// Parses `= <expr>` after a key and checks the expression is a string
/// literal.
///
/// The outer `Result` is a syntax error that aborts parsing the attribute;
/// the inner one is a recoverable "not a string literal" error spanned at the
/// expression.
fn parse_lit_str(meta: &ParseNestedMeta<'_>) -> syn::Result<syn::Result<LitStr>> {
    let expr: Expr = meta.value()?.parse()?;
    Ok(match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit),
        other => Err(syn::Error::new_spanned(
            other,
            "expected a string literal for `id`, e.g. `id = \"my-store\"`",
        )),
    })
}

/// Skips the rest of one nested item (`= value` or `(...)`) up to the next
/// top-level comma, so parsing can continue with the following item.
fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// Renders a path such as `a::b` for error messages.
fn path_to_string(path: &Path) -> String {
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    let joined = segments.join("::");
    if path.leading_colon.is_some() {
        format!("::{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    /// Parses `input` and returns the messages of all errors, in order.
    fn error_messages(input: &DeriveInput) -> Vec<String> {
        match container(input) {
            Ok(_) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn store_id_of(input: &DeriveInput) -> String {
        match container(input) {
            Ok(container) => container.store_id.as_str().to_owned(),
            Err(err) => panic!("unexpected error: {err}"),
        }
    }

    #[test]
    fn named_struct() {
        let input: DeriveInput = parse_quote! {
            #[derive(Syncable)]
            #[syncable(id = "todos")]
            struct TodoState { items: Vec<u32> }
        };
        assert_eq!(store_id_of(&input), "todos");
        let container = container(&input).unwrap();
        assert_eq!(container.ident, "TodoState");
    }

    #[test]
    fn tuple_and_unit_structs() {
        let tuple: DeriveInput = parse_quote! {
            #[syncable(id = "tuple")]
            struct Tuple(u32, String);
        };
        assert_eq!(store_id_of(&tuple), "tuple");
        let unit: DeriveInput = parse_quote! {
            #[syncable(id = "unit")]
            struct Unit;
        };
        assert_eq!(store_id_of(&unit), "unit");
    }

    #[test]
    fn trailing_comma_and_other_attributes() {
        let input: DeriveInput = parse_quote! {
            /// Docs.
            #[serde(default)]
            #[syncable(id = "a.b-c_d",)]
            #[allow(dead_code)]
            struct S {}
        };
        assert_eq!(store_id_of(&input), "a.b-c_d");
    }

    #[test]
    fn generics_are_kept() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "wrapper")]
            struct Wrapper<T: Clone> where T: Default { inner: T }
        };
        let container = container(&input).unwrap();
        assert_eq!(container.generics.params.len(), 1);
        assert!(container.generics.where_clause.is_some());
    }

    #[test]
    fn enum_is_rejected() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "e")]
            enum E { A, B }
        };
        let messages = error_messages(&input);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].starts_with("`Syncable` can only be derived for structs; enums"));
    }

    #[test]
    fn union_is_rejected() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "u")]
            union U { a: u32, b: f32 }
        };
        let messages = error_messages(&input);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].starts_with("`Syncable` can only be derived for structs; unions"));
    }

    #[test]
    fn enum_still_reports_attribute_errors_but_not_missing_attribute() {
        let input: DeriveInput = parse_quote! {
            enum E { A }
        };
        assert_eq!(error_messages(&input).len(), 1);

        let input: DeriveInput = parse_quote! {
            #[syncable(id = "bad id")]
            enum E { A }
        };
        assert_eq!(error_messages(&input).len(), 2);
    }

    #[test]
    fn missing_attribute() {
        let input: DeriveInput = parse_quote! {
            struct Todo { x: u32 }
        };
        assert_eq!(
            error_messages(&input),
            ["missing #[syncable] attribute on `Todo`; add #[syncable(id = \"my-store\")]"]
        );
    }

    #[test]
    fn path_and_name_value_forms() {
        let input: DeriveInput = parse_quote! {
            #[syncable]
            struct S;
        };
        assert_eq!(
            error_messages(&input),
            ["expected #[syncable(id = \"...\")]"]
        );
        let input: DeriveInput = parse_quote! {
            #[syncable = "x"]
            struct S;
        };
        assert_eq!(
            error_messages(&input),
            ["expected #[syncable(id = \"...\")]"]
        );
    }

    #[test]
    fn id_without_value() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id)]
            struct S;
        };
        assert_eq!(
            error_messages(&input),
            ["expected `id = \"...\"`, e.g. #[syncable(id = \"my-store\")]"]
        );
        let input: DeriveInput = parse_quote! {
            #[syncable(id("x"))]
            struct S;
        };
        assert_eq!(error_messages(&input).len(), 1);
    }

    #[test]
    fn empty_attribute_is_missing_id() {
        let input: DeriveInput = parse_quote! {
            #[syncable()]
            struct S;
        };
        assert_eq!(
            error_messages(&input),
            ["missing `id` in #[syncable(...)]; add `id = \"my-store\"`"]
        );
    }

    #[test]
    fn unknown_keys() {
        let input: DeriveInput = parse_quote! {
            #[syncable(idd = "x")]
            struct S;
        };
        assert_eq!(
            error_messages(&input),
            ["unknown syncable attribute `idd`; expected `id`"]
        );
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "ok", name = "x", crate::path(a, b), flag)]
            struct S;
        };
        assert_eq!(
            error_messages(&input),
            [
                "unknown syncable attribute `name`; expected `id`",
                "unknown syncable attribute `crate::path`; expected `id`",
                "unknown syncable attribute `flag`; expected `id`",
            ]
        );
    }

    #[test]
    fn duplicate_id() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "a", id = "b")]
            struct S;
        };
        assert_eq!(
            error_messages(&input),
            ["duplicate `id` in #[syncable(...)]"]
        );
    }

    #[test]
    fn non_string_ids() {
        for input in [
            parse_quote! { #[syncable(id = 5)] struct S; },
            parse_quote! { #[syncable(id = todos)] struct S; },
            parse_quote! { #[syncable(id = b"todos")] struct S; },
            parse_quote! { #[syncable(id = concat!("a", "b"))] struct S; },
        ] {
            assert_eq!(
                error_messages(&input),
                ["expected a string literal for `id`, e.g. `id = \"my-store\"`"]
            );
        }
    }

    #[test]
    fn invalid_store_ids() {
        let long = "x".repeat(129);
        for id in ["", "to do", "a/b", long.as_str()] {
            let input: DeriveInput = parse_quote! {
                #[syncable(id = #id)]
                struct S;
            };
            let messages = error_messages(&input);
            assert_eq!(messages.len(), 1, "{id:?}: {messages:?}");
            assert!(messages[0].contains("[A-Za-z0-9._-]"), "{messages:?}");
        }
    }

    #[test]
    fn multiple_attributes() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "a")]
            #[syncable(id = "b")]
            struct S;
        };
        assert_eq!(
            error_messages(&input),
            ["duplicate #[syncable] attribute; use a single #[syncable(id = \"...\")] attribute"]
        );
    }

    #[test]
    fn all_errors_are_reported_together() {
        let input: DeriveInput = parse_quote! {
            #[syncable(idd = "x", id = "bad id!", id = 5)]
            #[syncable(id = "second")]
            struct S;
        };
        let messages = error_messages(&input);
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].starts_with("unknown syncable attribute `idd`"));
        assert!(messages[1].starts_with("store id contains invalid character ' '"));
        assert!(messages[2].starts_with("duplicate `id`"));
        assert!(messages[3].starts_with("duplicate #[syncable] attribute"));
    }

    #[test]
    fn syntax_error_aborts_only_that_attribute() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "a" "b")]
            struct S;
        };
        // One syntax error from syn; no cascading "missing id".
        assert_eq!(error_messages(&input).len(), 1);
    }
}
