//! Text <-> token ids. A checkpoint's `tokenizer.json` is read with Hugging Face's tokenizers
//! crate; a gpt-oss checkpoint without one (vocab 201,088) gets o200k_harmony from tiktoken-rs,
//! which bundles the vocabulary, so nothing is downloaded.

use std::path::{Path, PathBuf};

use crate::config::GptOssConfig;
use crate::error::{ModelError, Result};

/// Vocabulary size of o200k_harmony (spec 7.1).
pub const O200K_HARMONY_VOCAB: usize = 201_088;

pub enum TextTokenizer {
    HuggingFace {
        path: PathBuf,
        inner: Box<tokenizers::Tokenizer>,
    },
    O200kHarmony(Box<tiktoken_rs::CoreBPE>),
}

impl TextTokenizer {
    /// The tokenizer of the model in `dir`.
    pub fn for_model(dir: &Path, config: &GptOssConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if path.exists() {
            return Self::from_file(&path);
        }
        if config.vocab_size == O200K_HARMONY_VOCAB {
            return Self::o200k_harmony();
        }
        Err(ModelError::Tokenizer {
            path,
            message: format!(
                "missing, and vocab_size {} is not o200k_harmony's {O200K_HARMONY_VOCAB}",
                config.vocab_size
            ),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self::HuggingFace {
            path: path.to_path_buf(),
            inner: Box::new(inner),
        })
    }

    pub fn o200k_harmony() -> Result<Self> {
        let bpe = tiktoken_rs::o200k_harmony().map_err(|e| ModelError::Tokenizer {
            path: "o200k_harmony".into(),
            message: e.to_string(),
        })?;
        Ok(Self::O200kHarmony(Box::new(bpe)))
    }

    fn describe(&self) -> PathBuf {
        match self {
            Self::HuggingFace { path, .. } => path.clone(),
            Self::O200kHarmony(_) => "o200k_harmony".into(),
        }
    }

    /// Token ids of `text`; special tokens written in the text (`<|start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::HuggingFace { inner, path } => inner
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| ModelError::Tokenizer {
                    path: path.clone(),
                    message: e.to_string(),
                }),
            Self::O200kHarmony(bpe) => Ok(bpe.encode_with_special_tokens(text)),
        }
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let res = match self {
            Self::HuggingFace { inner, .. } => inner.decode(ids, false).map_err(|e| e.to_string()),
            // A continuation can stop inside a multi-byte character (or a random model emit
            // stray byte tokens): invalid UTF-8 becomes U+FFFD, as the tokenizers crate does.
            Self::O200kHarmony(bpe) => bpe
                .decode_bytes(ids)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .map_err(|e| e.to_string()),
        };
        res.map_err(|message| ModelError::Tokenizer {
            path: self.describe(),
            message,
        })
    }

    /// The id of a single token written as text (`<|return|>`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::HuggingFace { inner, .. } => inner.token_to_id(token),
            Self::O200kHarmony(bpe) => {
                let ids = bpe.encode_with_special_tokens(token);
                (ids.len() == 1).then(|| ids[0])
            }
        }
    }

    /// Tokens that end generation: config.json's eos ids plus harmony's `<|return|>` and
    /// `<|call|>` and `<|endoftext|>` where the vocabulary has them (spec 7.2).
    pub fn stop_tokens(&self, config: &GptOssConfig) -> Vec<u32> {
        let mut stops = config.eos_token_ids.clone();
        for t in ["<|return|>", "<|call|>", "<|endoftext|>"] {
            if let Some(id) = self.token_id(t)
                && !stops.contains(&id)
            {
                stops.push(id);
            }
        }
        stops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o200k_decodes_a_split_multibyte_character_lossily() {
        let tok = TextTokenizer::o200k_harmony().unwrap();
        let ids = tok.encode("naïve café 🙂🙃").unwrap();
        // Find a prefix of the ids that ends inside a character.
        let split = (1..ids.len())
            .find(|&n| {
                let TextTokenizer::O200kHarmony(bpe) = &tok else {
                    unreachable!()
                };
                std::str::from_utf8(&bpe.decode_bytes(&ids[..n]).unwrap()).is_err()
            })
            .expect("the emoji pair splits into byte tokens");
        let text = tok.decode(&ids[..split]).unwrap();
        assert!(text.ends_with('\u{FFFD}'), "{text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), "naïve café 🙂🙃");
    }

    #[test]
    fn o200k_harmony_matches_spec_plain_completion_ids() {
        let t = TextTokenizer::o200k_harmony().unwrap();
        assert_eq!(
            t.encode("The capital of France is").unwrap(),
            vec![976, 9029, 328, 10128, 382]
        );
        assert_eq!(t.encode("Hello world").unwrap(), vec![13225, 2375]);
        assert_eq!(t.token_id("<|return|>"), Some(200002));
        assert_eq!(t.token_id("<|call|>"), Some(200012));
        assert_eq!(t.decode(&[13225, 2375]).unwrap(), "Hello world");
    }
}
