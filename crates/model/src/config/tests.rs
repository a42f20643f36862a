//! config.json parsing: the published configs, both rope layouts, and the errors.
use super::*;

fn parse(text: &str) -> Result<GptOssConfig> {
    GptOssConfig::from_json_str(text, Path::new("config.json"))
}

#[test]
fn published_20b_config_parses_with_release_values() {
    let c = parse(GPT_OSS_20B_CONFIG).unwrap();
    assert_eq!(c.num_hidden_layers, 24);
    assert_eq!(c.num_experts, 32);
    assert_eq!(c.experts_per_token, 4);
    assert_eq!(c.head_dim, 64);
    assert_eq!(c.sliding_window, 128);
    assert_eq!(c.layer_types[0], LayerType::Sliding);
    assert_eq!(c.layer_types[1], LayerType::Full);
    assert!(c.mxfp4_experts);
    assert_eq!(c.eos_token_ids, vec![200002]);
    assert_eq!(
        c.rope,
        RopeConfig {
            theta: 150000.0,
            scaling: RopeScaling::Yarn {
                factor: 32.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                original_max_position_embeddings: 4096,
                truncate: false,
                attention_factor: None
            }
        }
    );
    assert!(c.warnings().is_empty());
    let big = parse(GPT_OSS_120B_CONFIG).unwrap();
    assert_eq!((big.num_hidden_layers, big.num_experts), (36, 128));
}

fn edited(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(GPT_OSS_20B_CONFIG).unwrap();
    f(v.as_object_mut().unwrap());
    v.to_string()
}

#[test]
fn rope_parameters_layout_is_read_and_missing_truncate_means_true() {
    let text = edited(|o| {
        o.remove("rope_scaling");
        o.remove("rope_theta");
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "yarn", "rope_theta": 5000.0, "factor": 8.0,
                   "original_max_position_embeddings": 1024}),
        );
    });
    let c = parse(&text).unwrap();
    assert_eq!(c.rope.theta, 5000.0);
    let RopeScaling::Yarn {
        factor,
        truncate,
        beta_fast,
        ..
    } = c.rope.scaling
    else {
        panic!("expected yarn")
    };
    assert_eq!((factor, truncate, beta_fast), (8.0, true, 32.0));
    assert_eq!(c.warnings().len(), 1);
}

#[test]
fn missing_layer_types_alternate_sliding_then_full() {
    let c = parse(&edited(|o| {
        o.remove("layer_types");
    }))
    .unwrap();
    assert_eq!(c.layer_types.len(), 24);
    assert!(
        c.layer_types
            .iter()
            .step_by(2)
            .all(|t| *t == LayerType::Sliding)
    );
    assert!(
        c.layer_types
            .iter()
            .skip(1)
            .step_by(2)
            .all(|t| *t == LayerType::Full)
    );
}

#[test]
fn expert_count_aliases_are_accepted_and_must_agree() {
    let c = parse(&edited(|o| {
        o.remove("num_local_experts");
        o.insert("num_experts".into(), json!(16));
        o.remove("num_experts_per_tok");
    }))
    .unwrap();
    assert_eq!((c.num_experts, c.experts_per_token), (16, 4));
    let e = parse(&edited(|o| {
        o.insert("experts_per_token".into(), json!(2));
    }))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("num_experts_per_tok") && e.contains("disagree"),
        "{e}"
    );
}

#[test]
fn head_dim_is_read_not_derived() {
    let c = parse(GPT_OSS_20B_CONFIG).unwrap();
    assert_ne!(c.head_dim, c.hidden_size / c.num_attention_heads);
}

#[test]
fn unrunnable_configs_are_clear_errors() {
    let cases: Vec<(String, &str)> = vec![
        (
            edited(|o| {
                o.remove("hidden_size");
            }),
            "missing `hidden_size`",
        ),
        (
            edited(|o| {
                o.insert("num_experts_per_tok".into(), json!(64));
                o.insert("experts_per_token".into(), json!(64));
            }),
            "exceeds",
        ),
        (
            edited(|o| {
                o.insert("num_key_value_heads".into(), json!(7));
            }),
            "multiple",
        ),
        (
            edited(|o| {
                o.insert("layer_types".into(), json!(["sliding_attention"]));
            }),
            "layer_types has 1",
        ),
        (
            edited(|o| {
                o.insert("layer_types".into(), json!(vec!["local"; 24]));
            }),
            "layer_types[0]",
        ),
        (
            edited(|o| {
                o.insert("model_type".into(), json!("llama"));
            }),
            "expected `gpt_oss`",
        ),
        (
            edited(|o| {
                o.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": 2.0}),
                );
            }),
            "not supported",
        ),
        ("{not json".to_string(), "not valid JSON"),
    ];
    for (text, needle) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("config.json: invalid config"), "{e}");
        assert!(e.contains(needle), "`{e}` should mention `{needle}`");
    }
}

#[test]
fn hub_layout_round_trips() {
    let c = parse(GPT_OSS_20B_CONFIG).unwrap();
    let back = parse(&c.to_hf_json().to_string()).unwrap();
    assert_eq!(back.rope, c.rope);
    assert_eq!(back.layer_types, c.layer_types);
    assert_eq!(back.num_experts, c.num_experts);
    let pruned = c.with_num_experts(16).unwrap();
    assert_eq!(pruned.num_experts, 16);
    assert_eq!(pruned.raw["num_local_experts"], json!(16));
}
