//! The normalisation rule of greedy exact match, shared by every probe suite.
//!
//! The continuation's first line is cut at the first harmony end marker (`<|return|>`,
//! `<|end|>`, `<|call|>`); its first words, as many as the answer has, must equal the answer's
//! words, each compared as is or with trailing `.`, `,`, `;` and `:` removed. Case and inner
//! spacing count: "paris" is not "Paris", "45" is not "4".

const END_MARKERS: [&str; 3] = ["<|return|>", "<|end|>", "<|call|>"];

/// The part of a decoded continuation that is compared: its first line, before any end marker,
/// trimmed.
pub fn answer_text(continuation: &str) -> &str {
    let mut text = continuation.lines().next().unwrap_or("");
    for marker in END_MARKERS {
        if let Some(i) = text.find(marker) {
            text = &text[..i];
        }
    }
    text.trim()
}

/// Whether `continuation` starts with `answer` word for word (the rule above).
pub fn answer_matches(continuation: &str, answer: &str) -> bool {
    // A continuation that starts with a newline has an empty first line: no answer given.
    let first_line = continuation.lines().next().unwrap_or("");
    let mut text = first_line;
    for marker in END_MARKERS {
        if let Some(i) = text.find(marker) {
            text = &text[..i];
        }
    }
    let want: Vec<&str> = answer.split_whitespace().collect();
    let got: Vec<&str> = text.split_whitespace().take(want.len()).collect();
    if want.is_empty() || got.len() != want.len() {
        return false;
    }
    let strip = |w: &str| w.trim_end_matches(['.', ',', ';', ':']).to_string();
    got.iter()
        .zip(&want)
        .all(|(g, w)| *g == *w || strip(g) == *w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_words_must_equal_the_answer() {
        assert!(answer_matches(" 4\n5 + 1 = 6", "4"));
        assert!(answer_matches(" Paris.\nThe capital", "Paris"));
        assert!(answer_matches(" New Delhi.", "New Delhi"));
        assert!(answer_matches(" barks in the garden.", "barks"));
        assert!(answer_matches(" -4", "-4"));
        assert!(answer_matches("4<|return|>", "4"));
        assert!(answer_matches("Paris<|end|>", "Paris"));
        assert!(!answer_matches(" 45", "4"));
        assert!(!answer_matches(" ** b", "*"));
        assert!(!answer_matches(" New York", "New Delhi"));
        assert!(!answer_matches("\n4", "4"));
        assert!(!answer_matches(" paris", "Paris"));
        assert!(answer_matches(" 4..", "4"));
        assert!(!answer_matches(" anything", ""));
    }

    #[test]
    fn answer_text_is_the_first_line_before_an_end_marker() {
        assert_eq!(answer_text(" 4\nmore"), "4");
        assert_eq!(answer_text("Paris<|return|>"), "Paris");
        assert_eq!(answer_text(""), "");
    }
}
