use complexity_perf::{bar_chart, label, moving_average, Buckets, Range};

#[test]
fn charts_and_labels() {
    let mut b = Buckets::new(
        Range {
            low: 0.0,
            high: 10.0,
        },
        3,
    );
    for v in [1.0, 2.0, 4.0, 9.5] {
        assert!(b.add(v));
    }
    assert_eq!(bar_chart(&b), "##|#|#|");
    assert_eq!(label(&b, 0), "2 of 4");
    assert_eq!(label(&b, 9), "0 of 4");
}

#[test]
fn moving_averages() {
    assert_eq!(
        moving_average(&[1.0, 2.0, 3.0, 4.0], 2),
        vec![1.5, 2.5, 3.5]
    );
    assert!(moving_average(&[1.0], 2).is_empty());
    assert!(moving_average(&[1.0], 0).is_empty());
}
