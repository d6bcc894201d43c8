use std::collections::HashMap;

use tidy_stats::{histogram, mean, median, variance, word_frequency};

#[test]
fn summary_of_a_small_sample() {
    let sample = vec![2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
    assert_eq!(mean(&sample), Some(5.0));
    assert_eq!(median(&sample), Some(4.5));
    assert_eq!(variance(&sample), Some(4.0));
}

#[test]
fn histogram_and_words() {
    let h = histogram(&[1.0, 2.0, 3.0, 4.0], 0.0, 4.0, 2).unwrap();
    assert_eq!(h.counts, vec![1, 2]);
    assert_eq!(word_frequency("a b a").get("a") == Some(&2), true);
}
