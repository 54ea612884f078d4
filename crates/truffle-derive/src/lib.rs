//! `#[derive(Syncable)]` for [`truffle-actors`].
//!
//! Don't depend on this crate directly: use the re-export
//! `truffle_actors::Syncable`, which is both the trait and this derive (with
//! the default `derive` feature).
//!
//! # Usage
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(truffle_actors::Syncable, Clone, Debug, Default, Serialize, Deserialize)]
//! #[syncable(id = "todos")]
//! struct TodoState {
//!     items: Vec<String>,
//! }
//!
//! assert_eq!(<TodoState as truffle_actors::Syncable>::STORE_ID, "todos");
//! ```
//!
//! expands to
//!
//! ```ignore
//! #[automatically_derived]
//! impl ::truffle_actors::Syncable for TodoState {
//!     const STORE_ID: &'static str = "todos";
//! }
//! ```
//!
//! The derive only supplies `STORE_ID`. The trait's supertraits
//! (`Serialize`, `DeserializeOwned`, `Clone`, `Default`, `Send`, `Sync`,
//! `'static`) come from your own derives, as above.
//!
//! # The `#[syncable(...)]` attribute
//!
//! Exactly one `#[syncable(id = "...")]` attribute is required. `id` is the
//! store id: every node that joins the store uses it as the gossip topic
//! suffix, so all peers sharing a store must agree on it. A store id is
//! 1 to 128 bytes of `[A-Za-z0-9._-]` (ASCII letters, digits, `.`, `_`, `-`);
//! the derive checks this at compile time, and `truffle-actors` applies the
//! same rule at runtime.
//!
//! Any struct shape works (named fields, tuple or unit). Enums and unions
//! are rejected; put an enum in a field of a struct instead.
//!
//! # Generics
//!
//! Generic parameters and where clauses are copied onto the impl unchanged,
//! and no bounds are added. Because the trait requires `Self: Serialize +
//! DeserializeOwned + Clone + Default + Send + Sync + 'static`, a generic
//! struct must bound its parameters itself. A `DeserializeOwned` bound on the
//! struct clashes with the `T: Deserialize<'de>` bound serde's derive adds
//! ("type annotations needed: cannot satisfy `T: Deserialize<'de>`"), so
//! tell serde the struct's own bounds suffice:
//!
//! ```ignore
//! use serde::{de::DeserializeOwned, Deserialize, Serialize};
//!
//! #[derive(truffle_actors::Syncable, Clone, Default, Serialize, Deserialize)]
//! #[serde(bound(deserialize = ""))]
//! #[syncable(id = "wrapper")]
//! struct Wrapper<T>
//! where
//!     T: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static,
//! {
//!     inner: T,
//! }
//! ```
//!
//! # Errors
//!
//! All problems with the input are reported together, each pointing at the
//! offending token: a missing attribute, a malformed attribute, an unknown
//! key, a duplicated `id` or attribute, a non-string `id`, an invalid store
//! id, or a non-struct input.
//!
//! [`truffle-actors`]: https://docs.rs/truffle-actors

mod codegen;
mod model;
mod parse;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `truffle_actors::Syncable` for a struct.
///
/// Requires a `#[syncable(id = "...")]` attribute naming the store id,
/// 1 to 128 bytes of `[A-Za-z0-9._-]`. See the [crate docs](crate) for
/// details.
#[proc_macro_derive(Syncable, attributes(syncable))]
pub fn derive_syncable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    parse::container(&input)
        .map(|container| codegen::expand(&container))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
