//! The trainer: next-token cross-entropy plus the router's load-balancing loss, AdamW with
//! linear warmup and cosine decay, gradient clipping by global norm. It trains the same `GptOss`
//! the rest of the workbench runs (no second model implementation); the model must live on an
//! autodiff device (`device.autodiff()`).

use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use gpt_oss_model::{GptOss, TokenBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub learning_rate: f64,
    pub min_learning_rate: f64,
    pub warmup_steps: usize,
    pub weight_decay: f32,
    pub grad_clip_norm: f32,
    /// Weight of the load-balancing loss.
    pub balance_loss_coef: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 3000,
            batch_size: 16,
            seq_len: 128,
            learning_rate: 3e-3,
            min_learning_rate: 1e-4,
            warmup_steps: 100,
            weight_decay: 0.01,
            grad_clip_norm: 1.0,
            balance_loss_coef: 0.02,
        }
    }
}

/// What one optimisation step measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub learning_rate: f64,
    pub loss: f32,
    pub lm_loss: f32,
    pub balance_loss: f32,
    pub tokens: usize,
    pub seconds: f64,
}

/// Linear warmup to `learning_rate`, then cosine decay to `min_learning_rate` at the last step.
pub fn learning_rate(step: usize, c: &TrainConfig) -> f64 {
    if step < c.warmup_steps {
        return c.learning_rate * (step + 1) as f64 / c.warmup_steps as f64;
    }
    let span = (c.steps - c.warmup_steps).max(1) as f64;
    let progress = ((step - c.warmup_steps) as f64 / span).min(1.0);
    c.min_learning_rate
        + 0.5
            * (c.learning_rate - c.min_learning_rate)
            * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Random windows of `seq_len + 1` tokens: inputs and next-token targets.
fn sample_batch(tokens: &[u32], c: &TrainConfig, rng: &mut StdRng) -> (TokenBatch, Vec<i64>) {
    let span = c.seq_len + 1;
    let mut rows = Vec::with_capacity(c.batch_size);
    let mut targets = Vec::with_capacity(c.batch_size * c.seq_len);
    for _ in 0..c.batch_size {
        let start = rng.random_range(0..tokens.len() - span);
        let window = &tokens[start..start + span];
        rows.push(window[..c.seq_len].to_vec());
        targets.extend(window[1..].iter().map(|&t| t as i64));
    }
    (TokenBatch::left_padded(&rows, 0), targets)
}

/// Trains `model` on the token stream; `on_step` sees every step's report and the model (for
/// progress, logs and periodic checkpoints, which live at the caller).
pub fn train(
    mut model: GptOss,
    tokens: &[u32],
    c: &TrainConfig,
    mut on_step: impl FnMut(&StepReport, &GptOss),
) -> GptOss {
    assert!(
        tokens.len() > c.seq_len + 1,
        "the token stream is shorter than one sequence"
    );
    let mut optim = AdamWConfig::new()
        .with_weight_decay(c.weight_decay)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(c.grad_clip_norm)))
        .init();
    let mut rng = StdRng::seed_from_u64(c.seed);
    let device = model.device();
    for step in 0..c.steps {
        let start = Instant::now();
        let (batch, targets) = sample_batch(tokens, c, &mut rng);
        let (logits, balance) = model.forward_train(&batch);
        let targets = Tensor::<3, Int>::from_data(
            TensorData::new(targets, [c.batch_size, c.seq_len, 1]),
            &device,
        );
        let lm_loss = log_softmax(logits, 2).gather(2, targets).mean().neg();
        let loss = lm_loss.clone() + balance.clone().mul_scalar(c.balance_loss_coef);
        let report_values = Tensor::cat(
            vec![loss.clone().detach(), lm_loss.detach(), balance.detach()],
            0,
        )
        .try_into_vec_as::<f32>()
        .expect("loss values");
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = learning_rate(step, c);
        model = optim.step(lr, model, grads);
        let report = StepReport {
            step: step + 1,
            learning_rate: lr,
            loss: report_values[0],
            lm_loss: report_values[1],
            balance_loss: report_values[2],
            tokens: c.batch_size * c.seq_len,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_step(&report, &model);
    }
    model
}

/// The trained model without autodiff (for evaluation and export).
pub fn inference_copy(model: &GptOss) -> GptOss {
    model.valid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = TrainConfig {
            steps: 1000,
            warmup_steps: 100,
            learning_rate: 1e-3,
            min_learning_rate: 1e-5,
            ..Default::default()
        };
        assert!((learning_rate(0, &c) - 1e-5).abs() < 1e-12);
        assert!((learning_rate(99, &c) - 1e-3).abs() < 1e-12);
        assert!(learning_rate(500, &c) < 1e-3 && learning_rate(500, &c) > 1e-5);
        assert!((learning_rate(1000, &c) - 1e-5).abs() < 1e-12);
    }
}
