//! Attention masks (spec 4.4) built on the device from slot indices.
//!
//! A *slot* is a column of the batch: rows are left-padded, so slot s of row b holds the token at
//! position s - pad[b]. Queries occupy slots q_start..q_start+T, keys k_start..k_start+S (keys
//! before q_start come from the KV cache). A key is visible when it is not padding, not in the
//! future, and, on sliding layers, fewer than `window` slots back (the query sees at most
//! `window` keys including itself).

use std::cell::OnceCell;
use std::ops::Range;
use std::rc::Rc;

use burn::tensor::{Bool, Device, Int, IntDType, Tensor, TensorData};

/// The slots a forward call covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRange {
    pub start: usize,
    pub len: usize,
}

/// A call's attention mask and the slot ranges it was built from. The device tensors are built
/// on first use and shared by clones (every layer of a step clones one mask): burn's attention
/// reads only the boolean mask, the decoding kernel only the key ranges, so a decode step on the
/// GPU never builds the boolean mask (about ten kernels per mask).
#[derive(Debug, Clone)]
pub struct KeyMask {
    pub queries: SlotRange,
    pub keys: SlotRange,
    pub window: Option<usize>,
    pads: Vec<usize>,
    device: Device,
    blocked: Rc<OnceCell<Tensor<4, Bool>>>,
    key_ranges: Rc<OnceCell<Tensor<1, Int>>>,
}

impl KeyMask {
    pub fn new(
        pads: &[usize],
        queries: SlotRange,
        keys: SlotRange,
        window: Option<usize>,
        device: &Device,
    ) -> Self {
        Self {
            queries,
            keys,
            window,
            pads: pads.to_vec(),
            device: device.clone(),
            blocked: Rc::default(),
            key_ranges: Rc::default(),
        }
    }

    /// `true` where attention is forbidden, [B, 1, T, S] ([`blocked_keys`]).
    pub fn blocked(&self) -> Tensor<4, Bool> {
        self.blocked
            .get_or_init(|| {
                blocked_keys(
                    &self.pads,
                    self.queries,
                    self.keys,
                    self.window,
                    &self.device,
                )
            })
            .clone()
    }

    /// The visible keys of each (row, query) as one range lo..hi of key indices, [B * T * 2]
    /// 32-bit (what the decoding attention kernel reads; see [`visible_ranges`]).
    pub fn key_ranges(&self) -> Tensor<1, Int> {
        self.key_ranges
            .get_or_init(|| {
                let ranges = visible_ranges(&self.pads, self.queries, self.keys, self.window);
                let count = ranges.len();
                Tensor::<1, Int>::from_data(TensorData::new(ranges, [count]), &self.device)
                    .cast(IntDType::I32)
            })
            .clone()
    }

    /// The key indices that query rows `rows` may see at most (causality and the window;
    /// padding is left to the mask), widened to multiples of `block` so that the shapes of
    /// successive decode steps repeat, and clipped to the keys.
    pub fn visible_keys(&self, rows: Range<usize>, block: usize) -> Range<usize> {
        let first = self.queries.start + rows.start;
        let last = self.queries.start + rows.end - 1;
        let lo = self.window.map_or(0, |w| {
            (first + 1)
                .saturating_sub(w)
                .saturating_sub(self.keys.start)
        });
        let hi = (last + 1)
            .saturating_sub(self.keys.start)
            .min(self.keys.len);
        let hi = (hi.div_ceil(block) * block).min(self.keys.len);
        (lo / block * block).min(hi)..hi
    }

    /// The mask of query rows `rows` against key indices `keys`.
    pub fn part(&self, rows: Range<usize>, keys: Range<usize>) -> Tensor<4, Bool> {
        self.blocked()
            .narrow(2, rows.start, rows.len())
            .narrow(3, keys.start, keys.len())
    }
}

/// For each row b and query i (row-major), the key indices it sees as `[lo, hi]` pairs: key
/// slots from max(pad, query - window + 1) to the query itself, cut to the keys (the blocked
/// keys of [`blocked_keys`] are exactly those outside; empty ranges have lo == hi).
pub fn visible_ranges(
    pads: &[usize],
    queries: SlotRange,
    keys: SlotRange,
    window: Option<usize>,
) -> Vec<i32> {
    let key_end = keys.start + keys.len;
    let mut ranges = Vec::with_capacity(pads.len() * queries.len * 2);
    for &pad in pads {
        for query in queries.start..queries.start + queries.len {
            let first = window.map_or(0, |w| (query + 1).saturating_sub(w));
            let lo = first.max(pad).clamp(keys.start, key_end);
            let hi = (query + 1).clamp(lo, key_end);
            ranges.extend([(lo - keys.start) as i32, (hi - keys.start) as i32]);
        }
    }
    ranges
}

/// `true` where attention is forbidden, shaped [B, 1, T, S].
pub fn blocked_keys(
    pads: &[usize],
    queries: SlotRange,
    keys: SlotRange,
    window: Option<usize>,
    device: &Device,
) -> Tensor<4, Bool> {
    let b = pads.len();
    let (t, s) = (queries.len, keys.len);
    let q = Tensor::<1, Int>::arange(queries.start as i64..(queries.start + t) as i64, device)
        .float()
        .reshape([1, 1, t, 1]);
    let k = Tensor::<1, Int>::arange(keys.start as i64..(keys.start + s) as i64, device)
        .float()
        .reshape([1, 1, 1, s]);
    let pad = Tensor::<1>::from_data(
        TensorData::new(pads.iter().map(|&p| p as f32).collect::<Vec<_>>(), [b]),
        device,
    )
    .reshape([b, 1, 1, 1]);
    let shape = [b, 1, t, s];
    // back = q - k: negative for future keys.
    let back = q - k.clone();
    let mut blocked = back.clone().lower_elem(0.0).expand(shape);
    if let Some(w) = window {
        blocked = blocked.bool_or(back.greater_equal_elem(w as f32).expand(shape));
    }
    let padding = (k - pad).lower_elem(0.0).expand(shape);
    blocked.bool_or(padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_reference(
        pads: &[usize],
        q: SlotRange,
        k: SlotRange,
        window: Option<usize>,
    ) -> Vec<bool> {
        let mut out = vec![];
        for &pad in pads {
            for qi in q.start..q.start + q.len {
                for ki in k.start..k.start + k.len {
                    let future = ki > qi;
                    let too_far = window.is_some_and(|w| qi - ki.min(qi) >= w);
                    out.push(future || too_far || ki < pad);
                }
            }
        }
        out
    }

    #[test]
    fn device_mask_matches_definition() {
        let device = Device::flex();
        let pads = [0, 3];
        for (q, k, w) in [
            (
                SlotRange { start: 0, len: 9 },
                SlotRange { start: 0, len: 9 },
                None,
            ),
            (
                SlotRange { start: 0, len: 9 },
                SlotRange { start: 0, len: 9 },
                Some(4),
            ),
            (
                SlotRange { start: 9, len: 1 },
                SlotRange { start: 6, len: 4 },
                Some(4),
            ),
            (
                SlotRange { start: 5, len: 3 },
                SlotRange { start: 0, len: 8 },
                None,
            ),
        ] {
            let got = blocked_keys(&pads, q, k, w, &device)
                .try_into_vec_as::<bool>()
                .unwrap();
            assert_eq!(got, host_reference(&pads, q, k, w), "{q:?} {k:?} {w:?}");
        }
    }

    /// (pads, queries, keys, window): prefill with and without a window, a decode step over
    /// cached keys with padding, a chunk of queries after cached keys.
    fn mask_cases() -> Vec<(Vec<usize>, SlotRange, SlotRange, Option<usize>)> {
        let slots = |start, len| SlotRange { start, len };
        vec![
            (vec![0], slots(0, 12), slots(0, 12), None),
            (vec![0], slots(0, 12), slots(0, 12), Some(4)),
            (vec![0, 2], slots(9, 1), slots(6, 8), Some(4)),
            (vec![0], slots(5, 3), slots(0, 16), None),
        ]
    }

    /// Every key a row may see lies in `visible_keys`; with blocks of one and no padding the
    /// range is exactly the span of the visible keys.
    #[test]
    fn visible_keys_cover_every_unblocked_key() {
        let device = Device::flex();
        for (pads, q, k, w) in mask_cases() {
            let mask = KeyMask::new(&pads, q, k, w, &device);
            let blocked = host_reference(&pads, q, k, w);
            let blocked = &blocked;
            for block in [1, 3, 4] {
                for rows in [0..q.len, 0..1, q.len - 1..q.len, q.len / 2..q.len] {
                    let range = mask.visible_keys(rows.clone(), block);
                    let seen: Vec<usize> = (0..pads.len())
                        .flat_map(|b| rows.clone().map(move |r| (b, r)))
                        .flat_map(|(b, r)| {
                            let row = (b * q.len + r) * k.len;
                            (0..k.len).filter(move |&j| !blocked[row + j])
                        })
                        .collect();
                    let (lo, hi) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
                    assert!(
                        range.start <= *lo && *hi < range.end,
                        "{q:?} {k:?} {w:?} rows {rows:?} block {block}: {range:?} misses {lo}..={hi}"
                    );
                    if block == 1 && pads == [0] {
                        assert_eq!(range, *lo..hi + 1, "{q:?} {k:?} {w:?} rows {rows:?}");
                    }
                }
            }
        }
    }

    /// Each (row, query)'s range holds exactly its unblocked keys.
    #[test]
    fn visible_ranges_hold_exactly_the_unblocked_keys() {
        let slots = |start, len| SlotRange { start, len };
        let mut cases = mask_cases();
        // Left padding with a window; a row whose queries are all padding.
        cases.push((vec![0, 3], slots(0, 9), slots(0, 9), Some(4)));
        cases.push((vec![5], slots(0, 4), slots(0, 4), Some(2)));
        for (pads, q, k, w) in cases {
            let blocked = host_reference(&pads, q, k, w);
            let ranges = visible_ranges(&pads, q, k, w);
            for (item, pair) in ranges.chunks(2).enumerate() {
                let (lo, hi) = (pair[0] as usize, pair[1] as usize);
                let expected: Vec<usize> =
                    (0..k.len).filter(|&j| !blocked[item * k.len + j]).collect();
                assert_eq!(
                    (lo..hi).collect::<Vec<_>>(),
                    expected,
                    "{pads:?} {q:?} {k:?} {w:?} item {item}"
                );
            }
        }
    }

    #[test]
    fn sliding_layer_sees_exactly_window_keys() {
        let device = Device::flex();
        let (t, w) = (20, 8);
        let r = SlotRange { start: 0, len: t };
        let m = blocked_keys(&[0], r, r, Some(w), &device)
            .try_into_vec_as::<bool>()
            .unwrap();
        let row = |p: usize| &m[p * t..(p + 1) * t];
        // Position 15 sees keys 8..=15: itself and 7 before.
        let visible: Vec<usize> = (0..t).filter(|&j| !row(15)[j]).collect();
        assert_eq!(visible, (8..=15).collect::<Vec<_>>());
    }
}
