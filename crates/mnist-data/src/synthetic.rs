//! [`synthetic`]: a small MNIST-shaped data set that models can learn, for tests and demos
//! without the real files.
//!
//! Class `c` draws a blob on a circle of radius 8 around the image centre at angle
//! `36° * c`, joined to the centre by a stroke, both jittered by up to 3 pixels; 70% of the
//! images also get a distractor blob at a random place, and every pixel gets uniform noise.
//! Neighbouring classes' blobs are 5 pixels apart, so jitter makes them overlap: a
//! nearest-centroid classifier gets about 80% (measured in `tests/synthetic.rs`), so a small
//! CNN or MLP learns it well above chance within a few hundred steps, but not instantly.

use crate::idx::IdxImages;
use crate::mnist::MnistSplit;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Side of a synthetic image, as in MNIST.
pub const SIDE: usize = 28;

/// `count` synthetic 28x28 examples from `seed` (deterministic); labels 0..=9, each class
/// appearing `count / 10` or `count / 10 + 1` times, in shuffled order.
pub fn synthetic(count: usize, seed: u64) -> MnistSplit {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    labels.shuffle(&mut rng);
    let mut pixels = Vec::with_capacity(count * SIDE * SIDE);
    let mut canvas = [0f32; SIDE * SIDE];
    for &label in &labels {
        draw(&mut canvas, label, &mut rng);
        pixels.extend(
            canvas
                .iter()
                .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8),
        );
    }
    MnistSplit {
        images: IdxImages {
            count,
            rows: SIDE,
            cols: SIDE,
            pixels,
        },
        labels,
    }
}

/// Renders one example of class `label` into `canvas` (values roughly in 0..=1).
fn draw(canvas: &mut [f32; SIDE * SIDE], label: u8, rng: &mut ChaCha8Rng) {
    let centre = (SIDE as f32 - 1.0) / 2.0;
    let angle = std::f32::consts::TAU * f32::from(label) / 10.0 - std::f32::consts::FRAC_PI_2;
    let jitter = |rng: &mut ChaCha8Rng| rng.gen_range(-3.0f32..3.0);
    let (bx, by) = (
        centre + 8.0 * angle.cos() + jitter(rng),
        centre + 8.0 * angle.sin() + jitter(rng),
    );
    let (sx, sy) = (centre + jitter(rng), centre + jitter(rng));
    let sigma = rng.gen_range(1.6f32..2.6);
    let peak = rng.gen_range(0.7f32..1.0);
    let stroke = rng.gen_range(0.35f32..0.65);
    let distractor = rng.gen_bool(0.7).then(|| {
        (
            rng.gen_range(3.0f32..24.0),
            rng.gen_range(3.0f32..24.0),
            rng.gen_range(0.4f32..0.9),
        )
    });
    for y in 0..SIDE {
        for x in 0..SIDE {
            let (px, py) = (x as f32, y as f32);
            let d2 = (px - bx).powi(2) + (py - by).powi(2);
            let mut v = peak * (-d2 / (2.0 * sigma * sigma)).exp();
            v += stroke * (1.0 - segment_distance(px, py, sx, sy, bx, by) / 1.2).max(0.0);
            if let Some((dx, dy, di)) = distractor {
                let d2 = (px - dx).powi(2) + (py - dy).powi(2);
                v += di * (-d2 / 2.0).exp();
            }
            v += rng.gen_range(0.0f32..0.15);
            canvas[y * SIDE + x] = v;
        }
    }
}

/// Distance from `(px, py)` to the segment `(ax, ay)`–`(bx, by)`.
fn segment_distance(px: f32, py: f32, ax: f32, ay: f32, bx: f32, by: f32) -> f32 {
    let (vx, vy) = (bx - ax, by - ay);
    let len2 = vx * vx + vy * vy;
    let t = if len2 > 0.0 {
        (((px - ax) * vx + (py - ay) * vy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (ax + t * vx, ay + t * vy);
    ((px - cx).powi(2) + (py - cy).powi(2)).sqrt()
}
