//! The backend-extension ops of [`super`] and their launches: f32 or bf16 output, rows of
//! rotated queries or a decode step straight from the q/k/v projection.

use burn::backend::{
    backend_extension,
    tensor::{FloatTensor, IntTensor},
};
use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeBackend, kernel::into_contiguous, tensor::CubeTensor};
use cubecl::prelude::*;
use half::bf16;

use super::kernel::attention_rows_kernel;
use super::supports;
use crate::launch::{assert_caches_writable, empty_of, grid_over_rows};
use crate::workgroup_reduce::UNITS;

/// GPU extension op; only the CubeCL backend implements it.
#[backend_extension(Cube, Fusion)]
pub trait AttentionRowsBackend: burn::backend::Backend {
    /// `q` [B, heads, T, d], `k` and `v` [B, kv_heads, S, d], `sinks` [heads], `ranges` [B * T
    /// * 2] (visible keys lo..hi per row and query, 32-bit) -> [B, T, heads, d], in bf16
    /// (rounded to nearest even) when `bf16`, else f32.
    #[fusion(dtype = written_dtype(*bf16), shape = Shape::from(vec![q[0], q[2], q[1], q[3]]))]
    fn attention_rows(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
        bf16: bool,
    ) -> FloatTensor<Self>;

    /// `qkv` [B, 1, heads + 2 kv_heads, d] (unrotated), the tables `cos` and `sin` [B, 1,
    /// slots, d / 2], the caches `keys` and `values` [B, kv_heads, capacity, d] (f32,
    /// contiguous: written in place at slot `slot[0]`), `sinks` [heads], the table `ranges`
    /// [slots, B * 2] -> [B, 1, heads, d], in bf16 (rounded to nearest even) when `bf16`,
    /// else f32.
    #[fusion(dtype = written_dtype(*bf16), shape = Shape::from(vec![qkv[0], 1, qkv[2] - 2 * keys[1], qkv[3]]))]
    #[allow(clippy::too_many_arguments)]
    fn attention_step(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        slot: FloatTensor<Self>,
        sinks: FloatTensor<Self>,
        ranges: IntTensor<Self>,
        scale: f32,
        bf16: bool,
    ) -> FloatTensor<Self>;
}

/// The attention ops' output type: bf16 when asked for, else f32.
fn written_dtype(bf16: bool) -> DType {
    match bf16 {
        true => DType::BF16,
        false => DType::F32,
    }
}

impl AttentionRowsBackend for CubeBackend {
    fn attention_rows(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        sinks: CubeTensor,
        ranges: CubeTensor,
        scale: f32,
        bf16: bool,
    ) -> CubeTensor {
        launch_rows([q, k, v, sinks, ranges], scale, written_dtype(bf16))
    }

    fn attention_step(
        qkv: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
        keys: CubeTensor,
        values: CubeTensor,
        slot: CubeTensor,
        sinks: CubeTensor,
        ranges: CubeTensor,
        scale: f32,
        bf16: bool,
    ) -> CubeTensor {
        launch_step(
            [qkv, cos, sin, keys, values, slot, sinks, ranges],
            scale,
            written_dtype(bf16),
        )
    }
}

/// [`AttentionRowsBackend::attention_rows`] writing `dtype` (f32 or bf16).
fn launch_rows([q, k, v, sinks, ranges]: [CubeTensor; 5], scale: f32, dtype: DType) -> CubeTensor {
    let [q, k, v, sinks, ranges] = [q, k, v, sinks, ranges].map(into_contiguous);
    let [b, heads, t, _] = [0, 1, 2, 3].map(|i| q.meta.shape()[i]);
    // Not read without `fresh`: the sinks stand in for the angles and the slot.
    let unread = || sinks.clone();
    let [cos, sin, slot] = [unread(), unread(), unread()];
    launch_attention(
        q,
        k,
        v,
        sinks,
        ranges,
        ([cos, sin, slot], 1),
        [b, heads, t],
        scale,
        (false, dtype),
    )
}

/// [`AttentionRowsBackend::attention_step`] writing `dtype` (f32 or bf16).
fn launch_step(
    [qkv, cos, sin, keys, values, slot, sinks, ranges]: [CubeTensor; 8],
    scale: f32,
    dtype: DType,
) -> CubeTensor {
    assert_caches_writable("attention_step", &keys, &values);
    let [qkv, cos, sin, slot, sinks, ranges] =
        [qkv, cos, sin, slot, sinks, ranges].map(into_contiguous);
    let [b, t, width, d] = [0, 1, 2, 3].map(|i| qkv.meta.shape()[i]);
    let kv_heads = keys.meta.shape()[1];
    assert!(
        t == 1 && width > 2 * kv_heads,
        "attention_step: one position of heads + 2 kv_heads heads, caches of kv_heads heads"
    );
    assert_eq!(keys.meta.shape()[3], d, "attention_step: head widths");
    let heads = width - 2 * kv_heads;
    let slots = cos.meta.shape()[2];
    assert!(
        cos.meta.shape()[..] == [b, 1, slots, d / 2]
            && sin.meta.shape()[..] == cos.meta.shape()[..]
            && ranges.meta.shape()[..] == [slots, b * 2],
        "attention_step: tables of cos and sin [{b}, 1, slots, {}] and ranges [slots, {}]",
        d / 2,
        b * 2
    );
    launch_attention(
        qkv,
        keys,
        values,
        sinks,
        ranges,
        ([cos, sin, slot], slots),
        [b, heads, 1],
        scale,
        (true, dtype),
    )
}

/// Launches [`attention_rows_kernel`] over `b x heads x queries` items (`fresh`: see the
/// kernel) and returns its output [B, queries, heads, d] in `dtype` (f32 or bf16).
#[allow(clippy::too_many_arguments)]
fn launch_attention(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    sinks: CubeTensor,
    ranges: CubeTensor,
    ([cos, sin, slot], table_slots): ([CubeTensor; 3], usize),
    [b, heads, queries]: [usize; 3],
    scale: f32,
    (fresh, dtype): (bool, DType),
) -> CubeTensor {
    let [kv_heads, keys, d] = [1, 2, 3].map(|i| k.meta.shape()[i]);
    assert!(supports(d), "attention_rows: head_dim {d}");
    assert!(
        heads.is_multiple_of(kv_heads),
        "attention_rows: {heads} heads over {kv_heads} kv heads"
    );
    let items = b * heads * queries;
    let out = empty_of(&q, vec![b, queries, heads, d], dtype);
    let launch = match dtype {
        DType::BF16 => attention_rows_kernel::launch::<bf16>,
        _ => attention_rows_kernel::launch::<f32>,
    };
    launch(
        &q.client.clone(),
        grid_over_rows(items),
        CubeDim::new_1d(UNITS),
        q.into_buffer_arg(),
        k.into_buffer_arg(),
        v.into_buffer_arg(),
        sinks.into_buffer_arg(),
        ranges.into_buffer_arg(),
        cos.into_buffer_arg(),
        sin.into_buffer_arg(),
        slot.into_buffer_arg(),
        out.clone().into_buffer_arg(),
        items as u32,
        heads as u32,
        kv_heads as u32,
        queries as u32,
        keys as u32,
        table_slots as u32,
        scale,
        d as u32,
        fresh,
    );
    out
}
