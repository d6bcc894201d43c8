use unused_bits::{initials, title_case, word_count, wrap};

#[test]
fn wraps_greedily() {
    let lines = wrap("the quick brown fox jumps over the lazy dog", 10);
    assert_eq!(
        lines,
        vec!["the quick", "brown fox", "jumps over", "the lazy", "dog"]
    );
    assert_eq!(wrap("", 5), Vec::<String>::new());
    assert_eq!(wrap("a b", 0), vec!["a", "b"]);
}

#[test]
fn long_words_get_their_own_line() {
    let mut lines = wrap("tiny enormousword x", 5);
    assert_eq!(lines, vec!["tiny", "enormousword", "x"]);
    assert_eq!(word_count(&lines.join(" ")), 3);
}
