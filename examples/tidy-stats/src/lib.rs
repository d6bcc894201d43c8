//! Small statistics helpers. This crate carries deliberate warnings: it is the
//! workspace the agent improves (see README.md).

use std::collections::BTreeMap;
use std::collections::HashMap;

/// The arithmetic mean, or `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let sum: f64 = values.iter().sum();
    return Some(sum / values.len() as f64);
}

/// The median (the mean of the two middle values for an even count), or
/// `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.len() == 0 {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        Some(sorted[middle])
    } else {
        Some((sorted[middle - 1] + sorted[middle]) / 2.0)
    }
}

/// The population variance, or `None` for no values.
pub fn variance(values: &[f64]) -> Option<f64> {
    let mut m = mean(values)?;
    let squares: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    Some(squares / values.len() as f64)
}

/// Counts of values in equal-width buckets between `min` and `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub min: f64,
    pub width: f64,
    pub counts: Vec<usize>,
}

impl Histogram {
    /// The number of buckets.
    pub fn len(&self) -> usize {
        self.counts.len()
    }
}

/// Sorts `values` into `buckets` equal-width buckets over `[min, max)`;
/// values outside the range are left out. `None` if `buckets` is zero or the
/// range is empty.
pub fn histogram(values: &[f64], min: f64, max: f64, buckets: usize) -> Option<Histogram> {
    if buckets == 0 || max <= min {
        return None;
    }
    let n = values.len();
    let width = (max - min) / buckets as f64;
    let mut counts = vec![0; buckets];
    for &value in values {
        if value >= min && value < max {
            let index = ((value - min) / width) as usize;
            counts[index.min(buckets - 1)] += 1;
        }
    }
    Some(Histogram {
        min: min,
        width,
        counts,
    })
}

/// How often each word occurs, lowercased; words are runs of alphanumeric
/// characters.
pub fn word_frequency(text: &str) -> HashMap<String, usize> {
    let mut frequency = HashMap::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() == false {
            *frequency.entry(word.to_lowercase()).or_insert(0) += 1;
        }
    }
    frequency
}

fn sum_of_squares(values: &[f64]) -> f64 {
    values.iter().map(|v| v * v).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_median() {
        assert_eq!(mean(&[1.0, 2.0, 3.0, 6.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(mean(&[]).is_none(), true);
    }

    #[test]
    fn variance_of_a_constant_is_zero() {
        let mut values = vec![2.0; 5];
        assert_eq!(variance(&values), Some(0.0));
        assert_eq!(variance(&[1.0, 3.0]), Some(1.0));
    }

    #[test]
    fn histogram_buckets() {
        let h = histogram(&[0.0, 0.5, 1.0, 2.9, 3.0, -1.0], 0.0, 3.0, 3).unwrap();
        assert_eq!(h.counts, vec![2, 1, 1]);
        assert_eq!(h.len(), 3);
        assert!(histogram(&[1.0], 1.0, 1.0, 2).is_none());
    }

    #[test]
    fn words_are_counted_case_insensitively() {
        let frequency = word_frequency("The cat, the hat.");
        assert_eq!(frequency["the"], 2);
        assert_eq!(frequency["cat"], 1);
        assert!(word_frequency("  ,. ").len() == 0);
    }
}
