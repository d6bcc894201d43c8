use style_lints::{parse, sum_list, to_roman, Numeral};

#[test]
fn known_numerals() {
    assert_eq!(to_roman(1994).as_deref(), Some("MCMXCIV"));
    assert_eq!(to_roman(3999).as_deref(), Some("MMMCMXCIX"));
    assert_eq!(
        parse(" XLII "),
        Some(Numeral {
            value: 42,
            text: "XLII".to_string()
        })
    );
}

#[test]
fn sums_lists() {
    assert_eq!(sum_list("X, V, I").as_deref(), Some("XVI"));
    assert_eq!(sum_list("MM,MM"), None);
    assert_eq!(sum_list("X,,V"), None);
}
