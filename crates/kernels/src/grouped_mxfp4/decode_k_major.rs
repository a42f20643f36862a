//! Every expert's MXFP4 weights decoded to bf16 K-major, [E, K, N], for `Tiling::warps`: the
//! checkpoint stores each expert's weights as N rows of K, so the decoding turns them, block by
//! block, through shared memory, and both its reads (along N's rows) and its writes (along K's
//! rows) are whole consecutive words.
//!
//! This takes 0.90 ms per launch at scoring's size on an H200 (profile, twenty-third round of
//! docs/benchmarks.md): about twice the decoding without the turn (0.44 ms on an H100), so the
//! turn costs about 20 ms of a 0.83 s pass. A form that read a whole MXFP4 block (16 bytes, one
//! scale) per invocation into 64 x 128 blocks, with fewer and wider loads, took 0.99 ms.

use cubecl::prelude::*;

use super::UNITS;
use super::decode::{decoded_word, scale_code};
use crate::bf16_rows::{EightBf16, bf16_pair};

/// Side of the square block of one expert's weights that a workgroup of
/// `decode_experts_k_major_kernel` turns.
pub(super) const TURN_BLOCK: usize = 64;

/// Decodes every expert's MXFP4 weights, `words` [E, N, K / 8] and `scales` [E, S], to bf16
/// `decoded` [E, K, N] (K-major; 16-byte words of eight columns): the grouped kernel's weights
/// with `Tiling::warps`. Each workgroup takes one [`TURN_BLOCK`]-square block of one expert:
/// workgroup `b` (of `blocks`, over a grid of `grid_over_rows`) takes block
/// `b % (blocks_n * blocks_k)` of expert `b / (blocks_n * blocks_k)`, K's blocks fastest. It
/// reads and decodes the block's words along N's rows into shared memory, then writes it along
/// K's rows, so both the reads and the writes are whole consecutive words. N must be a
/// multiple of 8.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_experts_k_major_kernel(
    words: &[u32],
    scales: &[u32],
    decoded: &mut [EightBf16],
    n: u32,
    k: u32,
    scale_words_per_expert: u32,
    blocks_n: u32,
    blocks_k: u32,
    blocks: u32,
) {
    let side = comptime![TURN_BLOCK as u32];
    // One padding column: the writes along K and the reads along N fall on different banks.
    let stride = side + 1;
    let mut turned = Shared::<[f32]>::new_slice(TURN_BLOCK * (TURN_BLOCK + 1));
    let b = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    if b >= blocks {
        terminate!();
    }
    let per_expert = blocks_n * blocks_k;
    let expert = b / per_expert;
    let row0 = ((b % per_expert) / blocks_k) * side;
    let k0 = (b % blocks_k) * side;
    let words_per_row = k / 8;
    let no_table = Shared::<[f32]>::new_slice(1usize);
    // Read: each weight row of the block is eight MXFP4 words (64 values).
    let words_per_block_row = comptime![TURN_BLOCK as u32 / 8];
    #[unroll]
    for i in 0..TURN_BLOCK * TURN_BLOCK / 8 / UNITS as usize {
        let w = UNIT_POS + i as u32 * UNITS;
        let (r, part) = (w / words_per_block_row, w % words_per_block_row);
        let (row, col) = (row0 + r, k0 + 8 * part);
        if row < n && col < k {
            let word = words[(expert * n * words_per_row + row * words_per_row + col / 8) as usize];
            let block = row * (k / 32) + col / 32;
            let code = scale_code(scales, expert * scale_words_per_expert, block);
            let eight = decoded_word(word, code, &no_table, false);
            #[unroll]
            for q in 0..4usize {
                let (low, high) = bf16_pair(eight.extract(q));
                turned[((8 * part + 2 * q as u32) * stride + r) as usize] = low;
                turned[((8 * part + 2 * q as u32 + 1) * stride + r) as usize] = high;
            }
        }
    }
    sync_cube();
    // Write: each K row of the block is eight 16-byte words of eight columns.
    #[unroll]
    for i in 0..TURN_BLOCK * TURN_BLOCK / 8 / UNITS as usize {
        let w = UNIT_POS + i as u32 * UNITS;
        let (kk, part) = (w / words_per_block_row, w % words_per_block_row);
        let (row, col) = (row0 + 8 * part, k0 + kk);
        if row < n && col < k {
            let mut eight = EightBf16::new(0u32);
            #[unroll]
            for q in 0..4usize {
                let at = kk * stride + 8 * part + 2 * q as u32;
                let low = u32::reinterpret(turned[at as usize]) >> 16;
                let high = u32::reinterpret(turned[at as usize + 1]) & 0xFFFF_0000;
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
    fn the_kernel_compiles_within_the_drivers_workgroup_memory() {
        let compiled = compile_kernel!(
            decode_experts_k_major_kernel::DecodeExpertsKMajorKernel,
            CubeDim::new_1d(UNITS),
            [b b b s s s s s s],
        );
        assert_eq!(compiled, Ok(()));
    }
}
