//! The experiment's trace stage: routing statistics of a dataset, cached by the model's files,
//! the data and the options, and by build unless `--keep-traces` keeps another build's.

use std::path::PathBuf;

use anyhow::Context;
use gpt_oss_model::dataset::read_datasets;
use gpt_oss_trace::{TraceOptions, trace};
use indicatif::{ProgressBar, ProgressStyle};

use super::cache::{Cache, StageKey};
use super::{LazyModel, StageRun};
use crate::commands::trace::{file_id, model_id};

/// The binary running the stages, and whether traces another build made are kept.
pub(super) struct Build {
    pub digest: String,
    pub keep_traces: bool,
}

/// What `trace_stage` does with a trace folder of its key.
#[derive(Debug, PartialEq, Eq)]
enum TraceFolder {
    /// Done: reuse it.
    Reuse,
    /// Start it, or resume it where an earlier run of this build stopped.
    Run,
    /// Another build's (with `--keep-traces` off): delete it, then start afresh.
    Restart,
}

/// What to do with a trace folder that is `done` (or not) and was started by the build
/// `made_by` (`None`: no folder yet), for the running `build`.
fn trace_folder(done: bool, made_by: Option<&str>, build: &Build) -> TraceFolder {
    let ours = made_by.is_none_or(|digest| digest == build.digest) || build.keep_traces;
    match (ours, done) {
        (false, _) => TraceFolder::Restart,
        (true, true) => TraceFolder::Reuse,
        (true, false) => TraceFolder::Run,
    }
}

/// Traces `data` into the cache unless done; returns the folder and the key the stages that
/// read it take (the folder's key and the build that made the trace). The folder's key holds
/// the model's files (`files_key`), not the build; the folder records the build that started it
/// ([`Cache::build_of`]), and another build's trace is traced again unless `build` keeps it.
pub(super) fn trace_stage(
    model: &mut LazyModel,
    cache: &Cache,
    (files_key, build): (&str, &Build),
    name: &str,
    data: &[PathBuf],
    options: TraceOptions,
    runs: &mut Vec<StageRun>,
) -> anyhow::Result<(PathBuf, StageKey)> {
    let ids = data
        .iter()
        .map(|p| file_id(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut parts = vec![
        "trace".to_string(),
        files_key.to_string(),
        serde_json::to_string(&options)?,
    ];
    parts.extend(ids.iter().cloned());
    let key = StageKey::of(&parts.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = cache.dir("trace", name, &key);
    let made_by = Cache::build_of(&dir);
    let folder = trace_folder(Cache::is_done(&dir), made_by.as_deref(), build);
    if folder == TraceFolder::Restart {
        tracing::info!(
            "trace {name}: made by another build, traced again (--keep-traces keeps it)"
        );
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let ran = folder != TraceFolder::Reuse;
    let another_build = made_by
        .as_deref()
        .is_some_and(|digest| digest != build.digest);
    if another_build && !ran {
        tracing::info!("trace {name}: kept from another build (--keep-traces)");
    }
    if ran {
        if made_by.is_none() || folder == TraceFolder::Restart {
            Cache::record_build(&dir, &build.digest)?;
        }
        let records = read_datasets(data)?;
        let model_id = model_id(&model.args.model)?;
        let loaded = model.get()?;
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(&format!("trace {name} {{human_pos}} tokens {{per_sec}}"))
                .expect("template"),
        );
        let summary = trace(
            &loaded.model,
            loaded.tokenizer()?,
            &records,
            &model_id,
            &ids,
            &dir,
            &options,
            &mut |n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
        anyhow::ensure!(summary.complete, "trace {name} did not complete");
        Cache::mark_done(&dir)?;
    }
    runs.push(StageRun {
        stage: format!("trace {name}"),
        key: key.short().into(),
        ran,
    });
    // The stages that read the trace depend on the build that made it too (a kept one, or
    // this one): a selection made from a kept trace is not reused once the trace is redone.
    let traced_by = Cache::build_of(&dir).unwrap_or_default();
    Ok((dir, StageKey::of(&[&key.0, &traced_by])))
}

#[cfg(test)]
mod tests {
    use super::{Build, TraceFolder, trace_folder};

    /// A trace is reused when done by this build, or by another with `--keep-traces`; resumed
    /// when this build started it; traced afresh when another build made it, done or not, and
    /// when the folder predates recorded builds (its build reads as "").
    #[test]
    fn another_builds_trace_is_traced_again_unless_kept() {
        let build = |keep_traces| Build {
            digest: "ours".into(),
            keep_traces,
        };
        let (strict, keeping) = (build(false), build(true));
        assert_eq!(trace_folder(false, None, &strict), TraceFolder::Run);
        assert_eq!(
            trace_folder(true, Some("ours"), &strict),
            TraceFolder::Reuse
        );
        assert_eq!(trace_folder(false, Some("ours"), &strict), TraceFolder::Run);
        for other in ["theirs", ""] {
            for done in [true, false] {
                assert_eq!(
                    trace_folder(done, Some(other), &strict),
                    TraceFolder::Restart
                );
            }
            assert_eq!(
                trace_folder(true, Some(other), &keeping),
                TraceFolder::Reuse
            );
        }
    }
}
