//! Regression-test skeletons for a change: every public free function the
//! change adds or edits that no test calls gets a `#[test]` that calls it,
//! built as a syntax tree with `quote`, checked to parse with `syn`, and
//! written formatted by `prettyplease` at the end of its own file (a
//! `#[cfg(test)]` module, so private modules and binaries work too). The
//! validation then runs it as part of the same change.
//!
//! A skeleton only calls: arguments are `Default::default()`, so only
//! functions whose every argument type has a default are covered (no
//! generics, no `self`, no `async`/`unsafe`), and a panic inside the call is
//! caught — the test pins that the function stays callable and gives the
//! next change a place for assertions; it never refuses a good change for
//! an input nobody chose. Pure: the modifier hands in texts and writes what
//! comes back.

use std::collections::BTreeSet;

use quote::{ToTokens, format_ident, quote};
use syn::visit::Visit;

/// One changed Rust file under `src/`.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub before: Option<String>,
    pub after: String,
}

/// A test written into a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub path: String,
    /// The test function's name.
    pub test: String,
    /// The file's new text: its old text and the formatted module.
    pub text: String,
}

/// The prefix of every generated module and test, so they are told apart
/// (and a function that has one is called by a test).
pub const PREFIX: &str = "agent_regression_";

/// Skeletons for `changed`, given the names every test of the workspace
/// calls (`called_by_tests`, asked for only when a changed public function
/// needs it: reading every test file is the costly part).
pub fn generate(
    changed: &[Source],
    called_by_tests: impl FnOnce() -> BTreeSet<String>,
) -> Vec<Generated> {
    let mut called_by_tests = Some(called_by_tests);
    let mut called: Option<BTreeSet<String>> = None;
    let mut generated = Vec::new();
    for source in changed {
        let Ok(after) = syn::parse_file(&source.after) else {
            continue;
        };
        let before = source
            .before
            .as_deref()
            .and_then(|text| syn::parse_file(text).ok());
        let mut text = source.after.clone();
        for function in after.items.iter().filter_map(|item| match item {
            syn::Item::Fn(f) => Some(f),
            _ => None,
        }) {
            let name = function.sig.ident.to_string();
            if !matches!(function.vis, syn::Visibility::Public(_))
                || unchanged(before.as_ref(), function)
                || has_test_attribute(function)
            {
                continue;
            }
            let called = called.get_or_insert_with(|| {
                called_by_tests
                    .take()
                    .map(|scan| scan())
                    .unwrap_or_default()
            });
            if called.contains(&name) {
                continue;
            }
            let Some(module) = skeleton(function) else {
                continue;
            };
            // Checked to parse back, then formatted as prettyplease writes it.
            let Ok(file) = syn::parse2::<syn::File>(module) else {
                continue;
            };
            let formatted = prettyplease::unparse(&file);
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push('\n');
            text.push_str(&formatted);
            generated.push(Generated {
                path: source.path.clone(),
                test: format!("{PREFIX}{name}"),
                text: text.clone(),
            });
        }
    }
    // One entry a file, holding all of its tests' text.
    let mut last_per_file: Vec<Generated> = Vec::new();
    for entry in generated.iter().rev() {
        if !last_per_file.iter().any(|g| g.path == entry.path) {
            last_per_file.push(Generated {
                test: generated
                    .iter()
                    .filter(|g| g.path == entry.path)
                    .map(|g| g.test.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                ..entry.clone()
            });
        }
    }
    last_per_file.reverse();
    last_per_file
}

fn has_test_attribute(function: &syn::ItemFn) -> bool {
    function.attrs.iter().any(|a| a.path().is_ident("test"))
}

/// Whether the base holds the same function, token for token.
fn unchanged(before: Option<&syn::File>, function: &syn::ItemFn) -> bool {
    let tokens = function.to_token_stream().to_string();
    before.is_some_and(|file| {
        file.items.iter().any(|item| match item {
            syn::Item::Fn(old) => {
                old.sig.ident == function.sig.ident && old.to_token_stream().to_string() == tokens
            }
            _ => false,
        })
    })
}

/// The module with one test calling `function` with default arguments;
/// `None` when its signature cannot be called that way.
fn skeleton(function: &syn::ItemFn) -> Option<proc_macro2::TokenStream> {
    let sig = &function.sig;
    if sig.asyncness.is_some()
        || sig.unsafety.is_some()
        || sig.abi.is_some()
        || !sig.generics.params.is_empty()
        || sig.variadic.is_some()
    {
        return None;
    }
    let mut arguments = Vec::new();
    for input in &sig.inputs {
        match input {
            syn::FnArg::Receiver(_) => return None,
            syn::FnArg::Typed(typed) if has_default(&typed.ty) => {
                arguments.push(quote!(::core::default::Default::default()));
            }
            syn::FnArg::Typed(_) => return None,
        }
    }
    let name = &sig.ident;
    let module = format_ident!("{PREFIX}{name}");
    let test = format_ident!("{PREFIX}{name}");
    let doc = format!(" Generated: no test called `{name}`. A skeleton; add assertions.");
    Some(quote! {
        #[cfg(test)]
        mod #module {
            #[doc = #doc]
            #[test]
            fn #test() {
                let _ = ::std::panic::catch_unwind(|| super::#name(#(#arguments),*));
            }
        }
    })
}

/// Whether `ty` surely has a `Default`: the primitives, `String`, `&str`,
/// slices and the std collections and `Option` of anything.
fn has_default(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Reference(reference) if reference.mutability.is_none() => {
            match &*reference.elem {
                syn::Type::Path(path) => path.path.is_ident("str"),
                syn::Type::Slice(_) => true,
                _ => false,
            }
        }
        syn::Type::Tuple(tuple) => tuple.elems.iter().all(has_default),
        syn::Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return false;
            };
            const DEFAULTS: [&str; 26] = [
                "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128",
                "usize", "f32", "f64", "bool", "char", "String", "Vec", "Option", "HashMap",
                "BTreeMap", "HashSet", "BTreeSet", "VecDeque", "PathBuf", "Duration",
            ];
            DEFAULTS.contains(&last.ident.to_string().as_str())
        }
        _ => false,
    }
}

/// The names that tests call in one file: every call and method call
/// inside a `#[test]` function, a `#[cfg(test)]` module, or anywhere in a
/// file under `tests/` (`whole_file`).
pub fn called_by_tests(text: &str, whole_file: bool, into: &mut BTreeSet<String>) {
    let Ok(file) = syn::parse_file(text) else {
        return;
    };
    let mut calls = Calls {
        in_test: whole_file,
        names: into,
    };
    calls.visit_file(&file);
}

struct Calls<'a> {
    in_test: bool,
    names: &'a mut BTreeSet<String>,
}

impl<'ast> Visit<'ast> for Calls<'_> {
    fn visit_item_fn(&mut self, node: &'ast syn::ItemFn) {
        let outer = self.in_test;
        self.in_test |= has_test_attribute(node);
        syn::visit::visit_item_fn(self, node);
        self.in_test = outer;
    }

    fn visit_item_mod(&mut self, node: &'ast syn::ItemMod) {
        let outer = self.in_test;
        self.in_test |= node.attrs.iter().any(is_cfg_test);
        syn::visit::visit_item_mod(self, node);
        self.in_test = outer;
    }

    fn visit_expr_path(&mut self, node: &'ast syn::ExprPath) {
        // A function named in a test, called or passed along.
        if self.in_test
            && let Some(last) = node.path.segments.last()
        {
            self.names.insert(last.ident.to_string());
        }
        syn::visit::visit_expr_path(self, node);
    }

    fn visit_macro(&mut self, node: &'ast syn::Macro) {
        // `assert_eq!(f(1), 2)`: a macro's body is tokens to syn; read it as
        // expressions, or else take every name in it (a name wrongly taken
        // for a call only spares a skeleton).
        if self.in_test {
            use syn::punctuated::Punctuated;
            match node.parse_body_with(Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated) {
                Ok(expressions) => {
                    for expression in &expressions {
                        self.visit_expr(expression);
                    }
                }
                Err(_) => idents(node.tokens.clone(), self.names),
            }
        }
        syn::visit::visit_macro(self, node);
    }

    fn visit_expr_method_call(&mut self, node: &'ast syn::ExprMethodCall) {
        if self.in_test {
            self.names.insert(node.method.to_string());
        }
        syn::visit::visit_expr_method_call(self, node);
    }
}

fn idents(tokens: proc_macro2::TokenStream, into: &mut BTreeSet<String>) {
    for token in tokens {
        match token {
            proc_macro2::TokenTree::Ident(ident) => {
                into.insert(ident.to_string());
            }
            proc_macro2::TokenTree::Group(group) => idents(group.stream(), into),
            _ => {}
        }
    }
}

fn is_cfg_test(attribute: &syn::Attribute) -> bool {
    attribute.path().is_ident("cfg")
        && attribute
            .parse_args::<syn::Meta>()
            .is_ok_and(|meta| meta.path().is_ident("test"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(1, 2), 3);\n    }\n}\n";

    fn tested(texts: &[&str]) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for text in texts {
            called_by_tests(text, false, &mut names);
        }
        names
    }

    #[test]
    fn a_new_public_function_no_test_calls_gets_a_skeleton_that_parses_and_is_formatted() {
        let after =
            format!("{BASE}\npub fn double(x: u64, label: &str) -> u64 {{\n    x * 2\n}}\n");
        let source = Source {
            path: "src/lib.rs".into(),
            before: Some(BASE.into()),
            after: after.clone(),
        };
        let generated = generate(&[source], || tested(&[&after]));
        assert_eq!(generated.len(), 1, "{generated:?}");
        let entry = &generated[0];
        assert_eq!(entry.test, "agent_regression_double");
        assert!(entry.text.starts_with(&after));
        let added = &entry.text[after.len() + 1..];
        // Parses back with syn and is exactly what prettyplease writes.
        let file = syn::parse_file(added).unwrap();
        assert_eq!(prettyplease::unparse(&file), added);
        assert!(added.contains("super::double("), "{added}");
        syn::parse_file(&entry.text).unwrap();
    }

    #[test]
    fn tested_private_unchanged_or_uncallable_functions_get_none() {
        let tested_fn = BASE.replace("a + b", "b + a");
        let private = format!("{BASE}\nfn hidden() {{}}\n");
        let generic = format!("{BASE}\npub fn any<T>(t: T) -> T {{\n    t\n}}\n");
        let borrowed =
            format!("{BASE}\npub fn len(v: &mut Vec<u8>) -> usize {{\n    v.len()\n}}\n");
        for after in [tested_fn.as_str(), &private, &generic, &borrowed, BASE] {
            let source = Source {
                path: "src/lib.rs".into(),
                before: Some(BASE.into()),
                after: after.to_string(),
            };
            assert_eq!(generate(&[source], || tested(&[after])), vec![], "{after}");
        }
    }

    #[test]
    fn names_called_in_tests_are_found_in_test_functions_modules_and_test_files() {
        let names = tested(&[BASE]);
        assert!(names.contains("add"));
        let mut from_file = BTreeSet::new();
        called_by_tests("fn main() { tiny::mul(2, 3); }", true, &mut from_file);
        assert!(from_file.contains("mul"));
        let mut outside = BTreeSet::new();
        called_by_tests("pub fn f() { g(); }", false, &mut outside);
        assert!(outside.is_empty(), "a call outside tests is not a test");
    }
}
