//! The step schedule of sparse-coder training: steps per run, k annealed from `k_max` to `k`, the learning
//! rate's linear warm-up, the L1 coefficient's warm-up, and where the curve is sampled.

use diffsql_core::config::TrainConfig;

/// Everything about a step that depends only on its number.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub total_steps: u64,
    pub k_aux: usize,
    k: usize,
    k_max: usize,
    k_anneal_steps: u64,
    lr: f64,
    warmup_steps: u64,
    l1: f64,
    curve_every: u64,
}

impl Schedule {
    /// The schedule of `config` over `train_rows` rows of width `d_model`.
    pub fn new(config: &TrainConfig, train_rows: usize, d_model: usize) -> Self {
        let steps_per_epoch = train_rows.div_ceil(config.batch_size) as u64;
        let total_steps = steps_per_epoch * config.epochs as u64;
        Self {
            total_steps,
            k_aux: if config.k_aux == 0 {
                (d_model / 2).max(1)
            } else {
                config.k_aux
            },
            k: config.k,
            k_max: if config.k_max == 0 { config.k } else { config.k_max },
            k_anneal_steps: config.k_anneal_steps as u64,
            lr: config.lr,
            warmup_steps: config.warmup_steps as u64,
            l1: config.l1,
            // About 20 curve points, at least 10 steps apart (each evaluates the held-out sample).
            curve_every: (total_steps / 20).max(10),
        }
    }

    /// k at `step`: `k_max` annealed linearly to `k` over `k_anneal_steps`.
    pub fn k(&self, step: u64) -> usize {
        let anneal = if self.k_anneal_steps == 0 {
            1.0
        } else {
            (step as f64 / self.k_anneal_steps as f64).min(1.0)
        };
        (self.k_max as f64 - (self.k_max - self.k) as f64 * anneal).round() as usize
    }

    /// The learning rate at `step`, warmed up linearly over `warmup_steps`.
    pub fn lr(&self, step: u64) -> f64 {
        self.lr * ((step as f64 + 1.0) / self.warmup_steps.max(1) as f64).min(1.0)
    }

    /// The L1 coefficient at `step`, warmed up over the first 5% of the run.
    pub fn l1(&self, step: u64) -> f64 {
        let warmup = ((step as f64 + 1.0) / (0.05 * self.total_steps as f64).max(1.0)).min(1.0);
        self.l1 * warmup
    }

    /// Whether the curve gets a point after `step` steps.
    pub fn is_curve_point(&self, step: u64) -> bool {
        step.is_multiple_of(self.curve_every) || step == self.total_steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> TrainConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn k_anneals_from_k_max_to_k_and_the_rates_warm_up() {
        let c = config(serde_json::json!({
            "kind": "crosscoder", "k": 10, "k_max": 50, "k_anneal_steps": 100, "warmup_steps": 10,
            "lr": 1e-3, "batch_size": 10, "epochs": 2
        }));
        let s = Schedule::new(&c, 1000, 8);
        assert_eq!(s.total_steps, 200);
        assert_eq!((s.k(0), s.k(50), s.k(100), s.k(150)), (50, 30, 10, 10));
        assert!((s.lr(0) - 1e-4).abs() < 1e-12 && (s.lr(9) - 1e-3).abs() < 1e-12 && s.lr(500) == 1e-3);
        assert!(s.is_curve_point(10) && !s.is_curve_point(11) && s.is_curve_point(200));
        assert_eq!(s.k_aux, 4);
    }
}
