//! A decode step's greedy picks written into its device state: the argmax of each row of the
//! logits, written as the row's next token and at slot + 1 of its picks, and the slot advanced.
//!
//! burn's argmax, the cast of its result, the slot's increment and three in-place writes were
//! six or seven launches per decode step. Here two: [`segment_maxima_kernel`] gives every
//! segment of [`SEGMENT`] logits of a row a workgroup, whose invocations each load
//! [`SEGMENT_UNROLL`] values before comparing any (one load at a time, a loop waits a memory
//! round trip per step), and writes the segment's maximum and the first index holding it;
//! [`greedy_into_state_kernel`], one workgroup, reduces each row's segments the same way and
//! writes the state in place. Ties go to the smaller index, as burn's argmax does.

use burn::backend::{backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;

use crate::launch::{MAX_GRID_X, empty_f32, same_dtype, same_shape};
use crate::workgroup_reduce::{UNITS, workgroup_reduce};
use crate::write_at_index::reference_write_at_index;

/// Logits each invocation loads before comparing any.
const SEGMENT_UNROLL: u32 = 8;
/// Logits per workgroup of the first kernel (99 segments for gpt-oss's 201,088).
pub const SEGMENT: u32 = UNITS * SEGMENT_UNROLL;
/// An index past every row (indices travel as f32: exact below 2^24).
const NO_INDEX: f32 = 16_777_216.0;

/// The first index among the workgroup's where the value equals the workgroup's maximum:
/// (maximum, index) returned to every invocation, each of which offers its own best `value`
/// at `index` (the first of its own). Synchronises the workgroup.
#[cube]
fn workgroup_first_maximum(value: f32, index: f32) -> (f32, f32) {
    let maximum = workgroup_reduce(value, true);
    let mut candidate = f32::new(NO_INDEX);
    if value == maximum {
        candidate = index;
    }
    (maximum, -workgroup_reduce(-candidate, true))
}

/// `partials` [rows, segments, 2]: each segment's maximum and the first index holding it.
/// Grid: segments across, rows down.
#[cube(launch)]
fn segment_maxima_kernel(logits: &[f32], partials: &mut [f32], width: u32, segments: u32) {
    let (segment, row) = (CUBE_POS_X, CUBE_POS_Y);
    let start = segment * SEGMENT + UNIT_POS;
    let mut values = Array::<f32>::new(SEGMENT_UNROLL as usize);
    #[unroll]
    for u in 0..SEGMENT_UNROLL {
        let at = start + u * UNITS;
        let mut v = f32::new(f32::NEG_INFINITY);
        if at < width {
            v = logits[(row * width + at) as usize];
        }
        values[u as usize] = v;
    }
    // This invocation's indices ascend with u: the strict comparison keeps the first.
    let mut best = values[0];
    let mut best_at = f32::new(NO_INDEX);
    if start < width {
        best_at = f32::cast_from(start);
    }
    #[unroll]
    for u in 1..SEGMENT_UNROLL {
        if values[u as usize] > best {
            best = values[u as usize];
            best_at = f32::cast_from(start + u * UNITS);
        }
    }
    let (maximum, first) = workgroup_first_maximum(best, best_at);
    if UNIT_POS == 0 {
        let out = ((row * segments + segment) * 2) as usize;
        partials[out] = maximum;
        partials[out + 1] = first;
    }
}

/// One workgroup: each row's pick from its segments' `partials`, written to `tokens[row]` and
/// `picks[row, slot + 1]` (nothing past the end), then `slot[0]` advanced by one once every
/// invocation has read it.
#[cube(launch)]
fn greedy_into_state_kernel(
    partials: &[f32],
    picks: &mut [f32],
    tokens: &mut [f32],
    slot: &mut [f32],
    rows: u32,
    segments: u32,
    capacity: u32,
) {
    let at = slot[0];
    let next = u32::cast_from(at) + 1;
    for row in 0..rows {
        let mut best = f32::new(f32::NEG_INFINITY);
        let mut best_at = f32::new(NO_INDEX);
        let mut s = UNIT_POS;
        // Segments ascend: the strict comparison keeps the first index of a tie.
        while s < segments {
            let partial = ((row * segments + s) * 2) as usize;
            if partials[partial] > best {
                best = partials[partial];
                best_at = partials[partial + 1];
            }
            s += UNITS;
        }
        let (_, pick) = workgroup_first_maximum(best, best_at);
        if UNIT_POS == 0 {
            tokens[row as usize] = pick;
            if next < capacity {
                picks[(row * capacity + next) as usize] = pick;
            }
        }
    }
    // Every invocation read the slot before the reductions' synchronisations.
    if UNIT_POS == 0 {
        slot[0] = at + 1.0;
    }
}

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait GreedyPicksBackend: burn::backend::Backend {
    /// `logits` [rows, width] f32 -> [rows, segments, 2]: each [`SEGMENT`]'s maximum and the
    /// first index holding it.
    #[fusion(dtype = same_dtype(logits), shape = partials_shape(logits))]
    fn segment_maxima(logits: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Each row's pick from `partials` written into `tokens` [1, rows] (returned: its own
    /// buffer) and `picks` [rows, capacity] at `slot[0] + 1`, and `slot` [1] advanced, all in
    /// place.
    #[fusion(dtype = same_dtype(tokens), shape = same_shape(tokens))]
    fn greedy_into_state(
        partials: FloatTensor<Self>,
        picks: FloatTensor<Self>,
        tokens: FloatTensor<Self>,
        slot: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

fn partials_shape(logits: &Shape) -> Shape {
    Shape::from(vec![logits[0], segments(logits[1]), 2])
}

/// Segments of [`SEGMENT`] logits across a row of `width`.
fn segments(width: usize) -> usize {
    width.div_ceil(SEGMENT as usize)
}

impl GreedyPicksBackend for CubeBackend {
    fn segment_maxima(logits: CubeTensor) -> CubeTensor {
        let logits = into_contiguous(logits);
        let [rows, width] = [logits.meta.shape()[0], logits.meta.shape()[1]];
        assert!(
            (width as f64) < NO_INDEX as f64 && rows <= MAX_GRID_X,
            "greedy picks: {rows} rows of {width} logits (indices travel as f32)"
        );
        let segments = segments(width);
        let partials = empty_f32(&logits, vec![rows, segments, 2]);
        segment_maxima_kernel::launch(
            &logits.client.clone(),
            CubeCount::Static(segments as u32, rows as u32, 1),
            CubeDim::new_1d(UNITS),
            logits.into_buffer_arg(),
            partials.clone().into_buffer_arg(),
            width as u32,
            segments as u32,
        );
        partials
    }

    fn greedy_into_state(
        partials: CubeTensor,
        picks: CubeTensor,
        tokens: CubeTensor,
        slot: CubeTensor,
    ) -> CubeTensor {
        for (name, state) in [("picks", &picks), ("tokens", &tokens), ("slot", &slot)] {
            assert!(
                state.is_contiguous() && state.dtype == DType::F32,
                "greedy picks: {name} must be contiguous f32 (written in place)"
            );
        }
        let partials = into_contiguous(partials);
        let [rows, segments] = [partials.meta.shape()[0], partials.meta.shape()[1]];
        let capacity = picks.meta.shape()[1];
        assert_eq!(picks.meta.shape()[0], rows, "greedy picks: picks' rows");
        assert_eq!(tokens.meta.num_elements(), rows, "greedy picks: tokens");
        greedy_into_state_kernel::launch(
            &partials.client.clone(),
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(UNITS),
            partials.into_buffer_arg(),
            picks.into_buffer_arg(),
            tokens.clone().into_buffer_arg(),
            slot.into_buffer_arg(),
            rows as u32,
            segments as u32,
            capacity as u32,
        );
        tokens
    }
}

/// A decode step's state: each row's greedy picks by slot [B, capacity], the step's tokens
/// [1, B] and the slot [1] (integers held as f32).
pub type GreedyState = (Tensor<2>, Tensor<2>, Tensor<1>);

/// The greedy pick of each row of `logits` [B, vocab] written into `state` (picks, tokens,
/// slot): as the row's token, at slot + 1 of its picks (nothing past the end), and the slot
/// advanced by one, in place in two launches. GPU only; see [`reference_greedy_into_state`].
pub fn greedy_into_state(logits: Tensor<2>, (picks, tokens, slot): GreedyState) -> GreedyState {
    let partials: Tensor<3> = Tensor::from_dispatch(
        <burn::backend::Dispatch as GreedyPicksBackend>::segment_maxima(
            logits.cast(DType::F32).into_dispatch(),
        ),
    );
    let tokens = Tensor::from_dispatch(
        <burn::backend::Dispatch as GreedyPicksBackend>::greedy_into_state(
            partials.into_dispatch(),
            picks.clone().into_dispatch(),
            tokens.into_dispatch(),
            slot.clone().into_dispatch(),
        ),
    );
    (picks, tokens, slot)
}

/// What `greedy_into_state` computes, with burn's ops (the slot read back to the host).
pub fn reference_greedy_into_state(
    logits: Tensor<2>,
    (picks, tokens, slot): GreedyState,
) -> GreedyState {
    let b = logits.dims()[0];
    let chosen = logits.argmax(1).float().reshape([1, b]);
    let next_slot = slot.clone().add_scalar(1.0);
    let zero = Tensor::<1>::zeros([1], &slot.device());
    let picks =
        reference_write_at_index(picks, chosen.clone().reshape([b, 1]), next_slot.clone(), 1);
    let tokens = reference_write_at_index(tokens, chosen, zero.clone(), 0);
    (
        picks,
        tokens,
        reference_write_at_index(slot, next_slot, zero, 0),
    )
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::kernel_expansion::compile_kernel;

    #[test]
    fn both_kernels_compile() {
        let maxima = compile_kernel!(
            segment_maxima_kernel::SegmentMaximaKernel,
            CubeDim::new_1d(UNITS),
            [b b s s],
        );
        assert_eq!(maxima, Ok(()));
        let into_state = compile_kernel!(
            greedy_into_state_kernel::GreedyIntoStateKernel,
            CubeDim::new_1d(UNITS),
            [b b b b s s s],
        );
        assert_eq!(into_state, Ok(()));
    }

    /// The reference writes each row's first maximum as its token and at slot + 1, and
    /// advances the slot; at the last slot the picks are left alone.
    #[test]
    fn reference_writes_first_maxima_and_advances_the_slot() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 3.0, 3.0, -1.0, 5.0, 1.0, 2.0, 5.0], [2, 4]),
            &device,
        );
        let state = |slot: f32| -> GreedyState {
            (
                Tensor::zeros([2, 3], &device),
                Tensor::zeros([1, 2], &device),
                Tensor::from_data(TensorData::new(vec![slot], [1]), &device),
            )
        };
        let values = |t: Tensor<2>| t.try_into_vec_as::<f32>().unwrap();
        let (picks, tokens, slot) = reference_greedy_into_state(logits.clone(), state(1.0));
        assert_eq!(values(tokens), [1.0, 0.0]);
        assert_eq!(values(picks), [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(slot.into_scalar::<f32>(), 2.0);
        let (picks, _, slot) = reference_greedy_into_state(logits, state(2.0));
        assert_eq!(values(picks), [0.0; 6], "slot + 1 is past the end");
        assert_eq!(slot.into_scalar::<f32>(), 3.0);
    }
}
