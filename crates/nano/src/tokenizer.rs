//! Byte-level BPE trained on the curriculum with the tokenizers crate. Digits are split one per
//! token (as in most LLM tokenizers) so that numbers are spelled the same everywhere.

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, DecoderWrapper, Tokenizer, TokenizerBuilder};

use crate::{NanoError, Result};

/// gpt-oss-style special tokens; `<|endoftext|>` separates documents and pads (id 0).
pub const SPECIAL_TOKENS: [&str; 8] = [
    "<|endoftext|>",
    "<|startoftext|>",
    "<|return|>",
    "<|start|>",
    "<|message|>",
    "<|end|>",
    "<|channel|>",
    "<|call|>",
];

/// Trains a tokenizer of at most `vocab_size` entries on `texts`.
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let err = |e: tokenizers::Error| NanoError::Tokenizer(e.to_string());
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<NormalizerWrapper>)
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
        .with_post_processor(None::<PostProcessorWrapper>)
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
        .build()
        .map_err(err)?;
    tokenizer.train(&mut trainer, texts.iter()).map_err(err)?;
    Ok(Tokenizer::from(tokenizer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_come_first_and_digits_stay_single() {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("{i} + 12 = {} The capital of France is Paris.", i + 12))
            .collect();
        let t = train_tokenizer(&texts, 300).unwrap();
        assert_eq!(t.token_to_id("<|endoftext|>"), Some(0));
        assert_eq!(t.token_to_id("<|return|>"), Some(2));
        let enc = t.encode("123 + 4 =", false).unwrap();
        let pieces: Vec<String> = enc.get_tokens().to_vec();
        assert!(
            pieces.iter().any(|p| p == "1") && pieces.iter().any(|p| p == "2"),
            "{pieces:?}"
        );
        assert_eq!(t.decode(enc.get_ids(), false).unwrap(), "123 + 4 =");
    }
}
