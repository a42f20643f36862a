//! Half-split rotary embedding with YaRN (spec 4.5), computed the way transformers computes it:
//! inverse frequencies in f32, the correction range rounded only when `truncate` is true, and the
//! YaRN concentration multiplied into both cos and sin.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{GptOssConfig, RopeScaling};

/// Inverse frequencies and the cos/sin multiplier for one model.
#[derive(Debug, Clone)]
pub struct RotaryTable {
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
}

impl RotaryTable {
    pub fn new(config: &GptOssConfig) -> Self {
        let dim = config.head_dim;
        let base = config.rope.theta as f32;
        // transformers: base ** (arange(0, dim, 2) / dim), all in f32.
        let pos_freqs: Vec<f32> = (0..dim / 2)
            .map(|i| base.powf((2 * i) as f32 / dim as f32))
            .collect();
        match &config.rope.scaling {
            RopeScaling::None => Self {
                inv_freq: pos_freqs.iter().map(|f| 1.0 / f).collect(),
                attention_factor: 1.0,
            },
            RopeScaling::Yarn {
                factor,
                beta_fast,
                beta_slow,
                original_max_position_embeddings,
                truncate,
                attention_factor,
            } => {
                let correction_dim = |rotations: f64| {
                    (dim as f64
                        * (*original_max_position_embeddings as f64
                            / (rotations * 2.0 * std::f64::consts::PI))
                            .ln())
                        / (2.0 * config.rope.theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    // Spec 6: rounding the range is wrong for gpt-oss, but it is what
                    // transformers does when a config asks for it (or omits `truncate`).
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0) as f32;
                let mut high = high.min(dim as f64 - 1.0) as f32;
                if low == high {
                    high += 0.001;
                }
                let inv_freq = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let extrapolation = 1.0 / f;
                        let interpolation = 1.0 / (*factor as f32 * f);
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        interpolation * (1.0 - keep) + extrapolation * keep
                    })
                    .collect();
                let attention_factor = attention_factor.unwrap_or(if *factor <= 1.0 {
                    1.0
                } else {
                    0.1 * factor.ln() + 1.0
                });
                Self {
                    inv_freq,
                    attention_factor: attention_factor as f32,
                }
            }
        }
    }

    /// cos and sin (already multiplied by the attention factor) for `positions` ([B, T] row-major),
    /// shaped [B, 1, T, head_dim / 2] to broadcast over heads.
    pub fn cos_sin(
        &self,
        positions: &[usize],
        batch: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let half = self.inv_freq.len();
        let t = positions.len() / batch;
        // Each distinct position once: the rows of a batch share theirs (scoring's 8 x 2048
        // positions are 2,048 distinct ones; the trigonometry took 12 ms of host time per pass).
        let mut distinct = positions.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut cos_of = Vec::with_capacity(distinct.len() * half);
        let mut sin_of = Vec::with_capacity(distinct.len() * half);
        for &p in &distinct {
            for &f in &self.inv_freq {
                // One f32 product, as transformers' f32 matmul of inv_freq by positions.
                let angle = (p as f32 * f) as f64;
                cos_of.push(angle.cos() as f32 * self.attention_factor);
                sin_of.push(angle.sin() as f32 * self.attention_factor);
            }
        }
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for p in positions {
            let at = distinct
                .binary_search(p)
                .expect("every position is in `distinct`")
                * half;
            cos.extend_from_slice(&cos_of[at..at + half]);
            sin.extend_from_slice(&sin_of[at..at + half]);
        }
        let shape = [batch, 1, t, half];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Rotates the halves of the last dimension: pair i is (i, i + d/2), not (2i, 2i+1).
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [_, _, _, d] = x.dims();
    let half = d / 2;
    let a = x.clone().narrow(3, 0, half);
    let b = x.narrow(3, half, half);
    let first = a.clone() * cos.clone() - b.clone() * sin.clone();
    let second = b * cos.clone() + a * sin.clone();
    Tensor::cat(vec![first, second], 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GPT_OSS_20B_CONFIG;
    use std::path::Path;

    fn table() -> RotaryTable {
        let c = GptOssConfig::from_json_str(GPT_OSS_20B_CONFIG, Path::new("20b")).unwrap();
        RotaryTable::new(&c)
    }

    #[test]
    fn inv_freq_matches_spec_table() {
        // Spec 4.5 reference values (double precision); f32 agrees to ~1e-6 relative.
        let expected = [
            (0, 1.000000000e+00),
            (8, 5.081327482e-02),
            (9, 3.170569618e-02),
            (12, 6.794959490e-03),
            (17, 1.293187012e-04),
            (18, 3.830881237e-05),
            (31, 3.023511428e-07),
        ];
        let t = table();
        for (i, v) in expected {
            let rel = ((t.inv_freq[i] as f64 - v) / v).abs();
            assert!(rel < 1e-6, "inv_freq[{i}] = {} vs {v}", t.inv_freq[i]);
        }
        assert!((t.attention_factor as f64 - 1.3465735902799727).abs() < 1e-7);
    }

    #[test]
    fn cos_sin_spot_values_match_spec() {
        let t = table();
        let device = Device::flex();
        let (cos, sin) = t.cos_sin(&[1, 100, 5000], 1, &device);
        let cos = cos.try_into_vec_as::<f32>().unwrap();
        let sin = sin.try_into_vec_as::<f32>().unwrap();
        let half = 32;
        for (row, i, c, s) in [
            (0, 0, 0.727556816, 1.133102605),
            (1, 12, 1.047485543, 0.846188201),
            (2, 17, 1.074755241, 0.811271598),
        ] {
            assert!(
                (cos[row * half + i] as f64 - c).abs() < 2e-6,
                "cos p{row} i{i}"
            );
            assert!(
                (sin[row * half + i] as f64 - s).abs() < 2e-6,
                "sin p{row} i{i}"
            );
        }
    }

    /// The RoPE kernel's reference (burn ops, [B, T, heads, d] in, heads moved in front) is the
    /// model's rotation.
    #[test]
    fn kernel_reference_is_the_model_rotation() {
        let device = Device::flex();
        let (b, t, heads, d) = (2, 3, 4, 64);
        let (cos, sin) = table().cos_sin(&[0, 1, 2, 7, 8, 9], b, &device);
        let x = Tensor::<4>::random(
            [b, t, heads, d],
            burn::tensor::Distribution::Default,
            &device,
        );
        let ours = apply_rotary(x.clone().swap_dims(1, 2), &cos, &sin);
        let reference = gpt_oss_kernels::rotary_rows::reference_rotary_rows(x, cos, sin);
        let diff: f32 = (ours - reference).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }
    /// Positions repeated across rows and out of order get each their own position's values.
    #[test]
    fn cos_sin_of_repeated_positions_match_each_alone() {
        let device = Device::flex();
        let t = table();
        let positions = [5, 0, 7, 5, 3, 0];
        let (cos, sin) = t.cos_sin(&positions, 2, &device);
        let half = t.inv_freq.len();
        let cos = cos.try_into_vec_as::<f32>().unwrap();
        let sin = sin.try_into_vec_as::<f32>().unwrap();
        for (i, &p) in positions.iter().enumerate() {
            let (one_cos, one_sin) = t.cos_sin(&[p], 1, &device);
            assert_eq!(
                cos[i * half..(i + 1) * half],
                one_cos.try_into_vec_as::<f32>().unwrap()
            );
            assert_eq!(
                sin[i * half..(i + 1) * half],
                one_sin.try_into_vec_as::<f32>().unwrap()
            );
        }
    }
}
