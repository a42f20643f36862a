//! Dataset files: JSONL, one object a line (DESIGN "File formats").
//!
//! - text for calibration or perplexity: `{"id", "task", "text"}`;
//! - chat: `{"id", "task", "messages": [{"role", "content"}]}` (rendered in harmony);
//! - probe: `{"id", "task", "prompt", "answer"}`, optionally `"chat": true`.
//!
//! A malformed line is an error naming the file, the line and what is wrong.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::harmony::{Message, render_conversation};
use crate::tokenizer::TextTokenizer;

/// One line of a dataset file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    #[serde(default)]
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chat: bool,
}

/// A record as model input: its tokens and where the answer span starts (tokens from
/// `answer_start` on are "after the prompt"; 0 for plain text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub id: String,
    pub task: String,
    pub tokens: Vec<u32>,
    pub answer_start: usize,
}

impl Record {
    fn check(&self) -> std::result::Result<(), String> {
        if self.id.is_empty() {
            return Err("`id` is empty".into());
        }
        let kinds = [
            self.text.is_some(),
            self.messages.is_some(),
            self.prompt.is_some(),
        ];
        match kinds.iter().filter(|&&k| k).count() {
            1 => {}
            0 => return Err("needs one of `text`, `messages` or `prompt` + `answer`".into()),
            _ => return Err("has more than one of `text`, `messages` and `prompt`".into()),
        }
        if self.prompt.is_some() != self.answer.is_some() {
            return Err("`prompt` and `answer` go together".into());
        }
        if let Some(m) = &self.messages
            && m.is_empty()
        {
            return Err("`messages` is empty".into());
        }
        Ok(())
    }

    /// The model input and the answer span, as the workbench renders it: probes as
    /// `{prompt} {answer}` (or a harmony user turn then the answer with `chat`), messages in
    /// harmony with the last assistant message as the answer span.
    pub fn tokenize(&self, tokenizer: &TextTokenizer) -> Result<Tokenized> {
        let (prefix, answer) = match (&self.text, &self.messages, &self.prompt) {
            (Some(text), _, _) => (String::new(), text.clone()),
            (_, Some(messages), _) => match messages.split_last() {
                Some((last, earlier)) if last.role == "assistant" => (
                    format!(
                        "{}<|channel|>final<|message|>",
                        render_conversation(earlier, true)
                    ),
                    format!("{}<|return|>", last.content),
                ),
                _ => (render_conversation(messages, true), String::new()),
            },
            (_, _, Some(prompt)) => {
                let answer = self.answer.clone().unwrap_or_default();
                if self.chat {
                    let user = render_conversation(
                        &[Message {
                            role: "user".into(),
                            content: prompt.clone(),
                        }],
                        true,
                    );
                    (format!("{user}<|channel|>final<|message|>"), answer)
                } else {
                    (prompt.clone(), format!(" {answer}"))
                }
            }
            _ => unreachable!("checked when read"),
        };
        let mut tokens = tokenizer.encode(&prefix)?;
        let answer_start = tokens.len();
        tokens.extend(tokenizer.encode(&answer)?);
        Ok(Tokenized {
            id: self.id.clone(),
            task: self.task.clone(),
            tokens,
            answer_start,
        })
    }
}

/// Reads a JSONL dataset; blank lines are skipped.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let bad = |line: usize, message: String| ModelError::Dataset {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
        record.check().map_err(|m| bad(i + 1, m))?;
        out.push(record);
    }
    Ok(out)
}

/// Reads several files (comma-separated paths allowed), keeping their order.
pub fn read_datasets(paths: &[PathBuf]) -> Result<Vec<Record>> {
    let mut out = vec![];
    for p in paths {
        out.extend(read_records(p)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, lines).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_the_three_kinds() {
        let (_d, p) = write(concat!(
            r#"{"id": "a", "task": "t", "text": "hello"}"#,
            "\n\n",
            r#"{"id": "b", "task": "t", "messages": [{"role": "user", "content": "hi"}]}"#,
            "\n",
            r#"{"id": "c", "task": "math", "prompt": "2 + 2 =", "answer": "4", "chat": true}"#,
            "\n",
        ));
        let r = read_records(&p).unwrap();
        assert_eq!(r.len(), 3);
        assert!(r[2].chat);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        for (content, needle) in [
            ("{\"id\": \"a\", \"text\": \"x\"}\n{oops\n", "line 2"),
            ("{\"id\": \"a\"}\n", "needs one of"),
            ("{\"id\": \"a\", \"prompt\": \"x\"}\n", "go together"),
            (
                "{\"id\": \"a\", \"text\": \"x\", \"prompt\": \"y\", \"answer\": \"z\"}\n",
                "more than one",
            ),
            ("{\"task\": \"x\", \"text\": \"x\"}\n", "missing field `id`"),
        ] {
            let (_d, p) = write(content);
            let e = read_records(&p).unwrap_err().to_string();
            assert!(e.contains("data.jsonl") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn probe_answer_span_starts_after_the_prompt() {
        let tok = TextTokenizer::o200k_harmony().unwrap();
        let r = Record {
            id: "x".into(),
            task: "t".into(),
            text: None,
            messages: None,
            prompt: Some("2 + 2 =".into()),
            answer: Some("4".into()),
            chat: false,
        };
        let t = r.tokenize(&tok).unwrap();
        assert_eq!(
            t.tokens[..t.answer_start],
            tok.encode("2 + 2 =").unwrap()[..]
        );
        assert_eq!(tok.decode(&t.tokens[t.answer_start..]).unwrap(), " 4");
    }
}
