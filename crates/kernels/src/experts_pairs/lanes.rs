//! What one invocation of the per-pair kernels does: fill the FP4 table, stage input rows in
//! shared memory as bf16 pairs, issue its weight blocks' loads, and add its share of the dot
//! products.

use crate::bf16_nearest::nearest_bf16_value;
use cubecl::prelude::*;

use super::{BLOCK, BLOCK_VECTORS, Four, LANES, Words};
use crate::grouped_mxfp4::{fp4_value, scale_value};

/// Fills `table` (16 entries, shared) with the FP4 values of codes 0..16 (no synchronisation).
#[cube]
pub(super) fn fill_fp4_table(table: &mut [f32]) {
    if UNIT_POS < 16 {
        table[UNIT_POS as usize] = fp4_value(UNIT_POS);
    }
}

/// The bf16 bits of `value` (rounded to nearest even) in the high half of a u32.
#[cube]
fn bf16_high_bits(value: f32) -> u32 {
    u32::reinterpret(nearest_bf16_value(value)) & 0xFFFF_0000
}

/// Copies `count` consecutive rows of `x` from row `first_row` (`blocks_per_row` blocks of 32
/// each, read as four-float vectors) into `inputs` (shared, [`BLOCK_VECTORS`] vectors per
/// block, the rows one after another), rounded to bf16 and packed two per word (the lower
/// index in the low half). Synchronises before (earlier readers) and after.
#[cube]
pub(super) fn load_input_rows(
    x: &[Four],
    inputs: &mut [Words],
    first_row: u32,
    count: u32,
    blocks_per_row: u32,
) {
    sync_cube();
    // Each shared vector holds eight inputs: two of x's vectors.
    let vectors = count * blocks_per_row * (BLOCK / 8);
    let mut v = UNIT_POS;
    while v < vectors {
        let low = x[(first_row * blocks_per_row * (BLOCK / 4) + 2 * v) as usize];
        let high = x[(first_row * blocks_per_row * (BLOCK / 4) + 2 * v + 1) as usize];
        inputs[((v / 4) * BLOCK_VECTORS + v % 4) as usize] = packed_bf16_pairs(low, high);
        v += CUBE_DIM;
    }
    sync_cube();
}

/// Eight f32 inputs (`low`, then `high`) rounded to bf16 and packed two per word, the lower
/// index in the low half.
#[cube]
fn packed_bf16_pairs(low: Four, high: Four) -> Words {
    let mut packed = Words::new(0u32);
    #[unroll]
    for i in 0..2usize {
        packed.insert(
            i,
            (bf16_high_bits(low.extract(2 * i)) >> 16) | bf16_high_bits(low.extract(2 * i + 1)),
        );
        packed.insert(
            i + 2,
            (bf16_high_bits(high.extract(2 * i)) >> 16) | bf16_high_bits(high.extract(2 * i + 1)),
        );
    }
    packed
}

/// As [`load_input_rows`] for the `count` rows listed in `listed[first..]`: row `r` of
/// `inputs` is row `listed[first + r] / divisor` of `x` (a pair's token at `divisor` = k, the
/// pair's own row at 1). Synchronises before (earlier readers) and after.
#[cube]
pub(super) fn load_listed_rows(
    x: &[Four],
    inputs: &mut [Words],
    listed: &[u32],
    first: u32,
    count: u32,
    divisor: u32,
    blocks_per_row: u32,
) {
    sync_cube();
    let row_vectors = blocks_per_row * (BLOCK / 8);
    let mut v = UNIT_POS;
    while v < count * row_vectors {
        let row = listed[(first + v / row_vectors) as usize] / divisor;
        let source = row * blocks_per_row * (BLOCK / 4) + 2 * (v % row_vectors);
        let low = x[source as usize];
        let high = x[(source + 1) as usize];
        inputs[((v / 4) * BLOCK_VECTORS + v % 4) as usize] = packed_bf16_pairs(low, high);
        v += CUBE_DIM;
    }
    sync_cube();
}

/// This invocation's blocks of weight row `row` (of the expert whose blocks start at vector
/// `expert_blocks` and scale words at `expert_scales`), stored from `slot * blocks_per_lane`
/// in `loaded` and `scale_words`: loads only, so that several rows' are in flight together.
/// Blocks past the row read as zeros.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn load_lane_blocks(
    words: &[Words],
    scales: &[u32],
    loaded: &mut Array<Words>,
    scale_words: &mut Array<u32>,
    #[comptime] slot: usize,
    expert_blocks: u32,
    expert_scales: u32,
    row: u32,
    blocks_per_row: u32,
    #[comptime] blocks_per_lane: usize,
) {
    let lane = UNIT_POS_X;
    #[unroll]
    for b in 0..blocks_per_lane {
        let block = lane + b as u32 * LANES;
        let index = row * blocks_per_row + block;
        let mut four = Words::new(0u32);
        let mut scale_word = 0u32;
        if block < blocks_per_row {
            four = words[(expert_blocks + index) as usize];
            scale_word = scales[(expert_scales + index / 4) as usize];
        }
        loaded[slot * blocks_per_lane + b] = four;
        scale_words[slot * blocks_per_lane + b] = scale_word >> ((index % 4) * 8);
    }
}

/// Adds this invocation's share of the dot products of input row `input_row` (in shared
/// `inputs`, as [`load_input_rows`] stores it) with the `count` weight rows loaded into slots
/// `first_slot..` by [`load_lane_blocks`] to `sums[first_slot..]`. Each block's inputs are
/// read once for all `count` rows.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn add_lane_dots(
    inputs: &[Words],
    input_row: u32,
    table: &[f32],
    loaded: &Array<Words>,
    scale_words: &Array<u32>,
    sums: &mut Array<f32>,
    #[comptime] first_slot: usize,
    #[comptime] count: usize,
    blocks_per_row: u32,
    #[comptime] blocks_per_lane: usize,
) {
    let lane = UNIT_POS_X;
    #[unroll]
    for b in 0..blocks_per_lane {
        let block = lane + b as u32 * LANES;
        if block < blocks_per_row {
            // The block's 32 inputs as f32: word w's eight codes meet inputs 8w..8w + 8.
            let mut xs = Array::<f32>::new(BLOCK as usize);
            #[unroll]
            for w in 0..4usize {
                let pairs =
                    inputs[((input_row * blocks_per_row + block) * BLOCK_VECTORS) as usize + w];
                #[unroll]
                for p in 0..4usize {
                    let word = pairs.extract(p);
                    xs[8 * w + 2 * p] = f32::reinterpret(word << 16);
                    xs[8 * w + 2 * p + 1] = f32::reinterpret(word & 0xFFFF_0000);
                }
            }
            #[unroll]
            for s in 0..count {
                let slot = first_slot + s;
                let four = loaded[slot * blocks_per_lane + b];
                // One accumulator per word: four independent chains.
                let mut parts = Four::new(0.0);
                #[unroll]
                for w in 0..4usize {
                    let word = four.extract(w);
                    let mut part = 0.0f32;
                    #[unroll]
                    for q in 0..8usize {
                        part += table[((word >> (4 * q as u32)) & 0xF) as usize] * xs[8 * w + q];
                    }
                    parts.insert(w, part);
                }
                let block_sum = parts.extract(0usize)
                    + parts.extract(1usize)
                    + parts.extract(2usize)
                    + parts.extract(3usize);
                sums[slot] +=
                    block_sum * scale_value(scale_words[slot * blocks_per_lane + b] & 0xFF);
            }
        }
    }
}

/// Adds to `sums[r * slots + s]` the dot product of listed input row `r` (of the `count` in
/// shared `inputs`, as [`load_listed_rows`] stores them, `count` at most `chunk_rows`) with
/// the weight row in slot `s` (of `slots`, loaded by [`load_lane_blocks`]): this invocation's
/// blocks. Each weight is decoded once for all the rows, where [`add_lane_dots`] decodes it
/// once per input row. The block's scale (a power of two) multiplies each row's sum of eight
/// products in the fused add to `sums`, not each weight: the same values (scaling by a power
/// of two is exact), one multiply fewer per decoded weight. `sums` starts from zero here.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn add_listed_dots(
    inputs: &[Words],
    table: &[f32],
    loaded: &Array<Words>,
    scale_words: &Array<u32>,
    sums: &mut Array<f32>,
    count: u32,
    blocks_per_row: u32,
    #[comptime] slots: usize,
    #[comptime] blocks_per_lane: usize,
    #[comptime] chunk_rows: usize,
) {
    let lane = UNIT_POS_X;
    #[unroll]
    for i in 0..slots * chunk_rows {
        sums[i] = 0.0;
    }
    #[unroll]
    for b in 0..blocks_per_lane {
        let block = lane + b as u32 * LANES;
        if block < blocks_per_row {
            let mut scale = Array::<f32>::new(slots);
            #[unroll]
            for s in 0..slots {
                scale[s] = scale_value(scale_words[s * blocks_per_lane + b] & 0xFF);
            }
            #[unroll]
            for w in 0..4usize {
                // Word w of every slot's block: eight weights each (unscaled), meeting inputs
                // 8w..8w + 8.
                let mut weights = Array::<f32>::new(slots * 8);
                #[unroll]
                for s in 0..slots {
                    let word = loaded[s * blocks_per_lane + b].extract(w);
                    #[unroll]
                    for q in 0..8usize {
                        weights[s * 8 + q] = table[((word >> (4 * q as u32)) & 0xF) as usize];
                    }
                }
                #[unroll]
                for r in 0..chunk_rows {
                    if (r as u32) < count {
                        let pairs = inputs
                            [((r as u32 * blocks_per_row + block) * BLOCK_VECTORS) as usize + w];
                        let mut xs = Array::<f32>::new(8usize);
                        #[unroll]
                        for p in 0..4usize {
                            let word = pairs.extract(p);
                            xs[2 * p] = f32::reinterpret(word << 16);
                            xs[2 * p + 1] = f32::reinterpret(word & 0xFFFF_0000);
                        }
                        #[unroll]
                        for s in 0..slots {
                            let mut part = 0.0f32;
                            #[unroll]
                            for q in 0..8usize {
                                part += weights[s * 8 + q] * xs[q];
                            }
                            sums[r * slots + s] = fma(part, scale[s], sums[r * slots + s]);
                        }
                    }
                }
            }
        }
    }
}
