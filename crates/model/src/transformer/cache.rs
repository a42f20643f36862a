//! KV cache for generation (spec 4.8): post-RoPE keys and values per layer, in buffers whose
//! length is a multiple of a block of slots. A decode step writes its keys into the buffer and
//! attends over the whole buffer (slots not yet written are in the future of every query, so
//! the causal mask hides them): the shapes a step sees change once per block, not at every token,
//! and GPU kernels tuned for one shape keep running. Sliding layers drop the slots no later query
//! can see (older than `window - 1` before the next token) when their buffer is full.

use burn::tensor::Tensor;
use gpt_oss_kernels::write_in_place::write_in_place;

use crate::config::{GptOssConfig, LayerType};

use super::mask::SlotRange;

/// Default buffer block, in slots.
pub const KEY_BLOCK: usize = 128;

/// Keys and values of one layer, [B, kv_heads, capacity, head_dim]; buffer index i holds slot
/// `start + i`, and the first `filled` indices are written.
#[derive(Debug, Clone)]
pub struct LayerKv {
    pub keys: Option<Tensor<4>>,
    pub values: Option<Tensor<4>>,
    pub start: usize,
    pub filled: usize,
    /// Slots before the next query that a sliding layer must keep (`None`: all).
    pub keep: Option<usize>,
    /// Capacities are multiples of this.
    pub block: usize,
    /// Writes go into the buffers in place (the GPU kernel path, buffers a kept decode step
    /// shares: [`KvCache::over_buffers`]), which then never grow.
    pub in_place: bool,
}

/// What [`LayerKv::append`] will do for a step of `t` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AppendPlan {
    /// Buffer indices dropped from the front before appending.
    drop: usize,
    /// Buffer length after appending (unchanged when the step fits).
    capacity: usize,
}

impl LayerKv {
    pub fn new(keep: Option<usize>, block: usize) -> Self {
        Self {
            keys: None,
            values: None,
            start: 0,
            filled: 0,
            keep,
            block: block.max(1),
            in_place: false,
        }
    }

    /// The written keys and values [B, kv_heads, filled, head_dim] (slots `start..start +
    /// filled`); `None` before anything was appended.
    pub fn written(&self) -> Option<(Tensor<4>, Tensor<4>)> {
        let (keys, values) = (self.keys.as_ref()?, self.values.as_ref()?);
        Some((
            keys.clone().narrow(2, 0, self.filled),
            values.clone().narrow(2, 0, self.filled),
        ))
    }

    fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[2])
    }

    fn round_up(&self, n: usize) -> usize {
        n.div_ceil(self.block) * self.block
    }

    fn plan(&self, t: usize) -> AppendPlan {
        let capacity = self.capacity();
        if self.filled + t <= capacity {
            return AppendPlan { drop: 0, capacity };
        }
        // The first query of this step is slot start + filled; it sees `keep` slots back.
        let next = self.start + self.filled;
        let drop = self
            .keep
            .map_or(0, |k| next.saturating_sub(k).saturating_sub(self.start));
        let held = self.filled - drop + t;
        // A sliding layer gets a block of room beyond what it must hold, so that it compacts
        // once per block of steps rather than at every step.
        let room = if self.keep.is_some() { self.block } else { 0 };
        AppendPlan {
            drop,
            capacity: self.round_up(held) + room,
        }
    }

    /// The slots the buffer covers once a step of `t` tokens is appended: the key range of
    /// that step's attention.
    pub fn slots_after_append(&self, t: usize) -> SlotRange {
        let plan = self.plan(t);
        SlotRange {
            start: self.start + plan.drop,
            len: plan.capacity,
        }
    }

    /// Writes this step's keys/values [B, kv_heads, t, d] and returns the whole buffers, which
    /// cover [`Self::slots_after_append`].
    pub fn append(&mut self, keys: Tensor<4>, values: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [b, h, t, d] = keys.dims();
        let plan = self.plan(t);
        let unchanged = AppendPlan {
            drop: 0,
            capacity: self.capacity(),
        };
        assert!(
            !self.in_place || plan == unchanged,
            "a cache written in place holds its {} slots; {} more do not fit after {}",
            unchanged.capacity,
            t,
            self.filled
        );
        let (k_buf, v_buf) = match (self.keys.take(), self.values.take()) {
            (Some(k), Some(v)) if plan == unchanged => (k, v),
            (k, v) => (self.resized(k, &keys, plan), self.resized(v, &values, plan)),
        };
        self.start += plan.drop;
        self.filled -= plan.drop;
        let (k_buf, v_buf) = if self.in_place {
            (
                write_in_place(k_buf, keys, 2, self.filled),
                write_in_place(v_buf, values, 2, self.filled),
            )
        } else {
            let at = [0..b, 0..h, self.filled..self.filled + t, 0..d];
            (
                k_buf.slice_assign(at.clone(), keys),
                v_buf.slice_assign(at, values),
            )
        };
        self.filled += t;
        self.keys = Some(k_buf.clone());
        self.values = Some(v_buf.clone());
        (k_buf, v_buf)
    }

    /// `buffer` without its first `plan.drop` indices, zero-padded to `plan.capacity`.
    fn resized(&self, buffer: Option<Tensor<4>>, step: &Tensor<4>, plan: AppendPlan) -> Tensor<4> {
        let [b, h, _, d] = step.dims();
        let kept = buffer.map(|buf| buf.narrow(2, plan.drop, self.filled - plan.drop));
        let kept_len = kept.as_ref().map_or(0, |k| k.dims()[2]);
        let empty = Tensor::zeros([b, h, plan.capacity - kept_len, d], &step.device());
        match kept {
            Some(k) => Tensor::cat(vec![k, empty], 2),
            None => empty,
        }
    }
}

/// Keys and values of one layer in buffers that hold every slot of a generation, [B, kv_heads,
/// capacity, head_dim] with buffer index = slot (no compaction: sliding layers see their window
/// through the key ranges). A captured decode step writes into them in place at a slot held on
/// the device, so every replay finds the same buffers.
#[derive(Debug, Clone)]
pub struct FixedKv {
    pub keys: Tensor<4>,
    pub values: Tensor<4>,
}

impl FixedKv {
    /// `layer`'s written slots (a prefill's) copied into buffers of `capacity` slots.
    pub fn from_layer(layer: &LayerKv, capacity: usize) -> Self {
        let (keys, values) = layer
            .written()
            .expect("a prefilled layer has keys and values");
        assert!(
            layer.start + layer.filled <= capacity,
            "a cache of {capacity} slots cannot hold slots up to {}",
            layer.start + layer.filled
        );
        let copy = |written: Tensor<4>| {
            let [b, h, _, d] = written.dims();
            let slots = layer.start..layer.start + layer.filled;
            Tensor::zeros([b, h, capacity, d], &written.device())
                .slice_assign([0..b, 0..h, slots, 0..d], written)
        };
        Self {
            keys: copy(keys),
            values: copy(values),
        }
    }

    /// Writes a step's keys and values [B, kv_heads, 1, d] at slot `slot[0]`, in place.
    pub fn write(&mut self, keys: Tensor<4>, values: Tensor<4>, slot: Tensor<1>, kernels: bool) {
        self.keys = write_at(self.keys.clone(), keys, slot.clone(), 2, kernels);
        self.values = write_at(self.values.clone(), values, slot, 2, kernels);
    }
}

/// `dst` with `src` written at index `index[0]` along `axis` (see
/// `gpt_oss_kernels::write_at_index`): on the GPU kernel path in place by the kernel, elsewhere
/// by burn's slice assignment with the index read back to the host.
pub fn write_at<const D: usize>(
    dst: Tensor<D>,
    src: Tensor<D>,
    index: Tensor<1>,
    axis: usize,
    kernels: bool,
) -> Tensor<D> {
    if kernels {
        gpt_oss_kernels::write_at_index::write_at_index(dst, src, index, axis)
    } else {
        gpt_oss_kernels::write_at_index::reference_write_at_index(dst, src, index, axis)
    }
}

/// The whole model's cache plus the batch layout it was filled with.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// Left padding of each row, fixed by the first call.
    pub pads: Vec<usize>,
    /// Slots filled so far.
    pub next_slot: usize,
}

impl KvCache {
    /// An empty cache whose buffers grow in blocks of `block` slots.
    pub fn new(config: &GptOssConfig, pads: Vec<usize>, block: usize) -> Self {
        let layers = config
            .layer_types
            .iter()
            .map(|t| {
                let keep = match t {
                    LayerType::Sliding => Some(config.sliding_window.saturating_sub(1)),
                    LayerType::Full => None,
                };
                LayerKv::new(keep, block)
            })
            .collect();
        Self {
            layers,
            pads,
            next_slot: 0,
        }
    }

    /// An empty cache over given buffers, one (keys, values) pair [B, kv_heads, capacity,
    /// head_dim] per layer with buffer index = slot, so that a prefill of up to `capacity`
    /// slots writes straight into them: in place when `in_place` (the GPU kernel path; the
    /// buffers then never grow), elsewhere into new tensors that take their place. Old values
    /// past what is written stay; the causal mask hides them from every query.
    pub fn over_buffers(
        config: &GptOssConfig,
        buffers: impl IntoIterator<Item = (Tensor<4>, Tensor<4>)>,
        in_place: bool,
    ) -> Self {
        let mut cache = Self::new(config, vec![], KEY_BLOCK);
        let buffers: Vec<_> = buffers.into_iter().collect();
        assert_eq!(
            buffers.len(),
            cache.layers.len(),
            "one pair of buffers per layer"
        );
        for (layer, (keys, values)) in cache.layers.iter_mut().zip(buffers) {
            layer.keys = Some(keys);
            layer.values = Some(values);
            layer.in_place = in_place;
        }
        cache
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    /// A [1, 1, t, 1] step whose single feature is its slot number.
    fn step(first_slot: usize, t: usize, device: &Device) -> Tensor<4> {
        let slots: Vec<f32> = (first_slot..first_slot + t).map(|s| s as f32).collect();
        Tensor::from_data(TensorData::new(slots, [1, 1, t, 1]), device)
    }

    /// Every slot a query of each step may see sits at its own index of the returned buffer,
    /// across growth and (sliding) compaction; capacities stay multiples of the block and
    /// change only when a step does not fit.
    #[test]
    fn buffers_hold_every_visible_slot() {
        let device = Device::flex();
        for (keep, block, prompt) in [(None, 4, 6), (Some(3), 4, 6), (Some(3), 2, 1), (None, 1, 3)]
        {
            let mut layer = LayerKv::new(keep, block);
            let mut next = 0;
            let mut resizes = 0;
            for t in std::iter::once(prompt).chain(std::iter::repeat_n(1, 20)) {
                let expected = layer.slots_after_append(t);
                let before = layer.capacity();
                let (keys, values) = layer.append(step(next, t, &device), step(next, t, &device));
                resizes += usize::from(keys.dims()[2] != before);
                assert_eq!(keys.dims()[2], expected.len);
                assert_eq!(expected.len % block, 0);
                assert_eq!(layer.start, expected.start);
                let held = keys.try_into_vec_as::<f32>().unwrap();
                assert_eq!(held, values.try_into_vec_as::<f32>().unwrap());
                let first_visible = keep.map_or(0, |k| next.saturating_sub(k));
                for slot in first_visible..next + t {
                    assert_eq!(
                        held[slot - layer.start],
                        slot as f32,
                        "keep {keep:?} block {block}: slot {slot}"
                    );
                }
                next += t;
            }
            if block > 1 {
                assert!(
                    resizes < 20,
                    "keep {keep:?} block {block}: {resizes} resizes"
                );
            }
        }
    }

    /// A cache over given buffers (a kept decode step's) takes a prefill at buffer index =
    /// slot in every layer, sliding ones too, keeps older values past it, reports the whole
    /// buffer as the step's key range, and refuses to grow when written in place.
    #[test]
    fn a_cache_over_buffers_takes_a_prefill_at_its_slots() {
        let device = Device::flex();
        let config = GptOssConfig::from_json_str(
            crate::config::GPT_OSS_20B_CONFIG,
            std::path::Path::new("gpt-oss-20b.json"),
        )
        .unwrap();
        let (capacity, prompt) = (8, 5);
        let old = || Tensor::<4>::full([1, 1, capacity, 1], -1.0, &device);
        let buffers = (0..config.num_hidden_layers).map(|_| (old(), old()));
        let mut cache = KvCache::over_buffers(&config, buffers, false);
        assert!(
            cache.layers.iter().any(|l| l.keep.is_some()),
            "sliding layers"
        );
        for layer in &mut cache.layers {
            let range = layer.slots_after_append(prompt);
            assert_eq!((range.start, range.len), (0, capacity));
            let (keys, values) = layer.append(step(0, prompt, &device), step(0, prompt, &device));
            let held = keys.try_into_vec_as::<f32>().unwrap();
            let expected = [0.0, 1.0, 2.0, 3.0, 4.0, -1.0, -1.0, -1.0];
            assert_eq!(held, expected);
            assert_eq!(held, values.try_into_vec_as::<f32>().unwrap());
            assert_eq!((layer.start, layer.filled), (0, prompt));
        }
        let mut in_place = cache.layers[0].clone();
        in_place.in_place = true;
        let grow = std::panic::catch_unwind(move || {
            in_place.append(step(prompt, 4, &device), step(prompt, 4, &device))
        });
        let message = grow.expect_err("a cache written in place does not grow");
        let message = message
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(message.contains("holds its 8 slots"), "{message}");
    }

    /// A compacted sliding layer's slots land at their own indices of the fixed buffers (buffer
    /// index = slot), the rest zero; a step's write at a slot index fills that slot only.
    #[test]
    fn fixed_buffers_hold_slots_at_their_index() {
        let device = Device::flex();
        let mut layer = LayerKv::new(Some(3), 2);
        for slot in 0..9 {
            layer.append(step(slot, 1, &device), step(slot, 1, &device));
        }
        assert!(layer.start > 0, "the layer compacted");
        let mut fixed = FixedKv::from_layer(&layer, 12);
        let index = Tensor::<1>::from_data(TensorData::new(vec![9.0f32], [1]), &device);
        fixed.write(step(9, 1, &device), step(9, 1, &device), index, false);
        let held = fixed.keys.try_into_vec_as::<f32>().unwrap();
        for (i, &v) in held.iter().enumerate() {
            let expected = if (layer.start..10).contains(&i) {
                i as f32
            } else {
                0.0
            };
            assert_eq!(v, expected, "buffer index {i}");
        }
        assert_eq!(held, fixed.values.try_into_vec_as::<f32>().unwrap());
    }
}
