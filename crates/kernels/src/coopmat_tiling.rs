//! Which tile a dense bf16 GEMM runs with ([`crate::coopmat_gemm`]): the tilings, the rule
//! that picks one by the product's shape ([`tiling_for`]: [`FEW_ROWS_TILING`] for up to 32 rows,
//! else [`DEFAULT_TILING`]), a benchmark's override ([`set_tiling`]) and the fallback kernels
//! where a tiling's kernel cannot take the shape ([`launched_tiling`]).

use crate::coopmat_specialized;
use crate::coopmat_warps;
use crate::staged_tiles::whole_words_per_unit;
use crate::tile_order::TileOrder;

/// Output tile of one workgroup (m, n), the K step, invocations per workgroup (one of the
/// driver's `units_per_block` for bf16: 32, 64, 128, 256), how the tiles reach the matrices and
/// in which order the workgroups take the tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub units: u32,
    pub scheme: Scheme,
    /// `None`: chosen by the weights' size ([`TileOrder::for_weights`]).
    pub order: Option<TileOrder>,
}

/// How a K step's input tiles reach the cooperative matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Loaded from global memory by tensor addressing, then multiplied.
    Direct,
    /// Copied by the invocations into shared memory in 16-byte words (the next step's words
    /// loaded into registers during this step's product), then loaded from there.
    Staged,
    /// Staged as `Staged`, then multiplied by each subgroup on its own block of the tile in
    /// subgroup-scope 16 x 16 x 16 fragments (`crate::coopmat_warps`).
    Warps,
    /// `Warps`' fragments fed by `producers` subgroups of their own through a ring of `stages`
    /// shared stages, with counters instead of barriers (`crate::coopmat_specialized`);
    /// `units` counts the consumers only.
    Specialized {
        producers: u32,
        stages: u32,
        variant: crate::coopmat_specialized::Variant,
    },
    /// Not a product: `Warps`' K loop with its inputs staged once and its fragments fed as
    /// `crate::coopmat_ceiling` says (a benchmark of what bounds `Warps`).
    Ceiling(crate::coopmat_ceiling::Feed),
}

/// 128 x 256 x 16 in subgroup-scope fragments fed by four producer subgroups through three
/// stages (`Scheme::Specialized`), falling back to staged and then direct loads where the shape
/// asks for it ([`launched_tiling`]). History, all on one H200 or H100 unless said:
/// - staged, 208 TF/s on scoring's projection shapes against 128-134 loaded by tensor
///   addressing (docs/benchmarks.md, eighteenth round);
/// - column tiles first where the weights fit in the L2 cache: 220 against 203-209 TF/s on the
///   q and o projections, while an lm_head piece keeps row tiles first (nineteenth round);
/// - `Warps` over staged, same tiles: 263-267 against 243-252 TF/s at 8192^3 (twenty-second);
/// - `Warps` with K steps of 48: 294.0 against 267.2 TF/s at 8192^3 (twenty-sixth);
/// - `Specialized` over `Warps` 128 x 256 x 48, same call, twice (twenty-ninth): 302.6/301.7
///   against 293.0/293.1 TF/s at 8192^3, 273-274 against 256 at the q projection, 267-269
///   against 246-248 at the o projection (252 for the 320-wide warps tiles that it had), 194
///   against 174 at k and v, 274-276 against 267-268 on an lm_head piece. Scoring a 20b:
///   +1.2% (three rounds each). More producers spill registers (five: 74 TF/s); more stages
///   do not fit the driver's 48 KB.
pub const DEFAULT_TILING: Tiling = Tiling {
    m: 128,
    n: 256,
    k: 16,
    units: 256,
    scheme: Scheme::Specialized {
        producers: 4,
        stages: 3,
        variant: crate::coopmat_specialized::Variant::Product,
    },
    order: None,
};

/// 32 x 64 x 64 in subgroup-scope fragments with four subgroups (`Scheme::Warps`): the tiling
/// of products of at most 32 rows where it takes the shape whole ([`tiling_for`]). The default's
/// 128 x 256 tiles give such a product one workgroup per 256 columns, 12 for the o projection on
/// 132 multiprocessors. On an H200, queued launches with the bias (docs/benchmarks.md,
/// fortieth round), us against the default: 64 against 112 at 32 x 2880 x 4096 (q), 78 against
/// 140 at 32 x 4096 x 2880 (o), 232 against 275 on an lm_head piece of 32 rows.
pub const FEW_ROWS_TILING: Tiling = Tiling {
    m: 32,
    n: 64,
    k: 64,
    units: 128,
    scheme: Scheme::Warps,
    order: None,
};

/// Whether an `m x k` by `k x n` product takes [`FEW_ROWS_TILING`] whole: at most its 32 rows,
/// rows and columns of whole fragments (no fallback kernel).
pub fn takes_few_rows_tiling(m: usize, n: usize, k: usize) -> bool {
    let t = FEW_ROWS_TILING;
    m <= t.m && coopmat_warps::takes(m, n, k, (t.m, t.n, t.k), t.units)
}

/// The tiling of an `m x k` by `k x n` product when [`set_tiling`] chose none:
/// [`FEW_ROWS_TILING`] where it takes the shape whole, else [`DEFAULT_TILING`].
pub fn tiling_for(m: usize, n: usize, k: usize) -> Tiling {
    match takes_few_rows_tiling(m, n, k) {
        true => FEW_ROWS_TILING,
        false => DEFAULT_TILING,
    }
}

/// A tiling every launch takes instead of [`tiling_for`]'s (benchmarks compare several).
static CHOSEN: std::sync::Mutex<Option<Tiling>> = std::sync::Mutex::new(None);

/// Sets the tiling later launches use, whatever their shape.
pub fn set_tiling(tiling: Tiling) {
    *CHOSEN.lock().expect("tiling lock") = Some(tiling);
}

/// The tiling of an `m x k` by `k x n` product: the one [`set_tiling`] chose, else
/// [`tiling_for`]'s.
pub(crate) fn chosen_tiling(m: usize, n: usize, k: usize) -> Tiling {
    CHOSEN
        .lock()
        .expect("tiling lock")
        .unwrap_or_else(|| tiling_for(m, n, k))
}

/// The K step of the staged and direct kernels where they stand in for `Warps`: the step their
/// workgroup-scope matrices run with (the driver's granularity is 16 to 32).
pub(crate) const FALLBACK_K: usize = 32;

/// The tiling a launch with tiling `t` runs for an `m x k` by `k x n` product: `t` where its
/// kernel takes the shape; for `Warps` (or `Ceiling`) that cannot, `Staged` with K steps of
/// [`FALLBACK_K`] where that one can; else `Direct`.
pub fn launched_tiling(t: Tiling, m: usize, n: u32, k: u32) -> Tiling {
    match t.scheme {
        Scheme::Warps | Scheme::Ceiling(_)
            if coopmat_warps::takes(m, n as usize, k as usize, (t.m, t.n, t.k), t.units) =>
        {
            t
        }
        Scheme::Specialized { producers, .. }
            if coopmat_specialized::takes(
                m,
                n as usize,
                k as usize,
                (t.m, t.n, t.k),
                t.units,
                producers,
            ) =>
        {
            t
        }
        Scheme::Warps | Scheme::Ceiling(_) | Scheme::Specialized { .. } => staged_or_fallback(
            Tiling {
                scheme: Scheme::Staged,
                k: FALLBACK_K,
                ..t
            },
            n,
            k,
        ),
        _ => staged_or_fallback(t, n, k),
    }
}

/// The tiling, as `Direct` where `Staged` cannot take the shape: K must be whole steps, rows
/// whole 16-byte words, and the tile whole words per invocation.
fn staged_or_fallback(t: Tiling, n: u32, k: u32) -> Tiling {
    let fits = (k as usize).is_multiple_of(t.k)
        && n.is_multiple_of(8)
        && whole_words_per_unit(t.m, t.k, t.units)
        && whole_words_per_unit(t.k, t.n, t.units);
    match t.scheme {
        Scheme::Staged if !fits => Tiling {
            scheme: Scheme::Direct,
            ..t
        },
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAGED: Tiling = Tiling {
        scheme: Scheme::Staged,
        k: 32,
        ..DEFAULT_TILING
    };

    /// The scheme of [`launched_tiling`]'s tiling.
    fn scheme_for(t: Tiling, m: usize, n: u32, k: u32) -> Scheme {
        launched_tiling(t, m, n, k).scheme
    }

    #[test]
    fn staged_gemm_takes_whole_steps_and_words_and_falls_back_otherwise() {
        // Scoring's projection and lm_head shapes are staged.
        for (n, k) in [(5120, 2880), (2880, 4096), (93184, 2880)] {
            assert_eq!(staged_or_fallback(STAGED, n, k).scheme, Scheme::Staged);
        }
        // K not whole steps of 32, or rows not whole 16-byte words: loaded directly.
        assert_eq!(
            staged_or_fallback(STAGED, 5120, 2888).scheme,
            Scheme::Direct
        );
        assert_eq!(
            staged_or_fallback(STAGED, 5124, 2880).scheme,
            Scheme::Direct
        );
        // A tile that does not split into whole words per invocation.
        let uneven = Tiling {
            m: 16,
            units: 256,
            ..STAGED
        };
        assert_eq!(
            staged_or_fallback(uneven, 5120, 2880).scheme,
            Scheme::Direct
        );
        // The direct scheme stays direct.
        let direct = Tiling {
            scheme: Scheme::Direct,
            ..STAGED
        };
        assert_eq!(
            staged_or_fallback(direct, 5120, 2880).scheme,
            Scheme::Direct
        );
    }

    #[test]
    fn fragment_kernels_run_where_they_take_the_shape_and_fall_back_to_staged() {
        let warps = Tiling {
            k: 48,
            scheme: Scheme::Warps,
            ..DEFAULT_TILING
        };
        for t in [DEFAULT_TILING, warps] {
            assert_eq!(launched_tiling(t, 8192, 8192, 8192), t);
            // Scoring's projections: q, k and v, o, an lm_head piece.
            for (m, n, k) in [(16384, 4096, 2880), (16384, 512, 2880), (16384, 2880, 4096)] {
                assert_eq!(launched_tiling(t, m, n, k), t, "{m} {n} {k}");
            }
            assert_eq!(launched_tiling(t, 2048, 93_184, 2880), t);
            // Rows not whole fragments: the staged kernel (it bounds every row), with its own K
            // step.
            let staged = launched_tiling(t, 16383, 2880, 4096);
            assert_eq!((staged.scheme, staged.k), (Scheme::Staged, FALLBACK_K));
            // Nor whole K steps (nor words): loaded directly.
            assert_eq!(scheme_for(t, 16384, 2880, 4100), Scheme::Direct);
        }
        // The other schemes are unchanged.
        assert_eq!(scheme_for(STAGED, 17, 5120, 2880), Scheme::Staged);
    }

    #[test]
    fn products_of_up_to_32_rows_take_the_few_rows_tiling_where_it_takes_them_whole() {
        // A 16-token prefill and a batch-32 decode step: q, k and v, o, the lm_head's pieces.
        for m in [16, 32] {
            for (n, k) in [
                (4096, 2880),
                (512, 2880),
                (2880, 4096),
                (93_184, 2880),
                (14_720, 2880),
            ] {
                assert_eq!(tiling_for(m, n, k), FEW_ROWS_TILING, "{m} {n} {k}");
                assert_eq!(
                    launched_tiling(tiling_for(m, n, k), m, n as u32, k as u32),
                    FEW_ROWS_TILING
                );
            }
        }
        // Rows not whole fragments, more than 32 rows, columns not whole fragments, K not whole
        // 16-byte words: the default, as before.
        for (m, n, k) in [
            (20, 4096, 2880),
            (48, 4096, 2880),
            (33, 4096, 2880),
            (32, 200, 2880),
        ] {
            assert_eq!(tiling_for(m, n, k), DEFAULT_TILING, "{m} {n} {k}");
        }
        assert_eq!(tiling_for(32, 4096, 2884), DEFAULT_TILING);
        assert_eq!(tiling_for(16384, 4096, 2880), DEFAULT_TILING);
    }
}
