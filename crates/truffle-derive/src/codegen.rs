//! Emits the `impl ::truffle_actors::Syncable` block for a [`Container`].

use proc_macro2::TokenStream;
use quote::quote;

use crate::model::Container;

/// Generates the trait impl.
///
/// Paths are absolute so the output does not depend on what the user has
/// imported. Generics and where clauses are carried over unchanged; the
/// trait's supertraits (`Serialize`, `DeserializeOwned`, `Clone`, ...) are
/// checked by the compiler against the user's own derives.
pub(crate) fn expand(container: &Container<'_>) -> TokenStream {
    let ident = container.ident;
    let (impl_generics, ty_generics, where_clause) = container.generics.split_for_impl();
    let store_id = container.store_id.to_lit();

    quote! {
        #[automatically_derived]
        impl #impl_generics ::truffle_actors::Syncable for #ident #ty_generics #where_clause {
            const STORE_ID: &'static str = #store_id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use syn::{parse_quote, DeriveInput};

    fn expand_input(input: &DeriveInput) -> String {
        let container = parse::container(input).unwrap();
        expand(&container).to_string()
    }

    #[test]
    fn plain_struct() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "todos")]
            struct TodoState { items: Vec<u32> }
        };
        let expected = quote! {
            #[automatically_derived]
            impl ::truffle_actors::Syncable for TodoState {
                const STORE_ID: &'static str = "todos";
            }
        };
        assert_eq!(expand_input(&input), expected.to_string());
    }

    #[test]
    fn generic_struct() {
        let input: DeriveInput = parse_quote! {
            #[syncable(id = "wrapper")]
            struct Wrapper<T: Clone, const N: usize> where T: Default { inner: [T; N] }
        };
        let expected = quote! {
            #[automatically_derived]
            impl<T: Clone, const N: usize> ::truffle_actors::Syncable for Wrapper<T, N>
            where
                T: Default
            {
                const STORE_ID: &'static str = "wrapper";
            }
        };
        assert_eq!(expand_input(&input), expected.to_string());
    }
}
