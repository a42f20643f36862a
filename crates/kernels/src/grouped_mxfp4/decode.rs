//! MXFP4 decoding: E2M1 codes and UE8M0 scales to values, one K step of an expert's weight
//! rows from packed words into a shared-memory stage (bf16 in 16-byte words, rows padded as
//! `staged_tiles` pads them: column-major B), and every expert's weights to bf16 in global
//! memory at once (`decode_experts_kernel`, for `Tiling::decoded`).

use cubecl::prelude::*;

use super::UNITS;
use crate::bf16_rows::EightBf16;
use crate::staged_tiles::{load_tile_words, staged_row_words, store_tile_words};

/// The E2M1 value of a 4-bit code (sign in bit 3).
#[cube]
pub(crate) fn fp4_value(code: u32) -> f32 {
    let magnitude = code & 7;
    let exponent = magnitude >> 1;
    let mantissa = f32::cast_from(magnitude & 1);
    let subnormal = mantissa * 0.5;
    let normal = (1.0 + 0.5 * mantissa) * f32::cast_from(1u32 << exponent) * 0.5;
    let value = select(exponent == 0, subnormal, normal);
    select(code >= 8, -value, value)
}

/// 2^(code - 127) for a UE8M0 scale byte (code 0 is the subnormal 2^-127).
#[cube]
pub(crate) fn scale_value(code: u32) -> f32 {
    let bits = select(code == 0, 0x0040_0000u32, code << 23);
    f32::reinterpret(bits)
}

/// The scale byte of MXFP4 block `block` (of the expert's row-major blocks, K / 32 per row),
/// from `scales` packed four bytes to a word, the expert's first word at `expert_scales`.
#[cube]
pub(super) fn scale_code(scales: &[u32], expert_scales: u32, block: u32) -> u32 {
    (scales[(expert_scales + block / 4) as usize] >> ((block % 4) * 8)) & 0xFF
}

/// Where this invocation's `i`-th word of a `tn x tk` stage comes from: (local weight row,
/// word within the row's `tk / 8` words of the step).
#[cube]
fn stage_word_position(i: u32, #[comptime] tk: usize) -> (u32, u32) {
    let w = UNIT_POS + i * UNITS;
    let words_per_step = (tk / 8) as u32;
    (w / words_per_step, w % words_per_step)
}

/// Where a workgroup's weights lie: its expert's first weight row (of all experts' rows),
/// first word and scale word, its first output column (weight row), and the sizes N and K.
#[derive(CubeType)]
pub(super) struct WeightsPlace {
    pub expert_rows: u32,
    pub expert_words: u32,
    pub expert_scales: u32,
    pub col_begin: u32,
    pub n: u32,
    pub k: u32,
}

/// The weights a grouped launch reads: the experts' MXFP4 words and scale words, or (with
/// `Tiling::decoded`) all experts' rows decoded to bf16 first, [E * N, K].
#[derive(CubeType)]
pub(super) struct WeightSources<'a> {
    pub words: &'a [u32],
    pub scales: &'a [u32],
    pub bf16_rows: &'a [EightBf16],
}

#[cube]
impl<'a> WeightSources<'a> {
    pub fn new(
        words: &'a [u32],
        scales: &'a [u32],
        bf16_rows: &'a [EightBf16],
    ) -> WeightSources<'a> {
        WeightSources::<'a> {
            words,
            scales,
            bf16_rows,
        }
    }
}

/// One K step's weights in this invocation's registers: MXFP4 words and scale codes, or with
/// weights decoded first (`Tiling::decoded`), 16-byte words of bf16 values.
#[derive(CubeType)]
pub(super) struct StepWeights {
    pub words: Array<u32>,
    pub scale_codes: Array<u32>,
    pub bf16_words: Array<EightBf16>,
}

/// Registers for this invocation's share of a `tn x tk` step (`decoded`: bf16 words only).
#[cube]
pub(super) fn step_weights(
    #[comptime] tn: usize,
    #[comptime] tk: usize,
    #[comptime] decoded: bool,
) -> StepWeights {
    let per_unit = tn * tk / 8 / UNITS as usize;
    let (packed, bf16) = comptime![if decoded {
        (1, per_unit)
    } else {
        (per_unit, 1)
    }];
    StepWeights {
        words: Array::<u32>::new(packed),
        scale_codes: Array::<u32>::new(packed),
        bf16_words: Array::<EightBf16>::new(bf16),
    }
}

/// Loads this invocation's share of step `k_begin`'s weights (zeros past row N): bf16 words
/// of the expert's decoded rows when `decoded`, MXFP4 words and scale codes otherwise.
#[cube]
pub(super) fn load_step_weights(
    sources: &WeightSources<'_>,
    loaded: &mut StepWeights,
    place: &WeightsPlace,
    k_begin: u32,
    #[comptime] tile: (usize, usize, usize),
    #[comptime] decoded: bool,
) {
    let (_, tn, tk) = tile;
    if comptime![decoded] {
        let (first_row, rows_end) = (
            place.expert_rows + place.col_begin,
            place.expert_rows + place.n,
        );
        let (rows, k) = (sources.bf16_rows, place.k);
        let into = &mut loaded.bf16_words;
        load_tile_words(
            rows, into, first_row, rows_end, k_begin, k, k, tn, tk, UNITS,
        );
    } else {
        let (words, scales) = (sources.words, sources.scales);
        load_stage_words(words, scales, loaded, place, k_begin, tn, tk);
    }
}

/// Stores the loaded step's weights into `stage` as bf16 rows (column-major B): decoded here
/// from MXFP4, or copied when they were decoded first.
#[cube]
pub(super) fn stage_step_weights(
    loaded: &StepWeights,
    table: &[f32],
    stage: &mut [EightBf16],
    #[comptime] tile: (usize, usize, usize),
    #[comptime] use_table: bool,
    #[comptime] decoded: bool,
) {
    let (_, tn, tk) = tile;
    if comptime![decoded] {
        store_tile_words(&loaded.bf16_words, stage, tn, tk, UNITS);
    } else {
        decode_stage_words(loaded, table, stage, tn, tk, use_table);
    }
}

/// Loads this invocation's words and scale bytes of step `k_begin` (zeros past row N).
#[cube]
fn load_stage_words(
    words: &[u32],
    scales: &[u32],
    loaded: &mut StepWeights,
    place: &WeightsPlace,
    k_begin: u32,
    #[comptime] tn: usize,
    #[comptime] tk: usize,
) {
    let per_unit = tn * tk / 8 / UNITS as usize;
    let k = place.k;
    #[unroll]
    for i in 0..per_unit {
        let (local_row, part) = stage_word_position(i as u32, tk);
        let row = place.col_begin + local_row;
        let mut word = 0u32;
        let mut code = 0u32;
        if row < place.n {
            word = words[(place.expert_words + row * (k / 8) + k_begin / 8 + part) as usize];
            let block = row * (k / 32) + (k_begin + part * 8) / 32;
            code = scale_code(scales, place.expert_scales, block);
        }
        loaded.words[i] = word;
        loaded.scale_codes[i] = code;
    }
}

/// Decodes loaded words into `stage` as 16-byte words: weight row `col` of the step at
/// `col * staged_row_words(tk)` (column-major B with rows padded by one word).
#[cube]
fn decode_stage_words(
    loaded: &StepWeights,
    table: &[f32],
    stage: &mut [EightBf16],
    #[comptime] tn: usize,
    #[comptime] tk: usize,
    #[comptime] use_table: bool,
) {
    let per_unit = tn * tk / 8 / UNITS as usize;
    let stride = comptime![staged_row_words(tk)] as u32;
    #[unroll]
    for i in 0..per_unit {
        let (local_row, part) = stage_word_position(i as u32, tk);
        stage[(local_row * stride + part) as usize] =
            decoded_word(loaded.words[i], loaded.scale_codes[i], table, use_table);
    }
}

/// The eight bf16 values of one MXFP4 word (eight codes, low nibble first) under the scale
/// byte `scale_code`, in memory order. The decoded values have at most two significant bits,
/// so the top half of their f32 bits is their bf16 (exact).
#[cube]
pub(super) fn decoded_word(
    word: u32,
    scale_code: u32,
    table: &[f32],
    #[comptime] use_table: bool,
) -> EightBf16 {
    let scale = scale_value(scale_code);
    let mut eight = EightBf16::new(0u32);
    #[unroll]
    for q in 0..4usize {
        let low = (word >> (q as u32 * 8)) & 0xF;
        let high = (word >> (q as u32 * 8 + 4)) & 0xF;
        let (low, high) = if comptime![use_table] {
            (table[low as usize], table[high as usize])
        } else {
            (fp4_value(low), fp4_value(high))
        };
        let low_bits = u32::reinterpret(low * scale) >> 16;
        let high_bits = u32::reinterpret(high * scale) & 0xFFFF_0000;
        eight.insert(q, low_bits | high_bits);
    }
    eight
}

/// Decodes the MXFP4 weights of the experts from `first_expert`, `words` [E, N, K / 8] and
/// `scales` [E, S], to bf16 `decoded` [.., N, K] (as 16-byte words, one per MXFP4 word): the
/// grouped kernel's weights when it takes them decoded (`Tiling::decoded`). One invocation per
/// word, `count` words in all (whole experts), over a grid of `grid_over_rows` workgroups.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_experts_kernel(
    words: &[u32],
    scales: &[u32],
    decoded: &mut [EightBf16],
    n: u32,
    k: u32,
    scale_words_per_expert: u32,
    first_expert: u32,
    count: u32,
) {
    let w = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X;
    if w >= count {
        terminate!();
    }
    let words_per_row = k / 8;
    let source = first_expert * n * words_per_row + w;
    let expert = source / (n * words_per_row);
    let row = (source / words_per_row) % n;
    let block = row * (k / 32) + (source % words_per_row) / 4;
    let code = scale_code(scales, expert * scale_words_per_expert, block);
    let no_table = Shared::<[f32]>::new_slice(1usize);
    decoded[w as usize] = decoded_word(words[source as usize], code, &no_table, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn the_decoding_kernel_compiles() {
        let compiled = compile_kernel!(
            decode_experts_kernel::DecodeExpertsKernel,
            CubeDim::new_1d(UNITS),
            [b b b s s s s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
