//! Random initialisation for training (oss-nano): dense experts, values drawn on the host from a
//! seeded generator so that a run is reproducible on any device.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::attention::Attention;
use super::experts::{ExpertMatrix, Experts};
use super::moe::Moe;
use super::norm::RmsNorm;
use super::rope::RotaryTable;
use super::vocab::{Embedding, LmHead};
use super::{DecoderLayer, GptOss};
use crate::config::{GptOssConfig, LayerType};

struct Init {
    rng: StdRng,
    device: Device,
}

impl Init {
    fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        // Box-Muller; two values per draw.
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f32 = self.rng.random::<f32>().max(f32::MIN_POSITIVE);
            let u2: f32 = self.rng.random();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = std::f32::consts::TAU * u2;
            out.push(r * t.cos());
            out.push(r * t.sin());
        }
        out.truncate(n);
        out
    }

    fn tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    fn constant<const D: usize>(&self, value: f32, shape: [usize; D]) -> Param<Tensor<D>> {
        let n = shape.iter().product();
        Param::from_tensor(self.tensor(vec![value; n], shape))
    }

    /// [fan_in, fan_out] weight with std gain / sqrt(fan_in), zero bias.
    fn linear(&mut self, fan_in: usize, fan_out: usize, gain: f32, bias: bool) -> Linear {
        let w = self.normal(fan_in * fan_out, gain / (fan_in as f32).sqrt());
        Linear {
            weight: Param::from_tensor(self.tensor(w, [fan_in, fan_out])),
            bias: bias.then(|| self.constant(0.0, [fan_out])),
        }
    }
}

impl GptOss {
    /// A randomly initialised model (dense experts, zero biases and sinks, unit norms).
    pub fn init_random(config: &GptOssConfig, device: &Device, seed: u64) -> GptOss {
        let mut init = Init {
            rng: StdRng::seed_from_u64(seed),
            device: device.clone(),
        };
        let (h, i, e) = (
            config.hidden_size,
            config.intermediate_size,
            config.num_experts,
        );
        let q = config.num_attention_heads * config.head_dim;
        let kv = config.num_key_value_heads * config.head_dim;
        // Residual branches scaled down with depth (GPT-2).
        let out_gain = 1.0 / (2.0 * config.num_hidden_layers as f32).sqrt();
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let self_attn = Attention {
                    q_proj: init.linear(h, q, 1.0, true),
                    k_proj: init.linear(h, kv, 1.0, true),
                    v_proj: init.linear(h, kv, 1.0, true),
                    o_proj: init.linear(q, h, out_gain, true),
                    sinks: init.constant(0.0, [config.num_attention_heads]),
                    num_heads: config.num_attention_heads,
                    num_kv_heads: config.num_key_value_heads,
                    head_dim: config.head_dim,
                };
                let gate_up = init.normal(e * h * 2 * i, 1.0 / (h as f32).sqrt());
                let down = init.normal(e * i * h, out_gain / (i as f32).sqrt());
                let experts = Experts {
                    gate_up: ExpertMatrix::Dense(Param::from_tensor(
                        init.tensor(gate_up, [e, h, 2 * i]),
                    )),
                    gate_up_bias: init.constant(0.0, [e, 2 * i]),
                    down: ExpertMatrix::Dense(Param::from_tensor(init.tensor(down, [e, i, h]))),
                    down_bias: init.constant(0.0, [e, h]),
                    swiglu_limit: config.swiglu_limit,
                    swiglu_alpha: config.swiglu_alpha,
                };
                DecoderLayer {
                    input_layernorm: RmsNorm::new(
                        init.tensor(vec![1.0; h], [h]),
                        config.rms_norm_eps,
                    ),
                    self_attn,
                    post_attention_layernorm: RmsNorm::new(
                        init.tensor(vec![1.0; h], [h]),
                        config.rms_norm_eps,
                    ),
                    mlp: Moe {
                        router: init.linear(h, e, 1.0, true),
                        experts,
                        top_k: config.experts_per_token,
                        path: Default::default(),
                    },
                    sliding_window: (config.layer_types[l] == LayerType::Sliding)
                        .then_some(config.sliding_window),
                }
            })
            .collect();
        let v = config.vocab_size;
        let embed = init.normal(v * h, 1.0);
        let head = init.normal(v * h, 1.0 / (h as f32).sqrt());
        GptOss {
            embed_tokens: Embedding::from_rows(&embed, [v, h], device),
            layers,
            norm: RmsNorm::new(init.tensor(vec![1.0; h], [h]), config.rms_norm_eps),
            lm_head: LmHead::from_rows(&head, [v, h], device),
            config: config.clone(),
            rope: RotaryTable::new(config),
        }
    }
}
