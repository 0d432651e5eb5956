//! Cosine annealing of the learning rate, stepped once per epoch (PyTorch's
//! `CosineAnnealingLR` with `T_max = epochs`, `eta_min = 0`).

use std::f64::consts::PI;

/// Learning rate for 0-based `epoch` out of `epochs`: `base · (1 + cos(π·epoch/epochs)) / 2`.
pub fn cosine_lr(base: f64, epoch: usize, epochs: usize) -> f64 {
    if epochs == 0 {
        return base;
    }
    base * (1.0 + (PI * epoch as f64 / epochs as f64).cos()) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by `scripts/ref/cosine_lr.py` (PyTorch 2.11 CosineAnnealingLR, lr 0.01, T_max 20).
    const PYTORCH: [f64; 20] = [
        0.01,
        0.009938441702975689,
        0.009755282581475769,
        0.00945503262094184,
        0.009045084971874739,
        0.008535533905932738,
        0.007938926261462366,
        0.007269952498697735,
        0.006545084971874738,
        0.005782172325201155,
        0.005,
        0.004217827674798847,
        0.0034549150281252636,
        0.0027300475013022664,
        0.0020610737385376348,
        0.0014644660940672626,
        0.0009549150281252633,
        0.0005449673790581611,
        0.00024471741852423234,
        6.15582970243117e-05,
    ];

    #[test]
    fn matches_pytorch_values() {
        for (e, want) in PYTORCH.iter().enumerate() {
            let got = cosine_lr(0.01, e, 20);
            assert!((got - want).abs() < 1e-15, "epoch {e}: {got} vs {want}");
        }
    }
}
