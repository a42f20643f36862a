//! MXFP4 (OCP microscaling FP4), spec section 3: blocks of 32 E2M1 values along the input
//! dimension share one E8M0 scale byte. A byte holds element 2j in its low nibble and 2j+1 in its
//! high nibble. Every decoded value is exact in f32.

use crate::checkpoint::reader::stored_values;

/// E2M1 code -> value (spec 3.1).
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Values per block and bytes per block.
pub const BLOCK: usize = 32;
pub const BLOCK_BYTES: usize = 16;

/// Scale byte 255 is NaN in the OCP spec; a checkpoint holding it is corrupt.
pub const INVALID_SCALE: u8 = 255;

/// 2^(s - 127) for a scale byte, computed exactly from the bit pattern (s = 0 is subnormal).
pub fn scale_value(s: u8) -> f32 {
    if s == 0 {
        f32::from_bits(1 << 22) // 2^-127
    } else {
        f32::from_bits((s as u32) << 23)
    }
}

/// Index of the first scale byte equal to 255, if any.
pub fn find_invalid_scale(scales: &[u8]) -> Option<usize> {
    scales.iter().position(|&s| s == INVALID_SCALE)
}

/// Decodes `rows` rows of `groups` blocks into `out` ([rows, groups * 32], row-major).
/// `blocks` is [rows, groups, 16] bytes and `scales` [rows, groups].
pub fn decode_rows(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    debug_assert_eq!(blocks.len(), scales.len() * BLOCK_BYTES);
    debug_assert_eq!(out.len(), scales.len() * BLOCK);
    for ((block, &s), values) in blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(scales)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let scale = scale_value(s);
        for (j, &byte) in block.iter().enumerate() {
            values[2 * j] = FP4_VALUES[(byte & 0x0F) as usize] * scale;
            values[2 * j + 1] = FP4_VALUES[(byte >> 4) as usize] * scale;
        }
    }
}

/// Encodes values to MXFP4 as OpenAI's and Hugging Face's tooling does (spec 3.6: scale rounded
/// up to a power of two from max|x|/6, ties away from zero, saturating at 6).
/// `values` is [rows, cols] with cols a multiple of 32; returns (blocks, scales).
pub fn encode_rows(values: &[f32], cols: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(cols % BLOCK, 0, "MXFP4 rows must be a multiple of 32 long");
    let n_blocks = values.len() / BLOCK;
    let mut blocks = vec![0u8; n_blocks * BLOCK_BYTES];
    let mut scales = vec![0u8; n_blocks];
    for (b, chunk) in values.chunks_exact(BLOCK).enumerate() {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 6.0;
        let scale_bits = if d == 0.0 {
            0
        } else {
            (d.to_bits().wrapping_add(0x007F_FFFF) & 0x7F80_0000) >> 23
        };
        let scale_byte = scale_bits.min(254) as u8;
        scales[b] = scale_byte;
        let inv = if scale_byte == 0 {
            0.0
        } else {
            1.0 / scale_value(scale_byte)
        };
        for j in 0..BLOCK_BYTES {
            let lo = encode_value(chunk[2 * j] * inv);
            let hi = encode_value(chunk[2 * j + 1] * inv);
            blocks[b * BLOCK_BYTES + j] = lo | (hi << 4);
        }
    }
    (blocks, scales)
}

/// Nearest E2M1 code, ties away from zero, saturating at 6.
fn encode_value(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 8 } else { 0 };
    let a = x.abs();
    // Midpoints between 0, 0.5, 1, 1.5, 2, 3, 4, 6.
    let code = if a < 0.25 {
        0
    } else if a < 0.75 {
        1
    } else if a < 1.25 {
        2
    } else if a < 1.75 {
        3
    } else if a < 2.5 {
        4
    } else if a < 3.5 {
        5
    } else if a < 5.0 {
        6
    } else {
        7
    };
    if code == 0 { 0 } else { sign | code }
}

/// Packs MXFP4 bytes little-endian into u32 words (4 bytes, 8 values each) for device storage:
/// backends without u8 tensors (WGSL) still hold the checkpoint's bytes, unexpanded. One copy
/// ([`stored_values`]); the loader shares aligned blocks with the checkpoint's map instead.
pub fn pack_words(bytes: &[u8]) -> Vec<i32> {
    stored_values(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_one(byte: u8, scale: u8) -> [f32; 2] {
        let mut block = [0u8; 16];
        block[0] = byte;
        let mut out = [0f32; 32];
        decode_rows(&block, &[scale], &mut out);
        [out[0], out[1]]
    }

    #[test]
    fn spec_worked_examples_decode() {
        // Spec 3.5.
        assert_eq!(decode_one(0x21, 127), [0.5, 1.0]);
        assert_eq!(decode_one(0xF7, 127), [6.0, -6.0]);
        let [a, b] = decode_one(0x8A, 127);
        assert_eq!(a, -1.0);
        assert!(b == 0.0 && b.is_sign_negative());
        assert_eq!(decode_one(0x21, 128), [1.0, 2.0]);
        assert_eq!(decode_one(0x21, 126), [0.25, 0.5]);
    }

    #[test]
    fn scale_values_are_exact_powers_of_two() {
        for s in 0..=254u8 {
            assert_eq!(
                scale_value(s) as f64,
                2f64.powi(s as i32 - 127),
                "scale {s}"
            );
        }
    }

    #[test]
    fn encode_then_decode_is_exact_for_representable_values() {
        let vals: Vec<f32> = (0..64).map(|i| FP4_VALUES[i % 16] * 0.25).collect();
        let (blocks, scales) = encode_rows(&vals, 64);
        let mut back = vec![0f32; 64];
        decode_rows(&blocks, &scales, &mut back);
        assert_eq!(back, vals);
    }

    #[test]
    fn encode_rounds_to_nearest_code_with_ties_away_from_zero() {
        // Block max 6 -> scale 1; 2.5 is a tie between 2 and 3.
        let mut vals = vec![0f32; 32];
        vals[0] = 6.0;
        vals[1] = 2.5;
        vals[2] = -0.74;
        vals[3] = 100.0 / 17.0;
        let (blocks, scales) = encode_rows(&vals, 32);
        assert_eq!(scales[0], 127);
        let mut back = vec![0f32; 32];
        decode_rows(&blocks, &scales, &mut back);
        assert_eq!(&back[..4], &[6.0, 3.0, -0.5, 6.0]);
    }

    #[test]
    fn packed_words_keep_byte_order() {
        assert_eq!(pack_words(&[1, 2, 3, 4]), vec![0x04030201]);
    }
}
