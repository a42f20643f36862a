//! Log-probabilities of given tokens. Logits are produced a chunk of tokens at a time (log-softmax
//! and the target gathered per chunk), so [tokens x 201,088] logits never exist at once: at most
//! `chunk_tokens x vocab` floats (2,048 x 201,088 x 4 bytes = 1.6 GB for gpt-oss).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::transformer::{ForwardOptions, GptOss, PendingRouting, TokenBatch};

/// Tokens (batch rows x positions) per lm_head chunk.
pub const DEFAULT_CHUNK: usize = 2048;

/// For each row, log p(token t | tokens before t) for every non-padding token after the row's
/// first: `rows[b].len() - 1` values. `chunk_tokens` bounds the logits alive at once (whole
/// positions of the batch, at least one position).
pub fn token_logprobs(
    model: &GptOss,
    rows: &[Vec<u32>],
    options: ForwardOptions<'_, '_>,
    chunk_tokens: usize,
) -> Vec<Vec<f32>> {
    queue_token_logprobs(model, rows, options, chunk_tokens).read()
}

/// The log-probabilities of [`token_logprobs`] while still on the device: every operation has
/// been handed to the backend, nothing has been read back (what the host spends before the
/// read is its own launch work), not even the routing an observer waits for.
pub struct QueuedLogprobs<'a, 'o> {
    /// [B, T - 1] (padding positions included); `None` for rows shorter than two tokens.
    all: Option<Tensor<2>>,
    /// Left-padding of each row.
    pads: Vec<usize>,
    /// The observer's routing, read by [`Self::read`] first.
    routing: Option<PendingRouting<'a, 'o>>,
}

impl QueuedLogprobs<'_, '_> {
    /// Hands the routing to the observer, then reads the values back (both wait for the
    /// device, the routing's read for the whole pass) and drops each row's padding.
    pub fn read(self) -> Vec<Vec<f32>> {
        if let Some(routing) = self.routing {
            routing.send();
        }
        let Some(all) = self.all else {
            return vec![vec![]; self.pads.len()];
        };
        let [b, len] = all.dims();
        let all: Vec<f32> = all.try_into_vec_as::<f32>().expect("f32 log-probabilities");
        (0..b)
            .map(|row| all[row * len + self.pads[row]..(row + 1) * len].to_vec())
            .collect()
    }
}

/// [`token_logprobs`] up to the read: the forward pass, the lm_head chunks and the gathered
/// targets, queued on the model's device.
pub fn queue_token_logprobs<'a, 'o>(
    model: &GptOss,
    rows: &[Vec<u32>],
    options: ForwardOptions<'a, 'o>,
    chunk_tokens: usize,
) -> QueuedLogprobs<'a, 'o> {
    let pad = model.config.pad_token_id.unwrap_or(0);
    let batch = TokenBatch::left_padded(rows, pad);
    let (b, t) = (batch.batch, batch.seq_len);
    if t < 2 {
        return QueuedLogprobs {
            all: None,
            pads: vec![0; b],
            routing: None,
        };
    }
    let device = model.device();
    let (hidden, routing) = model.forward_hidden_routing_later(&batch, None, options);
    // Target of position s is the token at s + 1.
    let targets: Vec<i64> = (0..b)
        .flat_map(|row| (0..t - 1).map(move |s| (row, s)))
        .map(|(row, s)| batch.ids[row * t + s + 1] as i64)
        .collect();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [b, t - 1]), &device);
    let mut pieces = vec![];
    let chunk = (chunk_tokens / b).max(1);
    let mut start = 0;
    while start < t - 1 {
        let len = chunk.min(t - 1 - start);
        let chosen = model.lm_head.target_logprobs(
            hidden.clone().narrow(1, start, len),
            targets.clone().narrow(1, start, len),
        );
        pieces.push(chosen);
        start += len;
    }
    QueuedLogprobs {
        all: Some(Tensor::cat(pieces, 1)),
        pads: batch.pads.clone(),
        routing: Some(routing),
    }
}

/// Full log-softmax rows [T, vocab] for one unpadded sequence (tests and small inspections).
pub fn full_logprobs(model: &GptOss, tokens: &[u32]) -> Tensor<2> {
    let batch = TokenBatch::left_padded(&[tokens.to_vec()], 0);
    let logits = model.forward(&batch, None, ForwardOptions::default());
    let [_, t, v] = logits.dims();
    log_softmax(logits.reshape([t, v]), 1)
}
