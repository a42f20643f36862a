//! The MoE block (spec 4.6): router with bias, top-k, softmax over the k selected logits, the
//! selected experts' outputs weighted and summed. Tokens are grouped by expert so that each
//! expert runs once per call on the tokens routed to it; a few tokens on the GPU kernel path
//! (decoding) skip the grouping (`moe_pairs`).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData, Transaction};
use gpt_oss_kernels::router_logits;

use super::experts::Experts;
use super::moe_grouped::{ExpertPath, grouped_experts};
use super::moe_pairs::{moe_by_pairs, pair_weights};
use crate::routing::{LayerRouting, ObserverNeeds, RoutingObserver};

#[derive(Module, Debug)]
pub struct Moe {
    /// [H, E] with bias [E].
    pub router: Linear,
    pub experts: Experts,
    pub top_k: usize,
    /// How the experts run (per expert, or grouped on the device).
    #[module(skip)]
    pub path: ExpertPath,
}

/// Per-call routing inputs: an optional router bias (under an expert mask) and observer.
pub struct RoutingHooks<'a, 'o> {
    pub layer: usize,
    /// The router's whole bias [E] in place of its own: its own plus an expert mask's 0 or -inf
    /// per expert ([`Moe::router_bias_plus`], made once per pass or per generation).
    pub router_bias: Option<Tensor<1>>,
    pub observer: Option<&'a mut (dyn RoutingObserver + 'o)>,
    /// Also return the load-balancing loss (training).
    pub balance_loss: bool,
    /// Added to the output [B, T, H] (the decoder layer's residual stream; the per-pair GPU
    /// kernel adds it in the same launch).
    pub residual: Option<Tensor<3>>,
    /// Where to leave the layer's routing for the observer to read after the pass (one wait
    /// for the device at the end instead of one per layer), when its needs allow
    /// ([`ObserverNeeds::can_wait`]); `None` hands it over at once.
    pub deferred: Option<&'a mut Vec<RoutingReport>>,
}

/// The MoE block's output.
pub struct MoeOutput {
    /// [B, T, H], plus [`RoutingHooks::residual`] when given.
    pub hidden: Tensor<3>,
    /// Switch-style load-balancing loss when asked for: E * sum_e f_e * P_e, with f_e the
    /// fraction of tokens routed to expert e (summed over ranks) and P_e its mean router
    /// probability, as transformers' `load_balancing_loss_func` computes it. k when balanced.
    pub balance_loss: Option<Tensor<1>>,
}

impl Moe {
    /// The router's bias [E] plus `extra` (an expert mask's): the whole bias routing under the
    /// mask uses ([`RoutingHooks::router_bias`]).
    pub fn router_bias_plus(&self, extra: Tensor<1>) -> Tensor<1> {
        match &self.router.bias {
            Some(bias) => bias.val() + extra,
            None => extra,
        }
    }

    pub fn num_experts(&self) -> usize {
        self.experts.gate_up.num_experts()
    }

    /// The router's logits [n, E] of `xs` [n, H], with `bias` [E] in place of the router's own
    /// when given. On the GPU kernel path one launch (`gpt_oss_kernels::router_logits`) instead
    /// of burn's f32 matmul and the bias add, for routers where it was measured faster (up to
    /// 32 experts: 20b's, not 120b's).
    fn router_logits(&self, xs: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
        let weight = self.router.weight.val();
        let [_, experts] = weight.dims();
        let bias = bias.or_else(|| self.router.bias.as_ref().map(|b| b.val()));
        if self.path == ExpertPath::GroupedKernel && router_logits::pays_for(experts) {
            let bias = bias.unwrap_or_else(|| Tensor::zeros([experts], &weight.device()));
            return router_logits::router_logits(xs, weight, bias);
        }
        match bias {
            Some(bias) => xs.matmul(weight) + bias.unsqueeze::<2>(),
            None => xs.matmul(weight),
        }
    }

    /// `x` [B, T, H] (already normalised).
    pub fn forward(&self, x: Tensor<3>, hooks: RoutingHooks<'_, '_>) -> MoeOutput {
        let [b, t, h] = x.dims();
        let n = b * t;
        let k = self.top_k;
        let xs = x.reshape([n, h]);
        if hooks.observer.is_none()
            && !hooks.balance_loss
            && let Some(weights) = pair_weights(self, n)
        {
            let residual = hooks.residual.map(|r| r.reshape([n, h]));
            let out = moe_by_pairs(self, weights, xs, hooks.router_bias, residual);
            return MoeOutput {
                hidden: out.reshape([b, t, h]),
                balance_loss: None,
            };
        }
        let logits = self.router_logits(xs.clone(), hooks.router_bias);
        let (top_logits, top_ids) = logits.clone().topk_with_indices(k, 1);
        let gates = softmax(top_logits, 1).reshape([n * k]);
        let needs = hooks
            .observer
            .as_ref()
            .map(|o| o.needs())
            .unwrap_or_default();
        // The grouped path computes no per-expert output statistics and no balance loss.
        let grouped =
            self.path != ExpertPath::PerExpert && !needs.expert_output_norms && !hooks.balance_loss;
        let ExpertsRun {
            out,
            ids,
            output_stats,
            balance_loss,
        } = if grouped {
            ExpertsRun {
                out: grouped_experts(
                    &self.experts,
                    xs.clone(),
                    top_ids.clone(),
                    gates.clone(),
                    self.path,
                ),
                ids: None,
                output_stats: None,
                balance_loss: None,
            }
        } else {
            self.per_expert(&xs, &top_ids, &gates, &logits, needs, hooks.balance_loss)
        };
        if let Some(observer) = hooks.observer {
            let report = RoutingReport {
                layer: hooks.layer,
                batch: b,
                seq_len: t,
                top_k: k,
                num_experts: self.num_experts(),
                read_ids: ids,
                top_ids,
                gates,
                logits: needs.router_logits.then_some(logits),
                moe_input: needs.moe_inputs.then_some(xs),
                output_stats,
            };
            match hooks.deferred {
                Some(pending) if needs.can_wait() => pending.push(report),
                _ => send_reports(vec![report], observer),
            }
        }
        let out = out.reshape([b, t, h]);
        MoeOutput {
            hidden: match hooks.residual {
                Some(residual) => residual + out,
                None => out,
            },
            balance_loss,
        }
    }

    /// One matmul per routed expert on its token list (reads the selected ids to the host).
    fn per_expert(
        &self,
        xs: &Tensor<2>,
        top_ids: &Tensor<2, Int>,
        gates: &Tensor<1>,
        logits: &Tensor<2>,
        needs: ObserverNeeds,
        want_balance_loss: bool,
    ) -> ExpertsRun {
        let [n, h] = xs.dims();
        let k = self.top_k;
        let device = xs.device();
        // One read of the selected ids per layer: it decides which experts run on which tokens.
        let ids: Vec<i64> = top_ids
            .clone()
            .try_into_vec_as::<i64>()
            .expect("expert ids are integers");
        let mut routed: Vec<Vec<usize>> = vec![vec![]; self.num_experts()];
        for (slot, &e) in ids.iter().enumerate() {
            routed[e as usize].push(slot);
        }
        let balance_loss = want_balance_loss.then(|| {
            let e = self.num_experts();
            let fraction: Vec<f32> = routed.iter().map(|s| s.len() as f32 / n as f32).collect();
            let fraction = Tensor::<2>::from_data(TensorData::new(fraction, [1, e]), &device);
            let mean_prob = softmax(logits.clone(), 1).mean_dim(0);
            (mean_prob * fraction).sum().mul_scalar(e as f32)
        });
        // Per (token, slot): the selected expert's output L2 norm and max |value|, gathered on
        // the device and read once per layer.
        let mut output_stats = needs
            .expert_output_norms
            .then(|| Tensor::<2>::zeros([n * k, 2], &device));

        let mut out = Tensor::<2>::zeros([n, h], &device);
        for (e, slots) in routed.iter().enumerate() {
            if slots.is_empty() {
                continue;
            }
            let m = slots.len();
            let rows: Vec<i64> = slots.iter().map(|&s| (s / k) as i64).collect();
            let slot_ids: Vec<i64> = slots.iter().map(|&s| s as i64).collect();
            let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [m]), &device);
            let slot_ids = Tensor::<1, Int>::from_data(TensorData::new(slot_ids, [m]), &device);
            let y = self
                .experts
                .forward_expert(e, xs.clone().select(0, rows.clone()));
            if let Some(stats) = output_stats.take() {
                let both = Tensor::cat(
                    vec![
                        y.clone().square().sum_dim(1).sqrt(),
                        y.clone().abs().max_dim(1),
                    ],
                    1,
                );
                output_stats =
                    Some(stats.select_assign(0, slot_ids.clone(), both, IndexingUpdateOp::Add));
            }
            let weight = gates.clone().select(0, slot_ids).reshape([m, 1]);
            out = out.select_assign(0, rows, y * weight, IndexingUpdateOp::Add);
        }

        ExpertsRun {
            out,
            ids: Some(ids),
            output_stats,
            balance_loss,
        }
    }
}

/// What one expert path returns.
struct ExpertsRun {
    /// [n, H]
    out: Tensor<2>,
    /// The selected ids, when the path read them to the host.
    ids: Option<Vec<i64>>,
    /// Per (token, rank): the expert output's L2 norm and max |value| [n * k, 2], when asked.
    output_stats: Option<Tensor<2>>,
    /// When asked (training).
    balance_loss: Option<Tensor<1>>,
}

/// One layer's routing for its observer, still on the device where possible: what the
/// observer asked for, read when [`send_reports`] hands it over.
pub struct RoutingReport {
    layer: usize,
    batch: usize,
    seq_len: usize,
    top_k: usize,
    num_experts: usize,
    /// The selected ids when the per-expert path read them already; else read from `top_ids`.
    read_ids: Option<Vec<i64>>,
    /// [n, k]
    top_ids: Tensor<2, Int>,
    /// [n * k]
    gates: Tensor<1>,
    /// [n, E] after masking, when the observer wants them.
    logits: Option<Tensor<2>>,
    /// [n, H], when the observer wants them (never held for a deferred report:
    /// [`ObserverNeeds::can_wait`]).
    moe_input: Option<Tensor<2>>,
    /// Per (token, rank): the expert output's L2 norm and max |value| [n * k, 2], when computed.
    output_stats: Option<Tensor<2>>,
}

/// Hands `reports` to the observer in order, after reading what each holds on the device in
/// one transaction: one wait for the device for all of them (a deferred pass's 24 layers read
/// one by one waited 48 times, with the device idle between the reads).
pub fn send_reports(reports: Vec<RoutingReport>, observer: &mut (dyn RoutingObserver + '_)) {
    let mut transaction = Transaction::default();
    for report in &reports {
        if report.read_ids.is_none() {
            transaction = transaction.register(report.top_ids.clone());
        }
        transaction = transaction.register(report.gates.clone());
        for tensor in [&report.logits, &report.moe_input, &report.output_stats]
            .into_iter()
            .flatten()
        {
            transaction = transaction.register(tensor.clone());
        }
    }
    let mut reads = transaction.execute().into_iter();
    for report in reports {
        let ids = report
            .read_ids
            .unwrap_or_else(|| read_as::<i64>(&mut reads));
        let expert_ids: Vec<u32> = ids.iter().map(|&e| e as u32).collect();
        let gate_weights: Vec<f32> = read_as(&mut reads);
        let router_logits: Option<Vec<f32>> = report.logits.map(|_| read_as(&mut reads));
        let moe_input: Option<Vec<f32>> = report.moe_input.map(|_| read_as(&mut reads));
        let (output_norms, output_max_abs) = match report.output_stats {
            Some(_) => {
                let both: Vec<f32> = read_as(&mut reads);
                let norms: Vec<f32> = both.iter().step_by(2).copied().collect();
                let max_abs: Vec<f32> = both.iter().skip(1).step_by(2).copied().collect();
                (Some(norms), Some(max_abs))
            }
            None => (None, None),
        };
        observer.observe(&LayerRouting {
            layer: report.layer,
            batch: report.batch,
            seq_len: report.seq_len,
            top_k: report.top_k,
            num_experts: report.num_experts,
            expert_ids: &expert_ids,
            gate_weights: &gate_weights,
            router_logits: router_logits.as_deref(),
            expert_output_norms: output_norms.as_deref(),
            expert_output_max_abs: output_max_abs.as_deref(),
            moe_input: moe_input.as_deref(),
        });
    }
}

/// The next read of a transaction, as `E`s (registered and read in the same order).
fn read_as<E: burn::tensor::Element>(reads: &mut impl Iterator<Item = TensorData>) -> Vec<E> {
    reads
        .next()
        .expect("one read per registered tensor")
        .convert::<E>()
        .try_into_vec::<E>()
        .expect("converted to E")
}
