//! One greedy decode step whose changing inputs all live on the device, so that the step can be
//! captured once and replayed (`burn::tensor::capture`): on the GPU a batch-1 step is some 160
//! kernels (six per layer) of a few to a few tens of microseconds each, and launching them one by
//! one through burn costs more host time than the device spends on them.
//!
//! What changes from step to step is device state: the current slot (a one-element tensor), the
//! current tokens, the greedy picks by slot, and KV caches that hold every slot of the
//! generation ([`FixedKv`]). What the host used to compute per step is tabulated once per
//! generation by slot ([`StepTables`]: RoPE's cos and sin, each layer kind's visible key ranges)
//! and picked by the step from the device slot. A step reads the slot and tokens, writes its keys
//! and values at the slot, its greedy picks at the next slot, and advances the slot.
//!
//! A `generate::Decoder` keeps the state, the tables and the captured step for its next
//! generation of the same shape: its prefill writes into the same key and value buffers
//! ([`StepState::cache_for_prefill`]), and [`StepState::refill_after_prefill`] and
//! [`StepTables::refill_for`] write the new slot, tokens and padding into the rest (in place on
//! the GPU), so the recorded launches find them.

use std::cell::OnceCell;
use std::collections::HashMap;

use burn::tensor::{Device, Int, IntDType, Tensor, TensorData};
use gpt_oss_kernels::greedy_picks::{greedy_into_state, reference_greedy_into_state};
use gpt_oss_kernels::write_in_place::{
    reference_write_in_place, write_in_place, write_in_place_int,
};

use super::GptOss;
use super::cache::{FixedKv, KvCache};
use super::mask::{SlotRange, visible_ranges};
use super::moe::RoutingHooks;
use super::moe_pairs::{arrival_counts_for, pair_weights};
use super::project::on_kernel_path;
use crate::routing::ExpertMask;

/// What one generation's steps look up by slot.
#[derive(Debug, Clone)]
pub struct StepTables {
    /// Each row's left padding the tables were made for.
    pads: Vec<usize>,
    /// cos and sin [B, 1, capacity, head_dim / 2]: row b at slot s is at position s - pad[b].
    cos: Tensor<4>,
    sin: Tensor<4>,
    /// Per attention window (`None`: full layers), [capacity, B * 2] 32-bit: the visible buffer
    /// indices of a query at each slot ([`visible_ranges`] over the whole buffer).
    key_ranges: HashMap<Option<usize>, Tensor<2, Int>>,
    /// Per layer, the router's bias plus an expert mask's [E] on the device (`None`: no mask,
    /// or none forbidden in that layer): made once per generation, so a masked step reads
    /// nothing from the host, can be captured, and adds nothing per step.
    router_biases: Vec<Option<Tensor<1>>>,
}

/// The tables that depend on each row's padding: RoPE's cos and sin, and the key ranges.
struct PositionTables {
    cos: Tensor<4>,
    sin: Tensor<4>,
    key_ranges: HashMap<Option<usize>, Tensor<2, Int>>,
}

impl PositionTables {
    /// The tables for `pads` (each row's left padding) and slots `0..capacity`.
    fn new(model: &GptOss, pads: &[usize], capacity: usize, device: &Device) -> Self {
        let b = pads.len();
        let positions: Vec<usize> = pads
            .iter()
            .flat_map(|&pad| (0..capacity).map(move |s| s.saturating_sub(pad)))
            .collect();
        let (cos, sin) = model.rope.cos_sin(&positions, b, device);
        let keys = SlotRange {
            start: 0,
            len: capacity,
        };
        let key_ranges = model
            .layers
            .iter()
            .map(|layer| layer.sliding_window)
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .map(|window| {
                let ranges: Vec<i32> = (0..capacity)
                    .flat_map(|slot| {
                        let query = SlotRange {
                            start: slot,
                            len: 1,
                        };
                        visible_ranges(pads, query, keys, window)
                    })
                    .collect();
                let table =
                    Tensor::<2, Int>::from_data(TensorData::new(ranges, [capacity, b * 2]), device)
                        .cast(IntDType::I32);
                (window, table)
            })
            .collect();
        Self {
            cos,
            sin,
            key_ranges,
        }
    }
}

impl StepTables {
    /// Tables for `pads` (each row's left padding) and slots `0..capacity`, routing under
    /// `mask` when given.
    pub fn new(
        model: &GptOss,
        pads: &[usize],
        capacity: usize,
        mask: Option<&ExpertMask>,
        device: &Device,
    ) -> Self {
        let PositionTables {
            cos,
            sin,
            key_ranges,
        } = PositionTables::new(model, pads, capacity, device);
        let router_biases = (model.layers.iter().enumerate())
            .map(|(i, layer)| {
                mask.and_then(|m| m.router_bias_on(i, device))
                    .map(|extra| layer.mlp.router_bias_plus(extra))
            })
            .collect();
        Self {
            pads: pads.to_vec(),
            cos,
            sin,
            key_ranges,
            router_biases,
        }
    }

    /// Slots the tables cover.
    pub fn capacity(&self) -> usize {
        self.cos.dims()[2]
    }

    /// The tables for another generation's `pads` (as many rows, the same capacity and mask),
    /// written into these tables' own buffers (in place on the kernel path), so that a captured
    /// step finds them where it was recorded. Nothing is written when the padding is the same.
    pub fn refill_for(&mut self, model: &GptOss, pads: &[usize]) {
        assert_eq!(
            pads.len(),
            self.pads.len(),
            "refilled tables keep their rows"
        );
        if pads == self.pads {
            return;
        }
        let kernels = model.on_kernel_path();
        let fresh = PositionTables::new(model, pads, self.capacity(), &self.cos.device());
        overwrite(&mut self.cos, fresh.cos, 0, 0, kernels);
        overwrite(&mut self.sin, fresh.sin, 0, 0, kernels);
        for (window, table) in fresh.key_ranges {
            let kept = self.key_ranges.get_mut(&window).expect("the same layers");
            *kept = if kernels {
                write_in_place_int(kept.clone(), table, 0, 0)
            } else {
                reference_write_in_place(kept.clone(), table, 0, 0)
            };
        }
        self.pads = pads.to_vec();
    }
}

/// Writes `src` into `dst` from `start` along `axis`: in place on the kernel path (`dst` keeps
/// its buffer), by slice assignment (a new tensor) elsewhere.
fn overwrite<const D: usize>(
    dst: &mut Tensor<D>,
    src: Tensor<D>,
    axis: usize,
    start: usize,
    kernels: bool,
) {
    *dst = if kernels {
        write_in_place(dst.clone(), src, axis, start)
    } else {
        reference_write_in_place(dst.clone(), src, axis, start)
    };
}

/// What a decode step's attention reads at the step's slot: the step tables, whose rows for
/// the slot the one-launch attention picks itself, and those rows picked by burn ops for the
/// other paths (once per step, on first use: the tables hold every slot of the generation).
pub struct AtSlot<'a> {
    /// [1]: the step's slot (an integer held as f32).
    pub slot: Tensor<1>,
    tables: &'a StepTables,
    picked: OnceCell<PickedAtSlot>,
}

/// The step tables' rows for one slot.
struct PickedAtSlot {
    /// cos and sin [B, 1, 1, head_dim / 2].
    cos_sin: (Tensor<4>, Tensor<4>),
    /// Per attention window, [B * 2].
    key_ranges: HashMap<Option<usize>, Tensor<1, Int>>,
}

impl<'a> AtSlot<'a> {
    pub fn new(tables: &'a StepTables, slot: Tensor<1>) -> Self {
        Self {
            slot,
            tables,
            picked: OnceCell::new(),
        }
    }

    /// RoPE's cos and sin tables [B, 1, capacity, head_dim / 2].
    pub fn rope_tables(&self) -> (Tensor<4>, Tensor<4>) {
        (self.tables.cos.clone(), self.tables.sin.clone())
    }

    /// The visible buffer indices of a query at each slot for `window`'s layers [capacity,
    /// B * 2].
    pub fn key_range_table(&self, window: Option<usize>) -> Tensor<2, Int> {
        self.tables.key_ranges[&window].clone()
    }

    /// cos and sin at the slot [B, 1, 1, head_dim / 2].
    pub fn cos_sin(&self) -> &(Tensor<4>, Tensor<4>) {
        &self.picked().cos_sin
    }

    /// The visible buffer indices at the slot for `window`'s layers [B * 2].
    pub fn key_ranges(&self, window: Option<usize>) -> Tensor<1, Int> {
        self.picked().key_ranges[&window].clone()
    }

    fn picked(&self) -> &PickedAtSlot {
        self.picked.get_or_init(|| {
            let index = self.slot.clone().int();
            let cos_sin = (
                self.tables.cos.clone().select(2, index.clone()),
                self.tables.sin.clone().select(2, index.clone()),
            );
            let key_ranges = (self.tables.key_ranges.iter())
                .map(|(&window, table)| {
                    let width = table.dims()[1];
                    let ranges = table.clone().select(0, index.clone()).reshape([width]);
                    (window, ranges)
                })
                .collect();
            PickedAtSlot {
                cos_sin,
                key_ranges,
            }
        })
    }
}

/// The device state a step reads and writes.
///
/// On the GPU the step writes the picks and the slot in place, inside a kernel that burn's
/// fusion does not see as their writer: fusion may still hold queued steps when the host reads
/// them, and a plain read then comes back stale (seen on an H100: the last token of an
/// uncaptured generation missing). Read them through [`Self::slot_value`] and
/// [`Self::picks_values`], which wait for the device first.
#[derive(Debug, Clone)]
pub struct StepState {
    /// [1]: the slot of this step's tokens (an integer held as f32).
    slot: Tensor<1>,
    /// [1, B]: this step's token of each row (integers held as f32, exact below 2^24).
    tokens: Tensor<2>,
    /// [B, capacity]: each row's greedy picks by slot (a step writes at slot + 1).
    picks: Tensor<2>,
    /// One per layer.
    layers: Vec<FixedKv>,
    /// Zero counts a layer's launch of the output projection with the router takes (its
    /// workgroups count their arrivals and the last sets them back to zero; the layers run one
    /// after another, so they share them). Made only for batches that launch can take.
    arrivals: Option<Tensor<1, Int>>,
}

impl StepState {
    /// The state after a prefill of `prompt_slots` slots into `cache`, whose greedy picks for
    /// the next slot were `first`: the caches copied into buffers of `capacity` slots.
    pub fn after_prefill(
        cache: &KvCache,
        first: &[u32],
        prompt_slots: usize,
        capacity: usize,
        device: &Device,
    ) -> Self {
        let (slot, tokens, picks) = first_values(first, prompt_slots, capacity, device);
        let arrivals = arrival_counts_for(first.len(), device);
        Self {
            slot,
            tokens,
            picks,
            arrivals,
            layers: cache
                .layers
                .iter()
                .map(|layer| FixedKv::from_layer(layer, capacity))
                .collect(),
        }
    }

    /// Slots the state's caches and picks hold.
    pub fn capacity(&self) -> usize {
        self.picks.dims()[1]
    }

    /// Rows the state decodes.
    pub fn rows(&self) -> usize {
        self.picks.dims()[0]
    }

    /// An empty cache over this state's key and value buffers, for the prefill of the next
    /// generation of its shape (as many rows, at most its capacity): the prefill writes
    /// straight into them, in place on the kernel path, so that a captured step finds its keys
    /// where it was recorded and nothing is copied after it. Hand the cache back to
    /// [`Self::refill_after_prefill`].
    pub fn cache_for_prefill(&self, model: &GptOss) -> KvCache {
        let buffers = (self.layers.iter()).map(|kv| (kv.keys.clone(), kv.values.clone()));
        KvCache::over_buffers(&model.config, buffers, model.on_kernel_path())
    }

    /// What [`Self::after_prefill`] makes of another prefill of `prompt_slots` slots, made into
    /// [`Self::cache_for_prefill`]'s `cache`: the slot, the tokens and the picks written into
    /// this state's own buffers (in place on the kernel path), the keys and values taken back
    /// (the same buffers there). Cache slots past the prefill keep old values; a step reads
    /// only slots up to its own, which it writes first.
    pub fn refill_after_prefill(
        &mut self,
        cache: KvCache,
        first: &[u32],
        prompt_slots: usize,
        kernels: bool,
    ) {
        assert_eq!(first.len(), self.rows(), "a refilled state keeps its rows");
        assert_eq!(
            cache.layers.len(),
            self.layers.len(),
            "one cache layer per layer"
        );
        let device = self.slot.device();
        let (slot, tokens, picks) = first_values(first, prompt_slots, self.capacity(), &device);
        overwrite(&mut self.slot, slot, 0, 0, kernels);
        overwrite(&mut self.tokens, tokens, 0, 0, kernels);
        overwrite(&mut self.picks, picks, 0, 0, kernels);
        for (fixed, layer) in self.layers.iter_mut().zip(cache.layers) {
            assert!(
                layer.start == 0 && layer.filled == prompt_slots,
                "the prefill was made into the state's buffers (slots from 0, {prompt_slots} of them)"
            );
            let (Some(keys), Some(values)) = (layer.keys, layer.values) else {
                panic!("a prefilled layer has keys and values");
            };
            assert_eq!(keys.dims(), fixed.keys.dims(), "the state's own buffers");
            (fixed.keys, fixed.values) = (keys, values);
        }
    }

    /// The slot the next step reads, once every queued step has run.
    pub fn slot_value(&self) -> usize {
        self.wait_for_steps();
        self.slot.clone().into_scalar::<f32>() as usize
    }

    /// Each row's picks at slots `start..start + len` (row-major, [B * len]), once every queued
    /// step has run.
    pub fn picks_values(&self, start: usize, len: usize) -> Vec<f32> {
        self.wait_for_steps();
        (self.picks.clone().narrow(1, start, len))
            .try_into_vec_as::<f32>()
            .expect("f32 picks")
    }

    /// Runs whatever fusion still holds of the steps (their in-place writes are not tracked).
    fn wait_for_steps(&self) {
        self.slot
            .device()
            .sync()
            .expect("the device runs the queued decode steps");
    }
}

/// A state's slot [1], tokens [1, B] and picks [B, capacity] after a prefill of
/// `prompt_slots` slots whose greedy picks were `first`.
fn first_values(
    first: &[u32],
    prompt_slots: usize,
    capacity: usize,
    device: &Device,
) -> (Tensor<1>, Tensor<2>, Tensor<2>) {
    let b = first.len();
    let tokens: Vec<f32> = first.iter().map(|&t| t as f32).collect();
    let tokens = Tensor::<2>::from_data(TensorData::new(tokens, [1, b]), device);
    let picks = Tensor::<2>::zeros([b, capacity], device).slice_assign(
        [0..b, prompt_slots..prompt_slots + 1],
        tokens.clone().reshape([b, 1]),
    );
    let slot = Tensor::from_data(TensorData::new(vec![prompt_slots as f32], [1]), device);
    (slot, tokens, picks)
}

impl GptOss {
    /// Whether this model runs the GPU kernels (bf16 weights; see `store_weights_bf16`).
    pub fn on_kernel_path(&self) -> bool {
        on_kernel_path(&self.layers[0].self_attn.q_proj.weight.val())
    }

    /// Whether a decoder captures its decode step of `rows` rows (and replays it): the kernel
    /// path with every MoE layer on the per-pair kernels, a step that reads nothing back to the
    /// host. Unpacked experts read their token lists back, so they never qualify. The sorted
    /// path read its expert counts back when this rule was made; since its sort became four
    /// launches it reads nothing back, but its captured steps (branch `capture-past-32-rows`)
    /// ran 0.3-2.9% faster with a kept decoder and 5-7% slower captured per generation, so they
    /// stay out (docs/gpu-path.md, "A decode step").
    pub fn captures_steps(&self, rows: usize) -> bool {
        self.on_kernel_path()
            && self
                .layers
                .iter()
                .all(|layer| pair_weights(&layer.mlp, rows).is_some())
    }

    /// One greedy decode step on `state` (see the module docs): the tokens at `state.slot` go
    /// through the model, their greedy picks are written at the next slot and become the
    /// tokens, and the slot advances, routed under the mask `tables` were made with. Reads
    /// nothing back to the host on the kernel path.
    pub fn decode_step(&self, state: &mut StepState, tables: &StepTables) {
        let kernels = self.on_kernel_path();
        let b = state.tokens.dims()[1];
        let h = self.config.hidden_size;
        let at = AtSlot::new(tables, state.slot.clone());
        let tokens = state.tokens.clone().reshape([b]);
        let mut x = self
            .embed_tokens
            .forward_token_values(tokens)
            .reshape([b, 1, h]);
        for (i, layer) in self.layers.iter().enumerate() {
            let attended = layer.self_attn.attend_step(
                x.clone(),
                &layer.input_layernorm,
                &at,
                layer.sliding_window,
                &mut state.layers[i],
            );
            let hooks = RoutingHooks {
                layer: i,
                router_bias: tables.router_biases[i].clone(),
                observer: None,
                balance_loss: false,
                residual: None,
                deferred: None,
            };
            x = layer
                .moe_after_attended(x, attended, hooks, state.arrivals.as_ref())
                .hidden;
        }
        let logits = self.lm_head.forward(self.norm.forward(x));
        let vocab = logits.dims()[2];
        let logits = logits.reshape([b, vocab]);
        let written = (
            state.picks.clone(),
            state.tokens.clone(),
            state.slot.clone(),
        );
        (state.picks, state.tokens, state.slot) = if kernels {
            greedy_into_state(logits, written)
        } else {
            reference_greedy_into_state(logits, written)
        };
    }
}
