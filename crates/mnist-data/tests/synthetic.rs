//! The synthetic data set: shape, balance, determinism, and that it is learnable but not
//! trivial (a nearest-centroid classifier as a quick stand-in for a model).

use mnist_data::{synthetic, MnistSplit};

#[test]
fn shape_balance_and_determinism() {
    let s = synthetic(1003, 7);
    assert_eq!(
        (s.images.count, s.images.rows, s.images.cols),
        (1003, 28, 28)
    );
    assert_eq!(s.images.pixels.len(), 1003 * 784);
    let mut counts = [0usize; 10];
    for &l in &s.labels {
        counts[usize::from(l)] += 1;
    }
    assert!(counts.iter().all(|&c| c == 100 || c == 101), "{counts:?}");
    assert_eq!(s, synthetic(1003, 7));
    assert_ne!(s.images.pixels, synthetic(1003, 8).images.pixels);
    // Not a sorted label sequence.
    assert_ne!(&s.labels[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // Mostly dark, like MNIST: mean grey level well below half.
    let mean =
        s.images.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / s.images.pixels.len() as f64;
    assert!((15.0..90.0).contains(&mean), "mean pixel {mean}");
}

fn centroids(train: &MnistSplit) -> Vec<Vec<f64>> {
    let mut sums = vec![vec![0f64; 784]; 10];
    let mut counts = [0f64; 10];
    for (i, &l) in train.labels.iter().enumerate() {
        let img = train.images.image(i).unwrap();
        for (s, &p) in sums[usize::from(l)].iter_mut().zip(img) {
            *s += f64::from(p);
        }
        counts[usize::from(l)] += 1.0;
    }
    for (s, c) in sums.iter_mut().zip(counts) {
        s.iter_mut().for_each(|v| *v /= c);
    }
    sums
}

#[test]
fn learnable_but_not_trivial() {
    let train = synthetic(2000, 1);
    let test = synthetic(1000, 2);
    let c = centroids(&train);
    let correct = (0..test.images.count)
        .filter(|&i| {
            let img = test.images.image(i).unwrap();
            let dist = |k: usize| -> f64 {
                c[k].iter()
                    .zip(img)
                    .map(|(m, &p)| (m - f64::from(p)).powi(2))
                    .sum()
            };
            let best = (0..10)
                .min_by(|&a, &b| dist(a).total_cmp(&dist(b)))
                .unwrap();
            best == usize::from(test.labels[i])
        })
        .count();
    let acc = correct as f64 / test.images.count as f64;
    println!("nearest-centroid accuracy on synthetic(1000, 2): {acc:.3}");
    assert!(acc > 0.6, "accuracy {acc} too low: not learnable enough");
    assert!(acc < 0.95, "accuracy {acc}: too trivial");
}
