//! Harmony chat rendering (spec 7.2): `<|start|>{role}<|message|>{content}<|end|>` messages,
//! ending with `<|start|>assistant` for the model to continue. The default system message is
//! harmony's own (no date), so renders are the same every day.

/// Harmony's default system message without a date (byte-identical to harmony's
/// `test_simple_convo` fixture).
pub const DEFAULT_SYSTEM: &str = "You are ChatGPT, a large language model trained by OpenAI.\n\
Knowledge cutoff: 2024-06\n\nReasoning: medium\n\n\
# Valid channels: analysis, commentary, final. Channel must be included for every message.";

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Renders `messages`, adding the default system message first when none is given, and opens the
/// assistant's turn.
pub fn render_conversation(messages: &[Message], default_system: bool) -> String {
    let mut out = String::new();
    if default_system && messages.first().is_none_or(|m| m.role != "system") {
        push_message(&mut out, "system", DEFAULT_SYSTEM);
    }
    for m in messages {
        push_message(&mut out, &m.role, &m.content);
    }
    out.push_str("<|start|>assistant");
    out
}

/// One user turn with the default system message: the recommended prompt form.
pub fn render_user_turn(user: &str) -> String {
    render_conversation(
        &[Message {
            role: "user".into(),
            content: user.into(),
        }],
        true,
    )
}

fn push_message(out: &mut String, role: &str, content: &str) {
    out.push_str("<|start|>");
    out.push_str(role);
    out.push_str("<|message|>");
    out.push_str(content);
    out.push_str("<|end|>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::TextTokenizer;

    #[test]
    fn user_turn_reproduces_spec_token_ids() {
        let t = TextTokenizer::o200k_harmony().unwrap();
        let ids = t.encode(&render_user_turn("What is 2 + 2?")).unwrap();
        let expected: Vec<u32> = vec![
            200006, 17360, 200008, 3575, 553, 17554, 162016, 11, 261, 4410, 6439, 2359, 22203, 656,
            7788, 17527, 558, 87447, 100594, 25, 220, 1323, 19, 12, 3218, 279, 30377, 289, 25,
            14093, 279, 2, 13888, 18403, 25, 8450, 11, 49159, 11, 1721, 13, 21030, 2804, 413, 7360,
            395, 1753, 3176, 13, 200007, 200006, 1428, 200008, 4827, 382, 220, 17, 659, 220, 17,
            30, 200007, 200006, 173781,
        ];
        assert_eq!(ids, expected);
    }

    #[test]
    fn minimal_turn_without_system_reproduces_spec_ids() {
        let t = TextTokenizer::o200k_harmony().unwrap();
        let text = render_conversation(
            &[Message {
                role: "user".into(),
                content: "What is 2 + 2?".into(),
            }],
            false,
        );
        assert_eq!(
            t.encode(&text).unwrap(),
            vec![
                200006, 1428, 200008, 4827, 382, 220, 17, 659, 220, 17, 30, 200007, 200006, 173781
            ]
        );
    }
}
