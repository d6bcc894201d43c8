use test_warnings::{human_bytes, percent};

fn unit_of(text: &str) -> String {
    let unit = text.split(' ').nth(1).unwrap_or("").to_string();
    unit
}

#[test]
fn byte_sizes() {
    let mut cases = vec![(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB")];
    cases.push((5 * 1024 * 1024, "5.0 MiB"));
    for (bytes, expected) in cases {
        assert_eq!(human_bytes(bytes), expected);
    }
    assert_eq!(unit_of(&human_bytes(1 << 40)), "TiB");
    assert!(human_bytes(u64::MAX).len() > 0);
}

#[test]
fn percentages() {
    let total = 8.0;
    assert_eq!(percent(1.0, 8.0, 1).as_deref(), Some("12.5%"));
    assert_eq!(percent(1.0, 0.0, 2).is_some(), false);
}
