use mixed_bag::{parse, render, slug};

#[test]
fn slugs() {
    let cases = vec![("Demo App", "demo-app"), ("  max__size ", "max-size"), ("x", "x")];
    for (key, expected) in cases.iter() { assert_eq!(slug(key), *expected); }
    assert_eq!(slug("--").is_empty(), true);
}

#[test]
fn renders_back() {
    let mut text = "a = 1\nb = two\n";
    assert_eq!(render(&parse(text)), text);
    assert_eq!(render(&[]).len() == 0, true);
}
