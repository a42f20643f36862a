//! The findings of a report: does the baseline strategy hurt the focus tasks, and which strategy
//! preserves them best, budget by budget and over all budgets, with numbers.

use std::fmt::Write;

use crate::document::ExperimentReport;
use crate::table::VariantResult;

/// (correct, items) of `tasks` together.
fn focus_score(v: &VariantResult, tasks: &[String]) -> (usize, usize) {
    tasks
        .iter()
        .filter_map(|t| v.tasks.get(t))
        .fold((0, 0), |(c, n), a| (c + a.correct, n + a.items))
}

fn pct((c, n): (usize, usize)) -> f64 {
    100.0 * c as f64 / n.max(1) as f64
}

impl ExperimentReport {
    /// The findings paragraph: the baseline against the full model and the best strategy on the
    /// focus tasks, budget by budget, then overall.
    pub fn findings(&self) -> String {
        let mut s = String::new();
        let focus = self.focus_tasks.join(", ");
        let full = focus_score(&self.full, &self.focus_tasks);
        if full.1 == 0 {
            return format!("No probe of the focus tasks ({focus}) was evaluated.\n");
        }
        let _ = writeln!(
            s,
            "Focus tasks ({}): {focus}, {} probes. The full model answers {:.1}% of them.\n",
            self.focus_label,
            full.1,
            pct(full)
        );
        let _ = writeln!(
            s,
            "| experts/layer | {} | best strategy | its score |\n| --- | --- | --- | --- |",
            self.baseline_strategy
        );
        let strategies = self.strategies();
        let mut totals: Vec<(String, usize, usize)> =
            strategies.iter().map(|n| (n.clone(), 0, 0)).collect();
        let mut baseline_drops = vec![];
        for k in self.budgets() {
            let scores: Vec<(&String, (usize, usize))> = strategies
                .iter()
                .filter_map(|n| {
                    self.variant(n, k)
                        .map(|v| (n, focus_score(v, &self.focus_tasks)))
                })
                .collect();
            for (name, (c, n)) in &scores {
                let t = totals.iter_mut().find(|t| &t.0 == *name).expect("listed");
                t.1 += c;
                t.2 += n;
            }
            // Best: highest score; ties go to the strategy listed first.
            let best =
                scores
                    .iter()
                    .fold(None::<&(&String, (usize, usize))>, |best, x| match best {
                        Some(b) if pct(b.1) >= pct(x.1) => Some(b),
                        _ => Some(x),
                    });
            let baseline = scores
                .iter()
                .find(|(n, _)| **n == self.baseline_strategy)
                .map(|(_, s)| *s);
            if let Some(b) = baseline {
                baseline_drops.push((k, pct(full) - pct(b)));
            }
            let _ = writeln!(
                s,
                "| {k} | {} | {} | {} |",
                baseline.map_or("n/a".into(), |b| format!("{:.1}%", pct(b))),
                best.map_or("n/a".into(), |b| b.0.to_string()),
                best.map_or("n/a".into(), |b| format!("{:.1}%", pct(b.1))),
            );
        }
        let _ = writeln!(s);
        if let Some((k, drop)) =
            baseline_drops
                .iter()
                .copied()
                .fold(None::<(usize, f64)>, |m, x| match m {
                    Some(m) if m.1 >= x.1 => Some(m),
                    _ => Some(x),
                })
        {
            if drop >= 5.0 {
                let _ = writeln!(
                    s,
                    "**{} pruning hurts {}**: at {k} experts per layer it answers {:.1} \
                     points fewer of them than the full model.",
                    self.baseline_strategy, self.focus_label, drop
                );
            } else {
                let _ = writeln!(
                    s,
                    "{} pruning costs {} at most {drop:.1} points at any budget measured.",
                    self.baseline_strategy, self.focus_label
                );
            }
        }
        if let Some((name, c, n)) =
            totals
                .iter()
                .filter(|t| t.2 > 0)
                .fold(None::<&(String, usize, usize)>, |best, t| match best {
                    Some(b) if pct((b.1, b.2)) >= pct((t.1, t.2)) => Some(b),
                    _ => Some(t),
                })
        {
            let _ = writeln!(
                s,
                "Across all budgets, **{name} preserves {} best**: {:.1}% of focus probes answered \
                 over every budget together{}.",
                self.focus_label,
                pct((*c, *n)),
                totals
                    .iter()
                    .find(|t| t.0 == self.baseline_strategy)
                    .map_or(String::new(), |b| format!(
                        " ({} {:.1}%)",
                        self.baseline_strategy,
                        pct((b.1, b.2))
                    ))
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use crate::document::tests::report;

    #[test]
    fn findings_name_the_damage_and_the_best_strategy() {
        let f = report().findings();
        assert!(f.contains("The full model answers 98.0% of them"), "{f}");
        assert!(
            f.contains("| 16 | 40.0% | math-probe-aware | 94.0% |"),
            "{f}"
        );
        assert!(
            f.contains("| 8 | 10.0% | math-probe-aware | 80.0% |"),
            "{f}"
        );
        assert!(f.contains("**frequency pruning hurts arithmetic**: at 8 experts per layer it answers 88.0 points fewer"), "{f}");
        assert!(
            f.contains("**math-probe-aware preserves arithmetic best**: 87.0%"),
            "{f}"
        );
    }
}
