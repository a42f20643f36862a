//! The quality table in the original project's form (configuration / experts per layer / total
//! experts / memory / quality per task), as markdown and as CSV.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Accuracy of one task: correct of items, with its 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAccuracy {
    pub correct: usize,
    pub items: usize,
    pub accuracy: f64,
    pub low: f64,
    pub high: f64,
}

/// One evaluated configuration: the full model or a selection of its experts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// "full model" or "{strategy} {k}".
    pub configuration: String,
    /// The strategy's name; "full" for the full model.
    pub strategy: String,
    pub experts_per_layer: usize,
    pub total_experts: usize,
    /// Tensor bytes of the checkpoint this configuration would write (spec 8.2).
    pub bytes: u64,
    pub tasks: BTreeMap<String, TaskAccuracy>,
    pub overall: TaskAccuracy,
    /// Fidelity to the full model on held-out text, when measured.
    pub mean_kl: Option<f64>,
    pub top1_agreement: Option<f64>,
    pub perplexity: Option<f64>,
    /// Mean hidden-state norm after each layer on held-out text.
    pub hidden_norms: Vec<f64>,
}

/// "4.07 MiB", "12.82 GiB": binary units, two decimals.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

fn optional(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// The markdown table: one row per configuration, one column per task (accuracy in %).
pub fn quality_table_markdown(rows: &[VariantResult], tasks: &[String]) -> String {
    let mut s = String::from("| configuration | experts/layer | total experts | memory |");
    for t in tasks {
        s.push_str(&format!(" {t} |"));
    }
    s.push_str(" all probes | KL to full (nats/token) | top-1 agreement |\n|");
    for _ in 0..tasks.len() + 7 {
        s.push_str(" --- |");
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} |",
            r.configuration,
            r.experts_per_layer,
            r.total_experts,
            human_bytes(r.bytes)
        ));
        for t in tasks {
            let cell = r
                .tasks
                .get(t)
                .map_or("n/a".into(), |a| format!("{:.1}%", 100.0 * a.accuracy));
            s.push_str(&format!(" {cell} |"));
        }
        let agreement = r
            .top1_agreement
            .map_or("n/a".into(), |a| format!("{:.1}%", 100.0 * a));
        s.push_str(&format!(
            " {:.1}% | {} | {agreement} |\n",
            100.0 * r.overall.accuracy,
            optional(r.mean_kl, 4),
        ));
    }
    s
}

/// The same table as CSV (accuracies as fractions, bytes exact).
pub fn quality_table_csv(rows: &[VariantResult], tasks: &[String]) -> String {
    let mut s = String::from("configuration,strategy,experts_per_layer,total_experts,bytes");
    for t in tasks {
        s.push_str(&format!(",{t}"));
    }
    s.push_str(",all,mean_kl,top1_agreement,perplexity\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{}",
            r.configuration, r.strategy, r.experts_per_layer, r.total_experts, r.bytes
        ));
        for t in tasks {
            s.push_str(&format!(
                ",{}",
                r.tasks
                    .get(t)
                    .map_or(String::new(), |a| format!("{:.6}", a.accuracy))
            ));
        }
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
        s.push_str(&format!(
            ",{:.6},{},{},{}\n",
            r.overall.accuracy,
            opt(r.mean_kl),
            opt(r.top1_agreement),
            opt(r.perplexity)
        ));
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn accuracy(correct: usize, items: usize) -> TaskAccuracy {
        TaskAccuracy {
            correct,
            items,
            accuracy: correct as f64 / items as f64,
            low: 0.0,
            high: 1.0,
        }
    }

    pub(crate) fn variant(strategy: &str, k: usize, add: usize, capital: usize) -> VariantResult {
        VariantResult {
            configuration: if strategy == "full" {
                "full model".into()
            } else {
                format!("{strategy} {k}")
            },
            strategy: strategy.into(),
            experts_per_layer: k,
            total_experts: 4 * k,
            bytes: 1_000_000 + 50_000 * k as u64,
            tasks: [
                ("add".to_string(), accuracy(add, 50)),
                ("capital".to_string(), accuracy(capital, 50)),
            ]
            .into(),
            overall: accuracy(add + capital, 100),
            mean_kl: (strategy != "full").then_some(0.25),
            top1_agreement: Some(if strategy == "full" { 1.0 } else { 0.8 }),
            perplexity: Some(3.0),
            hidden_norms: vec![1.0, 2.0, 3.0, 4.0],
        }
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512.00 B");
        assert_eq!(human_bytes(4_265_504), "4.07 MiB");
        assert_eq!(human_bytes(13_761_264_768), "12.82 GiB");
    }

    #[test]
    fn markdown_and_csv_tables_have_a_row_per_configuration() {
        let rows = vec![
            variant("full", 32, 49, 50),
            variant("frequency", 16, 20, 50),
        ];
        let tasks = vec!["add".to_string(), "capital".to_string()];
        let md = quality_table_markdown(&rows, &tasks);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[3],
            "| frequency 16 | 16 | 64 | 1.72 MiB | 40.0% | 100.0% | 70.0% | 0.2500 | 80.0% |"
        );
        assert!(lines[2].contains("| full model | 32 | 128 |") && lines[2].contains("| n/a |"));
        let csv = quality_table_csv(&rows, &tasks);
        assert_eq!(
            csv.lines().nth(2).unwrap(),
            "frequency 16,frequency,16,64,1800000,0.400000,1.000000,0.700000,0.250000,0.800000,3.000000"
        );
    }
}
