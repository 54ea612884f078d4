//! Compile-pass and compile-fail tests for `#[derive(Syncable)]`.

#[test]
fn derive_ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
