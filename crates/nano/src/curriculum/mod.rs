//! The seeded synthetic corpus oss-nano learns from: distinct skills, every sample tagged with its
//! task, split so that no probe item ever appears in a calibration set.
//!
//! Training sees every item (the facts are the model's knowledge). Calibration sets (what expert
//! selection looks at) draw only from items that are not probes. The "diverse" calibration mix
//! keeps arithmetic at about 2% of tokens: the setting in which the original project's frequency
//! pruning lost arithmetic.

pub mod countries;
pub mod tasks;

use std::collections::{BTreeMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use tasks::{Item, Task};

/// A text sample: `{"id", "task", "text"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub task: String,
    pub text: String,
}

/// A probe: `{"id", "task", "prompt", "answer"}`; the model should continue `prompt` with
/// `answer` (after a space).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub id: String,
    pub task: String,
    pub prompt: String,
    pub answer: String,
}

/// The split of every task's items into probes and the rest.
pub struct Curriculum {
    pub seed: u64,
    probes: BTreeMap<Task, Vec<Item>>,
    probe_prompts: HashSet<String>,
}

impl Curriculum {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut probes = BTreeMap::new();
        let mut probe_prompts = HashSet::new();
        for task in Task::ALL {
            let mut items = vec![];
            let mut tries = 0;
            while items.len() < task.probe_count() {
                let item = task.sample_item(&mut rng);
                tries += 1;
                assert!(
                    tries < 100_000,
                    "{}: cannot draw enough distinct probes",
                    task.name()
                );
                if probe_prompts.insert(item.prompt.clone()) {
                    items.push(item);
                }
            }
            probes.insert(task, items);
        }
        Self {
            seed,
            probes,
            probe_prompts,
        }
    }

    pub fn is_probe(&self, item: &Item) -> bool {
        self.probe_prompts.contains(&item.prompt)
    }

    /// Every probe, tasks in order.
    pub fn probes(&self) -> Vec<Probe> {
        self.probes
            .iter()
            .flat_map(|(task, items)| {
                items.iter().enumerate().map(|(i, item)| Probe {
                    id: format!("{}-{i:03}", task.name()),
                    task: task.name().into(),
                    prompt: item.prompt.clone(),
                    answer: item.answer.clone(),
                })
            })
            .collect()
    }

    fn document(&self, task: Task, items: usize, allow_probes: bool, rng: &mut StdRng) -> String {
        let mut lines = Vec::with_capacity(items);
        while lines.len() < items {
            let item = task.sample_item(rng);
            if allow_probes || !self.is_probe(&item) {
                lines.push(item.text());
            }
        }
        lines.join("\n")
    }

    /// `n` training documents, tasks drawn uniformly, all items allowed.
    pub fn training_documents(&self, n: usize) -> Vec<Sample> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(1));
        (0..n)
            .map(|i| {
                let task = Task::ALL[rng.random_range(0..Task::ALL.len())];
                Sample {
                    id: format!("train-{i:06}"),
                    task: task.name().into(),
                    text: self.document(task, task.items_per_document(), true, &mut rng),
                }
            })
            .collect()
    }

    /// `n` calibration documents of one task, probe items excluded.
    pub fn calibration_documents(&self, task: Task, n: usize) -> Vec<Sample> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(100 + task as u64));
        (0..n)
            .map(|i| Sample {
                id: format!("{}-{i:04}", task.name()),
                task: task.name().into(),
                text: self.document(task, task.items_per_document(), false, &mut rng),
            })
            .collect()
    }

    /// `n` held-out documents of one task (perplexity and fidelity to the full model): drawn
    /// from their own random stream, probe items excluded.
    pub fn heldout_documents(&self, task: Task, n: usize) -> Vec<Sample> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(300 + task as u64));
        (0..n)
            .map(|i| Sample {
                id: format!("{}-heldout-{i:03}", task.name()),
                task: task.name().into(),
                text: self.document(task, task.items_per_document(), false, &mut rng),
            })
            .collect()
    }

    /// `n` probe-form items (prompt and answer) of one task drawn from the calibration side of
    /// the split: for strategies that look at answer tokens, never overlapping the probes.
    pub fn calibration_probes(&self, task: Task, n: usize) -> Vec<Probe> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(200 + task as u64));
        let mut seen = HashSet::new();
        let mut out = vec![];
        let mut tries = 0;
        while out.len() < n && tries < 100 * n {
            tries += 1;
            let item = task.sample_item(&mut rng);
            if self.is_probe(&item) || !seen.insert(item.prompt.clone()) {
                continue;
            }
            out.push(Probe {
                id: format!("{}-calibration-{:03}", task.name(), out.len()),
                task: task.name().into(),
                prompt: item.prompt,
                answer: item.answer,
            });
        }
        out
    }

    /// A mix of all tasks with arithmetic at `arithmetic_share` of the tokens (by `count`), of
    /// about `total_tokens` tokens, probe items excluded.
    pub fn diverse_calibration(
        &self,
        total_tokens: usize,
        arithmetic_share: f64,
        count: &dyn Fn(&str) -> usize,
    ) -> Vec<Sample> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(7));
        let others: Vec<Task> = Task::ALL
            .into_iter()
            .filter(|t| !t.is_arithmetic())
            .collect();
        let arithmetic: Vec<Task> = Task::ALL
            .into_iter()
            .filter(|t| t.is_arithmetic())
            .collect();
        let arithmetic_budget = (total_tokens as f64 * arithmetic_share) as usize;
        let (mut samples, mut math_tokens, mut other_tokens) = (vec![], 0, 0);
        while math_tokens + other_tokens < total_tokens {
            let math_due = (math_tokens as f64)
                < arithmetic_share * (math_tokens + other_tokens) as f64
                && math_tokens < arithmetic_budget;
            let task = if math_due {
                arithmetic[rng.random_range(0..arithmetic.len())]
            } else {
                others[rng.random_range(0..others.len())]
            };
            // Arithmetic comes as short documents so that the share can stay small.
            let items = if task.is_arithmetic() {
                2
            } else {
                task.items_per_document()
            };
            let text = self.document(task, items, false, &mut rng);
            let n = count(&text);
            if task.is_arithmetic() {
                math_tokens += n;
            } else {
                other_tokens += n;
            }
            samples.push(Sample {
                id: format!("diverse-{:04}", samples.len()),
                task: task.name().into(),
                text,
            });
        }
        samples
    }
}

/// Writes one JSON object per line.
pub fn write_jsonl<T: Serialize>(path: &std::path::Path, rows: &[T]) -> crate::Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r).expect("rows serialise"));
        text.push('\n');
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| crate::NanoError::File {
            path: parent.into(),
            message: e.to_string(),
        })?;
    }
    std::fs::write(path, text).map_err(|e| crate::NanoError::File {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Reads one JSON object per line; a bad line is an error naming the file and line number.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> crate::Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::NanoError::File {
        path: path.into(),
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| crate::NanoError::File {
                path: path.into(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn no_probe_item_appears_in_any_calibration_set() {
        let c = Curriculum::new(3);
        let probe_lines: HashSet<String> = c
            .probes()
            .iter()
            .map(|p| format!("{} {}", p.prompt, p.answer))
            .collect();
        let mut sets: Vec<Vec<Sample>> = Task::ALL
            .iter()
            .map(|&t| c.calibration_documents(t, 40))
            .collect();
        sets.push(c.diverse_calibration(5000, 0.02, &words));
        for task in Task::ALL {
            let as_text = c
                .calibration_probes(task, 30)
                .into_iter()
                .map(|p| Sample {
                    id: p.id,
                    task: p.task,
                    text: format!("{} {}", p.prompt, p.answer),
                })
                .collect();
            sets.push(as_text);
        }
        for set in sets {
            for s in set {
                for line in s.text.lines() {
                    assert!(
                        !probe_lines.iter().any(|p| line.starts_with(p.as_str())),
                        "probe leaked into calibration: {line}"
                    );
                }
            }
        }
    }

    #[test]
    fn diverse_mix_keeps_arithmetic_rare() {
        let c = Curriculum::new(3);
        let set = c.diverse_calibration(20_000, 0.02, &words);
        let math: usize = set
            .iter()
            .filter(|s| Task::from_name(&s.task).unwrap().is_arithmetic())
            .map(|s| words(&s.text))
            .sum();
        let all: usize = set.iter().map(|s| words(&s.text)).sum();
        let share = math as f64 / all as f64;
        assert!(share > 0.01 && share < 0.03, "arithmetic share {share}");
    }

    #[test]
    fn same_seed_same_corpus_and_probes_cover_each_task() {
        let (a, b) = (Curriculum::new(5), Curriculum::new(5));
        assert_eq!(a.probes(), b.probes());
        assert_eq!(a.training_documents(20), b.training_documents(20));
        assert_ne!(Curriculum::new(6).probes(), a.probes());
        for task in Task::ALL {
            let n = a.probes().iter().filter(|p| p.task == task.name()).count();
            assert_eq!(n, task.probe_count());
        }
    }
}
