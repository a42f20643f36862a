//! The router's logits for many tokens (`router_logits`: scoring's and prefill's router in one
//! launch) against burn's f32 matmul plus the bias, and timed against it.

use burn::tensor::{Device, Distribution, Tensor};
use serde_json::json;

use super::decoding::random_tokens_and_router;
use super::{Worst, seconds_per_call};

/// The kernel (staged chunks of x and W) against burn's ops on 20b's and 120b's routers and
/// smaller shapes, timed against them.
pub(super) fn check_router_logits(device: &Device) -> anyhow::Result<()> {
    use gpt_oss_kernels::router_logits::router_logits;
    let mut worst = Worst::new("router logits kernel", 1e-5);
    // Tokens past a workgroup's 32 and H past a chunk's 32; 20b's and 120b's routers.
    for [tokens, hidden, experts] in [
        [1, 2880, 32],
        [33, 100, 8],
        [300, 64, 128],
        [4096, 2880, 128],
        [16384, 2880, 32],
    ] {
        let (x, w) = random_tokens_and_router(tokens, hidden, experts, device);
        let bias = Tensor::<1>::random([experts], Distribution::Normal(0.0, 0.1), device);
        let ours = || router_logits(x.clone(), w.clone(), bias.clone());
        let reference = || x.clone().matmul(w.clone()) + bias.clone().unsqueeze::<2>();
        let (seconds, burn_seconds) = (
            seconds_per_call(device, ours)?,
            seconds_per_call(device, reference)?,
        );
        worst.record(
            ours(),
            reference(),
            json!({"kernel": "router_logits", "tokens": tokens, "hidden": hidden,
                   "experts": experts, "seconds": seconds, "burn_seconds": burn_seconds}),
        );
    }
    worst.finish()
}
