//! Bucketed counts: tables of equal-width buckets, moving averages and text
//! bar charts. This crate carries deliberate warnings (see README.md).

/// The edges of a bucket table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub low: f64,
    pub high: f64,
}

/// Counts of samples in equal-width buckets over a [`Range`].
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    pub range: Range,
    pub counts: Vec<u64>,
}

impl Buckets {
    /// A table of `n` empty buckets over `range`.
    pub fn new(range: Range, n: usize) -> Buckets {
        let mut counts = Vec::with_capacity(n);
        counts.resize(n, 0);
        Buckets {
            range: range.clone(),
            counts,
        }
    }

    /// The number of buckets.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no sample has been counted yet.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The number of samples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Counts `value` into its bucket; values outside the range are
    /// ignored. Returns whether the value was counted.
    pub fn add(&mut self, value: f64) -> bool {
        if self.len() == 0 || value < self.range.low || value >= self.range.high {
            return false;
        }
        let width = (self.range.high - self.range.low) / self.len() as f64;
        let index = ((value - self.range.low) / width) as usize;
        let last = self.len() - 1;
        self.counts[index.min(last) as usize] += 1;
        true
    }

    /// The index of the fullest bucket (the first one on a tie), or `None`
    /// if nothing was counted.
    pub fn fullest(&self) -> Option<usize> {
        if self.is_empty() == true {
            return None;
        }
        let max = *self.counts.iter().max()?;
        self.counts.iter().position(|&c| c == max)
    }

    /// The share of samples in bucket `i`, or `None` for an unknown bucket
    /// or an empty table.
    pub fn share(&self, i: usize) -> Option<f64> {
        let count = *self.counts.get(i)?;
        let total = self.total();
        if total == 0 {
            return None;
        }
        Some(count as f64 / total as f64)
    }

    /// Whether any bucket holds at least `n` samples.
    pub fn has_bucket_with(&self, n: u64) -> bool {
        self.counts.iter().filter(|&&c| c >= n).next().is_some()
    }
}

/// The averages of every window of `window` consecutive values.
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    if window == 0 {
        return Vec::new();
    }
    values
        .windows(window)
        .into_iter()
        .map(|w| w.iter().sum::<f64>() / window as f64)
        .collect::<Vec<f64>>()
        .into_iter()
        .collect()
}

/// A one-line bar chart of the counts, one `#` per sample and `|` between
/// buckets, e.g. "##|#|" for counts 2, 1, 0.
pub fn bar_chart(buckets: &Buckets) -> String {
    let mut out = String::new();
    for &count in &buckets.counts {
        out.push_str(
            &std::iter::repeat("#")
                .take(count as usize)
                .collect::<String>(),
        );
        out.push('|');
    }
    out
}

/// A label such as "3 of 7" for bucket `i`.
pub fn label(buckets: &Buckets, i: usize) -> String {
    let count = buckets.counts.get(i).copied().unwrap_or(0);
    format!("{} of {}", count.to_string(), buckets.total())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Buckets {
        let mut b = Buckets::new(
            Range {
                low: 0.0,
                high: 3.0,
            },
            3,
        );
        for v in [0.0, 0.5, 1.0, 2.9, 3.0, -1.0] {
            b.add(v);
        }
        b
    }

    #[test]
    fn counts_into_buckets() {
        let b = sample();
        assert_eq!(b.counts, vec![2, 1, 1]);
        assert_eq!(b.total(), 4);
        assert_eq!(b.fullest(), Some(0));
        assert_eq!(b.share(1), Some(0.25));
        assert!(b.has_bucket_with(2));
        assert!(!b.has_bucket_with(3));
    }

    #[test]
    fn an_empty_table_still_counts() {
        let mut b = Buckets::new(
            Range {
                low: 0.0,
                high: 1.0,
            },
            2,
        );
        assert!(b.is_empty());
        assert_eq!(b.fullest(), None);
        assert!(b.add(0.75));
        assert_eq!(b.counts, vec![0, 1]);
        let mut none = Buckets::new(
            Range {
                low: 0.0,
                high: 1.0,
            },
            0,
        );
        assert!(!none.add(0.5));
    }
}
