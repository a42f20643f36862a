//! Every expert's MXFP4 weights decoded to bf16 K-major, [E, K, N], for `Tiling::k_major`: the
//! checkpoint stores each expert's weights as N rows of K, so the decoding turns them, block by
//! block, through shared memory, and both its reads (along N's rows) and its writes (along K's
//! rows) are whole consecutive 16-byte words.
//!
//! A first form turned 64 x 64 blocks and read one 4-byte word per invocation (two per
//! invocation per block): 0.90 ms per launch on an H200, twice the 0.44 ms of decoding the same
//! weights without turning them (docs/benchmarks.md, twenty-third round). This one reads a whole
//! MXFP4 block (32 values, four words, one scale byte) per invocation into 64 x 128 blocks.

use cubecl::prelude::*;

use super::UNITS;
use super::decode::{decoded_word, scale_code};
use crate::bf16_rows::{EightBf16, bf16_pair};

/// Weight rows (along N) of the block a workgroup turns.
pub(super) const TURN_ROWS: usize = 64;
/// Columns (along K) of the block a workgroup turns: one MXFP4 block of 32 per invocation.
pub(super) const TURN_COLUMNS: usize = UNITS as usize / TURN_ROWS * 32;

/// Where value (`kk`, `r`) of the turned block lies in shared memory: rows of K padded by one
/// value, and each 32 rows of K moved by eight more, so that the 32 invocations of a subgroup
/// (eight weight rows, four MXFP4 blocks each) write to 32 different banks.
#[cube]
fn turned_at(kk: u32, r: u32) -> u32 {
    kk * (TURN_ROWS as u32 + 1) + (kk / 32) * 8 + r
}

/// Values of shared memory [`turned_at`] spans.
const TURNED_VALUES: usize = TURN_COLUMNS * (TURN_ROWS + 1) + (TURN_COLUMNS / 32 - 1) * 8;

/// Decodes `mxfp4_blocks` (the experts' words [E, N, K / 8] read four at a time: one MXFP4 block
/// of 32 values per 16-byte word) under `scales` [E, S] to `decoded` [E, K, N] (16-byte words of
/// eight columns). Workgroup `b` (over a grid of `grid_over_rows` workgroups, `blocks` in all)
/// takes block `b % (blocks_n * blocks_k)` of expert `b / (blocks_n * blocks_k)`, the blocks
/// [`TURN_ROWS`] x [`TURN_COLUMNS`], K's fastest. N must be a multiple of 8.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_experts_k_major_kernel(
    mxfp4_blocks: &[EightBf16],
    scales: &[u32],
    decoded: &mut [EightBf16],
    n: u32,
    k: u32,
    scale_words_per_expert: u32,
    blocks_n: u32,
    blocks: u32,
) {
    let mut turned = Shared::<[f32]>::new_slice(TURNED_VALUES);
    let b = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if b >= blocks {
        terminate!();
    }
    let (rows, columns) = comptime![(TURN_ROWS as u32, TURN_COLUMNS as u32)];
    let blocks_k = (k + columns - 1) / columns;
    let per_expert = blocks_n * blocks_k;
    let expert = b / per_expert;
    let row0 = ((b % per_expert) / blocks_k) * rows;
    let k0 = (b % blocks_k) * columns;
    let no_table = Shared::<[f32]>::new_slice(1usize);

    // Read: invocation (r, part) decodes MXFP4 block `part` of the block's weight row r.
    let parts = comptime![(TURN_COLUMNS / 32) as u32];
    let (r, part) = (UNIT_POS / parts, UNIT_POS % parts);
    let (row, col) = (row0 + r, k0 + 32 * part);
    if row < n && col < k {
        let block = row * (k / 32) + col / 32;
        let four = mxfp4_blocks[(expert * n * (k / 32) + block) as usize];
        let code = scale_code(scales, expert * scale_words_per_expert, block);
        #[unroll]
        for word in 0..4usize {
            let eight = decoded_word(four.extract(word), code, &no_table, false);
            #[unroll]
            for q in 0..4usize {
                let (low, high) = bf16_pair(eight.extract(q));
                let kk = 32 * part + comptime![(8 * word + 2 * q) as u32];
                turned[turned_at(kk, r) as usize] = low;
                turned[turned_at(kk + 1, r) as usize] = high;
            }
        }
    }
    sync_cube();

    // Write: each K row of the block is TURN_ROWS / 8 words of eight columns.
    let words_per_k_row = comptime![(TURN_ROWS / 8) as u32];
    #[unroll]
    for i in 0..TURN_COLUMNS * TURN_ROWS / 8 / UNITS as usize {
        let w = UNIT_POS + i as u32 * UNITS;
        let (kk, part) = (w / words_per_k_row, w % words_per_k_row);
        let (row, col) = (row0 + 8 * part, k0 + kk);
        if row < n && col < k {
            let first = turned_at(kk, 8 * part);
            let mut eight = EightBf16::new(0u32);
            #[unroll]
            for q in 0..4usize {
                let at = (first + 2 * q as u32) as usize;
                let low = u32::reinterpret(turned[at]) >> 16;
                let high = u32::reinterpret(turned[at + 1]) & 0xFFFF_0000;
                eight.insert(q, low | high);
            }
            decoded[((expert * k + col) * n / 8 + row / 8) as usize] = eight;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn a_workgroup_reads_one_mxfp4_block_per_invocation() {
        assert_eq!(TURN_ROWS * TURN_COLUMNS / 32, UNITS as usize);
        assert_eq!(TURN_COLUMNS, 128);
    }

    #[test]
    fn the_kernel_compiles_within_the_drivers_workgroup_memory() {
        let compiled = compile_kernel!(
            decode_experts_k_major_kernel::DecodeExpertsKMajorKernel,
            CubeDim::new_1d(UNITS),
            [b b b s s s s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
