//! `tgpipe-macros`: the derives of `tgpipe`, `#[derive(CallbackData)]` and
//! `#[derive(StatesGroup)]`. Use them through `tgpipe` (`tgpipe::CallbackData`,
//! `tgpipe::StatesGroup`), which re-exports them beside their traits.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{Data, DeriveInput, Fields, LitStr, Type, parse_macro_input};

/// Implements `tgpipe::callback_data::CallbackData` and the extractor for a struct with
/// named fields; the prefix comes from `#[callback(prefix = "...")]`.
#[proc_macro_derive(CallbackData, attributes(callback))]
pub fn derive_callback_data(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    callback_data(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `tgpipe::fsm::StatesGroup`, `From<_> for StateName` and `Filter` (a state
/// passes in that state) for an enum of unit variants.
#[proc_macro_derive(StatesGroup)]
pub fn derive_states_group(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    states_group(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn prefix_of(input: &DeriveInput) -> syn::Result<LitStr> {
    let mut prefix = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("callback")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("prefix") {
                prefix = Some(meta.value()?.parse::<LitStr>()?);
                Ok(())
            } else {
                Err(meta.error("expected `prefix = \"...\"`"))
            }
        })?;
    }
    prefix.ok_or_else(|| {
        syn::Error::new_spanned(
            &input.ident,
            "callback data needs its prefix: `#[callback(prefix = \"...\")]`",
        )
    })
}

/// The last segment of a type's path (`Uuid` for `uuid::Uuid`).
fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn callback_data(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let prefix = prefix_of(input)?;
    let name = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            name,
            "CallbackData is derived for a struct",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            name,
            "CallbackData needs named fields",
        ));
    };
    let idents: Vec<_> = fields
        .named
        .iter()
        .filter_map(|f| f.ident.clone())
        .collect();
    let names: Vec<String> = idents.iter().map(|i| i.to_string()).collect();
    let mut packs = Vec::new();
    let mut unpacks = Vec::new();
    for (field, ident) in fields.named.iter().zip(&idents) {
        let ty = &field.ty;
        let field_name = ident.to_string();
        // aiogram writes a UUID as 32 hex digits (`uuid.hex`); `Uuid`'s `FromStr` reads
        // that form back.
        if last_segment(ty).as_deref() == Some("Uuid") {
            packs.push(quote! { self.#ident.to_string().replace('-', "") });
        } else {
            packs.push(quote! { (&::tgpipe::callback_data::field::Field(&self.#ident)).pack() });
        }
        unpacks.push(quote! {
            #ident: {
                let text: &str = it.next().copied().unwrap_or_default();
                (&::tgpipe::callback_data::field::Parse::<#ty>(::std::marker::PhantomData))
                    .unpack(text)
                    .ok_or_else(|| ::tgpipe::callback_data::CallbackDataError::Field {
                        field: #field_name,
                        value: text.to_owned(),
                    })?
            }
        });
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::tgpipe::callback_data::CallbackData for #name #ty_generics #where_clause {
            const PREFIX: &'static str = #prefix;
            const FIELDS: &'static [&'static str] = &[#(#names),*];

            fn field_values(&self) -> ::std::vec::Vec<::std::string::String> {
                #[allow(unused_imports)]
                use ::tgpipe::callback_data::field::{PackBool as _, PackText as _};
                ::std::vec![#(#packs),*]
            }

            #[allow(unused_variables, unused_mut)]
            fn from_field_values(
                values: &[&str],
            ) -> ::std::result::Result<Self, ::tgpipe::callback_data::CallbackDataError> {
                #[allow(unused_imports)]
                use ::tgpipe::callback_data::field::{UnpackBool as _, UnpackText as _};
                let mut it = values.iter();
                ::std::result::Result::Ok(#name { #(#unpacks),* })
            }
        }

        impl #impl_generics ::tgpipe::extract::FromContext for #name #ty_generics #where_clause {
            fn from_context(
                cx: &::tgpipe::Context,
            ) -> ::std::result::Result<Self, ::tgpipe::extract::ExtractError> {
                cx.get::<#name>()
                    .cloned()
                    .ok_or(::tgpipe::extract::ExtractError::Missing(stringify!(#name)))
            }
            fn requirement() -> ::std::option::Option<::tgpipe::extract::Requirement> {
                ::std::option::Option::Some(::tgpipe::extract::Requirement::of::<#name>())
            }
        }
    })
}

fn states_group(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            name,
            "StatesGroup is derived for an enum",
        ));
    };
    let mut variants = Vec::new();
    for v in &data.variants {
        if !matches!(v.fields, Fields::Unit) {
            return Err(syn::Error::new_spanned(
                v,
                "a state is a variant without fields",
            ));
        }
        variants.push(&v.ident);
    }
    let stored: Vec<String> = variants.iter().map(|v| format!("{name}:{v}")).collect();
    let group = name.to_string();
    Ok(quote! {
        impl ::tgpipe::fsm::StatesGroup for #name {
            const GROUP: &'static str = #group;

            fn all() -> &'static [Self] {
                &[#(#name::#variants),*]
            }

            fn name(self) -> &'static str {
                match self {
                    #(#name::#variants => #stored,)*
                }
            }
        }

        impl ::tgpipe::filter::Filter for #name {
            fn check<'a>(
                &'a self,
                cx: &'a ::tgpipe::Context,
            ) -> ::tgpipe::handler::BoxFuture<'a, ::tgpipe::filter::FilterOutcome> {
                ::tgpipe::fsm::state_is(*self, cx)
            }
            fn requires(&self) -> ::std::vec::Vec<::tgpipe::extract::Requirement> {
                ::tgpipe::fsm::state_requires()
            }
        }

        impl ::std::convert::From<#name> for ::tgpipe::fsm::StateName {
            fn from(s: #name) -> ::tgpipe::fsm::StateName {
                ::tgpipe::fsm::StateName::from_static(::tgpipe::fsm::StatesGroup::name(s))
            }
        }
    })
}
