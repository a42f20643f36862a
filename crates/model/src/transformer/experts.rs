//! Expert weights and the clamped SwiGLU expert (spec 4.6).
//!
//! Weights live on the device either decoded ([E, in, out] floats: fast, 8x the bytes of MXFP4)
//! or packed (the checkpoint's MXFP4 bytes as u32 words, decoded per selected expert inside the
//! forward pass): the full-size models only fit a GPU packed.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor, TensorData};

use crate::checkpoint::mxfp4::{FP4_VALUES, scale_value};

/// One projection of every expert of a layer.
// One value per layer and projection: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ExpertMatrix {
    /// [E, in, out] floats (transformers' dense layout).
    Dense(Param<Tensor<3>>),
    /// MXFP4 as stored, packed in words.
    Mxfp4(PackedMxfp4),
}

/// MXFP4 blocks as i32 words [E, out, in / 8] (8 nibbles each, low nibble = first value) and
/// scale bytes packed four to a word [E, ceil(out * in / 32 / 4)], plus the two small decode
/// tables: on the device it takes the checkpoint's bytes, not more.
#[derive(Module, Debug)]
pub struct PackedMxfp4 {
    pub words: Param<Tensor<3, Int>>,
    pub scale_words: Param<Tensor<2, Int>>,
    pub fp4_table: Param<Tensor<1>>,
    pub scale_table: Param<Tensor<1>>,
}

impl PackedMxfp4 {
    /// The words and scale words as the grouped GPU kernels take them.
    pub fn kernel_weights(&self) -> gpt_oss_kernels::grouped_mxfp4::PackedWeights {
        gpt_oss_kernels::grouped_mxfp4::PackedWeights {
            words: self.words.val(),
            scales: self.scale_words.val(),
        }
    }

    pub fn new(words: Tensor<3, Int>, scale_words: Tensor<2, Int>) -> Self {
        let device = words.device();
        let fp4 = Tensor::from_data(TensorData::new(FP4_VALUES.to_vec(), [16]), &device);
        let scale_values: Vec<f32> = (0..=255u8).map(scale_value).collect();
        let scale_table = Tensor::from_data(TensorData::new(scale_values, [256]), &device);
        Self {
            words: Param::initialized(ParamId::new(), words),
            scale_words: Param::initialized(ParamId::new(), scale_words),
            fp4_table: Param::from_tensor(fp4),
            scale_table: Param::from_tensor(scale_table),
        }
    }

    /// Expert `e` decoded to [in, out].
    fn expert(&self, e: usize) -> Tensor<2> {
        let [_, out, words_per_row] = self.words.dims();
        let input = words_per_row * 8;
        let w = self
            .words
            .val()
            .narrow(0, e, 1)
            .reshape([out, words_per_row]);
        let nibbles: Vec<Tensor<2, Int>> = (0..8)
            .map(|n| {
                w.clone()
                    .bitwise_right_shift_scalar(4 * n)
                    .bitwise_and_scalar(0xF)
            })
            .collect();
        let codes = Tensor::stack::<3>(nibbles, 2).reshape([out * input]);
        let values = self
            .fp4_table
            .val()
            .select(0, codes)
            .reshape([out, input / 32, 32]);
        let groups = out * (input / 32);
        let [_, per_expert] = self.scale_words.dims();
        let sw = self.scale_words.val().narrow(0, e, 1).reshape([per_expert]);
        let scale_bytes: Vec<Tensor<1, Int>> = (0..4)
            .map(|j| {
                sw.clone()
                    .bitwise_right_shift_scalar(8 * j)
                    .bitwise_and_scalar(0xFF)
            })
            .collect();
        let scale_codes = Tensor::stack::<2>(scale_bytes, 1)
            .reshape([per_expert * 4])
            .narrow(0, 0, groups);
        let scales = self
            .scale_table
            .val()
            .select(0, scale_codes)
            .reshape([out, input / 32, 1]);
        (values * scales).reshape([out, input]).transpose()
    }
}

impl ExpertMatrix {
    /// Expert `e` as [in, out].
    pub fn expert(&self, e: usize) -> Tensor<2> {
        match self {
            ExpertMatrix::Dense(w) => {
                let [_, i, o] = w.dims();
                w.val().narrow(0, e, 1).reshape([i, o])
            }
            ExpertMatrix::Mxfp4(p) => p.expert(e),
        }
    }

    pub fn num_experts(&self) -> usize {
        match self {
            ExpertMatrix::Dense(w) => w.dims()[0],
            ExpertMatrix::Mxfp4(p) => p.words.dims()[0],
        }
    }
}

/// All experts of one layer.
#[derive(Module, Debug)]
pub struct Experts {
    /// Output columns interleave gate (even) and up (odd) units (spec 3.4).
    pub gate_up: ExpertMatrix,
    pub gate_up_bias: Param<Tensor<2>>,
    pub down: ExpertMatrix,
    pub down_bias: Param<Tensor<2>>,
    pub swiglu_limit: f32,
    pub swiglu_alpha: f32,
}

impl Experts {
    /// Expert `e` on tokens `x` [m, H] -> [m, H] (before the gate weight).
    pub fn forward_expert(&self, e: usize, x: Tensor<2>) -> Tensor<2> {
        let bias_gu = self.gate_up_bias.val().narrow(0, e, 1);
        let u = x.matmul(self.gate_up.expert(e)) + bias_gu;
        let act = swiglu(u, self.swiglu_limit, self.swiglu_alpha);
        act.matmul(self.down.expert(e)) + self.down_bias.val().narrow(0, e, 1)
    }
}

/// Clamped SwiGLU on gate_up outputs [m, 2I] whose columns interleave gate (even) and up
/// (odd) units -> [m, I]: upper clamp only on gate, both sides on up, "+1" on up (spec 4.6).
pub fn swiglu(u: Tensor<2>, limit: f32, alpha: f32) -> Tensor<2> {
    let [m, width] = u.dims();
    let inter = width / 2;
    let u = u.reshape([m, inter, 2]);
    let gate = u
        .clone()
        .narrow(2, 0, 1)
        .reshape([m, inter])
        .clamp_max(limit);
    let up = u.narrow(2, 1, 1).reshape([m, inter]).clamp(-limit, limit);
    let glu = gate.clone() * sigmoid(gate.mul_scalar(alpha));
    glu * up.add_scalar(1.0)
}
