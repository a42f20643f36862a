//! Held-out text: the variant's perplexity, its fidelity to the full model (mean KL divergence
//! of next-token distributions, top-1 agreement) and the hidden-state norm after every layer,
//! full and variant, over the same tokens.

use burn::tensor::Tensor;
use gpt_oss_model::dataset::Record;
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::{
    ExpertMask, ForwardOptions, GptOss, LayerRouting, ObserverNeeds, RoutingObserver, TokenBatch,
};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::metrics::{argmax, kl_of_log_probs, log_softmax, perplexity};

/// One text's figures (a row of heldout.csv).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldoutText {
    pub id: String,
    pub task: String,
    /// Predicted tokens (all but the first).
    pub tokens: usize,
    pub perplexity: f64,
    pub perplexity_full: f64,
    pub mean_kl: f64,
    pub top1_agreement: f64,
}

/// All held-out texts together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldoutResult {
    pub texts: Vec<HeldoutText>,
    pub tokens: usize,
    pub perplexity: f64,
    pub perplexity_full: f64,
    pub mean_kl: f64,
    pub top1_agreement: f64,
    /// Mean L2 norm of the hidden state after each layer, over every text token.
    pub hidden_norms: Vec<f64>,
    pub hidden_norms_full: Vec<f64>,
}

/// Sums the residual-stream norms per layer over non-padding tokens.
struct HiddenNorms {
    pads: Vec<usize>,
    seq_len: usize,
    sums: Vec<f64>,
    counts: Vec<usize>,
}

impl HiddenNorms {
    fn new(layers: usize) -> Self {
        Self {
            pads: vec![],
            seq_len: 0,
            sums: vec![0.0; layers],
            counts: vec![0; layers],
        }
    }

    fn means(&self) -> Vec<f64> {
        self.sums
            .iter()
            .zip(&self.counts)
            .map(|(s, &c)| s / c.max(1) as f64)
            .collect()
    }
}

impl RoutingObserver for HiddenNorms {
    fn needs(&self) -> ObserverNeeds {
        ObserverNeeds {
            residual_norms: true,
            ..Default::default()
        }
    }
    fn observe(&mut self, _: &LayerRouting<'_>) {}
    fn observe_residual_norms(&mut self, layer: usize, norms: &[f32]) {
        for (row, &pad) in self.pads.iter().enumerate() {
            for &n in &norms[row * self.seq_len + pad..(row + 1) * self.seq_len] {
                self.sums[layer] += n as f64;
                self.counts[layer] += 1;
            }
        }
    }
}

/// Positions per lm_head chunk: bounds the logits held at once (x batch x vocab floats).
const POSITIONS_PER_CHUNK: usize = 64;

/// What is compared with the full model.
#[derive(Clone, Copy)]
pub enum Variant<'a> {
    /// The full model itself (one pass; KL 0, agreement 1).
    Full,
    /// The full model with experts masked (a selection evaluated without writing it).
    Masked(&'a ExpertMask),
    /// Another model: a written pruned checkpoint.
    Model(&'a GptOss),
}

impl<'a> Variant<'a> {
    /// The model and mask that run this variant, given the full model.
    pub fn resolve(self, full: &'a GptOss) -> (&'a GptOss, Option<&'a ExpertMask>) {
        match self {
            Variant::Full => (full, None),
            Variant::Masked(mask) => (full, Some(mask)),
            Variant::Model(model) => (model, None),
        }
    }
}

/// Every text record in `records`, `batch` at a time, through the `full` model and `variant`.
pub fn evaluate_heldout(
    full: &GptOss,
    variant: Variant<'_>,
    tokenizer: &TextTokenizer,
    records: &[Record],
    batch: usize,
) -> Result<HeldoutResult> {
    let layers = full.config.num_hidden_layers;
    let pad = full.config.pad_token_id.unwrap_or(0);
    let (mut full_norms, mut variant_norms) = (HiddenNorms::new(layers), HiddenNorms::new(layers));
    let mut texts = vec![];
    let (mut all_variant, mut all_full) = (vec![], vec![]);
    let (mut kl_sum, mut agreements) = (0.0, 0usize);
    for chunk in records.chunks(batch.max(1)) {
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|r| r.tokenize(tokenizer).map(|t| t.tokens))
            .collect::<std::result::Result<_, _>>()?;
        let tb = TokenBatch::left_padded(&rows, pad);
        let t = tb.seq_len;
        let pass = |norms: &mut HiddenNorms, model: &GptOss, mask: Option<&ExpertMask>| {
            norms.pads = tb.pads.clone();
            norms.seq_len = t;
            model.forward_hidden(
                &tb,
                None,
                ForwardOptions {
                    observer: Some(norms),
                    mask,
                },
            )
        };
        let hidden_full = pass(&mut full_norms, full, None);
        let hidden_variant = match variant {
            Variant::Full => None,
            other => {
                let (model, mask) = other.resolve(full);
                Some((model, pass(&mut variant_norms, model, mask)))
            }
        };
        // Per row: (variant logprob, full logprob, kl, agree) of every predicted position.
        let mut per_row: Vec<Vec<(f64, f64, f64, bool)>> = vec![vec![]; rows.len()];
        let mut start = 0;
        while start + 1 < t {
            let len = POSITIONS_PER_CHUNK.min(t - 1 - start);
            let logits = |model: &GptOss, h: &Tensor<3>| {
                model
                    .lm_head
                    .forward(h.clone().narrow(1, start, len))
                    .try_into_vec_as::<f32>()
                    .expect("f32 logits")
            };
            let full_logits = logits(full, &hidden_full);
            let variant_logits = hidden_variant.as_ref().map(|(m, h)| logits(m, h));
            let vocab = full_logits.len() / (rows.len() * len);
            for (row, &row_pad) in tb.pads.iter().enumerate() {
                for j in 0..len {
                    let s = start + j;
                    if s < row_pad {
                        continue;
                    }
                    let target = tb.ids[row * t + s + 1] as usize;
                    let at = (row * len + j) * vocab;
                    let f = &full_logits[at..at + vocab];
                    let full_lp = log_softmax(f);
                    let figures = match &variant_logits {
                        Some(v) => {
                            let v = &v[at..at + vocab];
                            let variant_lp = log_softmax(v);
                            (
                                variant_lp[target],
                                full_lp[target],
                                kl_of_log_probs(&full_lp, &variant_lp),
                                argmax(f) == argmax(v),
                            )
                        }
                        None => (full_lp[target], full_lp[target], 0.0, true),
                    };
                    per_row[row].push(figures);
                }
            }
            start += len;
        }
        for (record, figures) in chunk.iter().zip(per_row) {
            let variant_lp: Vec<f64> = figures.iter().map(|f| f.0).collect();
            let full_lp: Vec<f64> = figures.iter().map(|f| f.1).collect();
            let kl: f64 = figures.iter().map(|f| f.2).sum();
            let agree = figures.iter().filter(|f| f.3).count();
            let n = figures.len().max(1) as f64;
            texts.push(HeldoutText {
                id: record.id.clone(),
                task: record.task.clone(),
                tokens: figures.len(),
                perplexity: perplexity(&variant_lp),
                perplexity_full: perplexity(&full_lp),
                mean_kl: kl / n,
                top1_agreement: agree as f64 / n,
            });
            kl_sum += kl;
            agreements += agree;
            all_variant.extend(variant_lp);
            all_full.extend(full_lp);
        }
    }
    let tokens = all_variant.len();
    let hidden_norms_full = full_norms.means();
    Ok(HeldoutResult {
        texts,
        tokens,
        perplexity: perplexity(&all_variant),
        perplexity_full: perplexity(&all_full),
        mean_kl: kl_sum / tokens.max(1) as f64,
        top1_agreement: agreements as f64 / tokens.max(1) as f64,
        hidden_norms: match variant {
            Variant::Full => hidden_norms_full.clone(),
            _ => variant_norms.means(),
        },
        hidden_norms_full,
    })
}
