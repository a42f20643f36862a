//! `train-nano`: builds oss-nano from its seed: curriculum, tokenizer, training, MXFP4 export,
//! probe scores, expert-usage table, loss curve and model card.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use gpt_oss_model::checkpoint::ExpertFormat;
use gpt_oss_model::device::{DeviceChoice, select_device};
use gpt_oss_model::tokenizer::TextTokenizer;
use gpt_oss_model::transformer::export::ExportOptions;
use gpt_oss_model::{GptOss, LoadOptions, load_model};
use gpt_oss_nano::card::{CardInputs, TrainingLog, model_card};
use gpt_oss_nano::curriculum::{Curriculum, Sample, Task, write_jsonl};
use gpt_oss_nano::probes::{accuracy_by_task, run_probes};
use gpt_oss_nano::shape::nano_config;
use gpt_oss_nano::tokenizer::train_tokenizer;
use gpt_oss_nano::train::{StepReport, TrainConfig, train};
use gpt_oss_nano::usage::usage_by_task;

use crate::host::host_description;
use gpt_oss_report::{Series, line_chart};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the shipped model goes.
    #[arg(long, default_value = "models/oss-nano")]
    pub out: PathBuf,
    /// Where the curriculum's calibration sets and held-out text go.
    #[arg(long, default_value = "datasets/nano")]
    pub datasets: PathBuf,
    /// Where its probe suite goes.
    #[arg(long, default_value = "datasets/probes/oss-nano.jsonl")]
    pub probes: PathBuf,
    /// Scratch folder for the tokenizer and periodic checkpoints.
    #[arg(long, default_value = "target/nano-work")]
    pub work: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 2500)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Training documents generated (the corpus the tokenizer is trained on).
    #[arg(long, default_value_t = 40_000)]
    pub train_docs: usize,
    #[arg(long, default_value_t = 768)]
    pub vocab: usize,
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Replace an existing model folder.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let curriculum = Curriculum::new(args.seed);
    let train_docs = curriculum.training_documents(args.train_docs);
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("creating {}", args.work.display()))?;
    let texts: Vec<String> = train_docs.iter().map(|d| d.text.clone()).collect();
    let tokenizer_path = args.work.join("tokenizer.json");
    train_tokenizer(&texts, args.vocab)?
        .save(&tokenizer_path, false)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer_path.display()))?;
    let tokenizer = TextTokenizer::from_file(&tokenizer_path)?;
    let eos = tokenizer
        .token_id("<|endoftext|>")
        .context("tokenizer lacks <|endoftext|>")?;
    let mut stream = Vec::new();
    for t in &texts {
        stream.extend(tokenizer.encode(t)?);
        stream.push(eos);
    }
    tracing::info!(
        "curriculum: {} documents, {} tokens",
        texts.len(),
        stream.len()
    );

    write_datasets(&curriculum, &tokenizer, &args.datasets, &args.probes)?;

    let config = nano_config(tokenizer_vocab_size(&tokenizer_path)?);
    let selected = select_device(args.device)?;
    let (device, description) = (selected.device, selected.description);
    tracing::info!("training on {description}");
    let model = GptOss::init_random(&config, &device.clone().autodiff(), args.seed);
    let train_config = TrainConfig {
        seed: args.seed,
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        learning_rate: args.lr,
        ..TrainConfig::default()
    };
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("template"),
    );
    let mut reports: Vec<StepReport> = Vec::with_capacity(args.steps);
    let train_start = Instant::now();
    let checkpoint_options = ExportOptions {
        experts: ExpertFormat::Dense,
        float_dtype: safetensors::Dtype::F32,
        max_shard_bytes: u64::MAX,
        force: true,
    };
    let trained = train(model, &stream, &train_config, |r, m| {
        bar.set_position(r.step as u64);
        bar.set_message(format!(
            "loss {:.3} (lm {:.3}, balance {:.3}) {:.0} tok/s",
            r.loss,
            r.lm_loss,
            r.balance_loss,
            r.tokens as f64 / r.seconds
        ));
        // The bar is invisible in logs; a line every 5% of the run (and the first steps) is not.
        if r.step <= 3 || r.step % args.steps.div_ceil(20).max(1) == 0 {
            tracing::info!(
                "step {}/{} loss {:.4} lr {:.2e} ({:.0} tok/s)",
                r.step,
                args.steps,
                r.loss,
                r.learning_rate,
                r.tokens as f64 / r.seconds
            );
        }
        if args.checkpoint_every > 0 && r.step % args.checkpoint_every == 0 {
            let dir = args.work.join(format!("checkpoint-{:06}", r.step));
            if let Err(e) = m
                .valid()
                .save_checkpoint(&dir, &checkpoint_options, &[&tokenizer_path])
            {
                tracing::warn!("checkpoint {}: {e}", dir.display());
            }
        }
        reports.push(r.clone());
    });
    bar.finish();
    let wall_seconds = train_start.elapsed().as_secs_f64();
    let trained = trained.valid();

    // Score the f32 weights, then ship MXFP4 experts + BF16 like the release and score that.
    let probes = curriculum.probes();
    let probes_f32 = accuracy_by_task(&run_probes(&trained, &tokenizer, &probes, 64)?);
    let ship = ExportOptions {
        experts: ExpertFormat::Mxfp4,
        float_dtype: safetensors::Dtype::BF16,
        max_shard_bytes: u64::MAX,
        force: args.force,
    };
    let out = trained.save_checkpoint(&args.out, &ship, &[&tokenizer_path])?;
    let shipped = load_model(&out, &burn::tensor::Device::flex(), LoadOptions::default())?;
    let outcomes = run_probes(&shipped, &tokenizer, &probes, 64)?;
    let probes_mxfp4 = accuracy_by_task(&outcomes);
    write_jsonl(&out.join("probe_results.jsonl"), &outcomes)?;

    let points: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| (r.step as f64, r.lm_loss as f64))
        .collect();
    line_chart(
        &out.join("loss"),
        "oss-nano training loss",
        "step",
        "cross-entropy",
        &[Series {
            name: "language-model loss".into(),
            points,
        }],
    )?;
    let csv: String = std::iter::once("step,learning_rate,loss,lm_loss,balance_loss".to_string())
        .chain(reports.iter().map(|r| {
            format!(
                "{},{:.6e},{:.5},{:.5},{:.5}",
                r.step, r.learning_rate, r.loss, r.lm_loss, r.balance_loss
            )
        }))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(out.join("loss.csv"), csv + "\n")?;

    let final_loss = reports
        .iter()
        .rev()
        .take(50)
        .map(|r| r.lm_loss)
        .sum::<f32>()
        / reports.len().clamp(1, 50) as f32;
    let command = format!(
        "gpt-oss-lite train-nano --seed {} --steps {} --batch-size {} --seq-len {} --lr {} --train-docs {} --vocab {} --device {}",
        args.seed,
        args.steps,
        args.batch_size,
        args.seq_len,
        args.lr,
        args.train_docs,
        args.vocab,
        match args.device {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Auto => "auto",
        }
    );
    let log = TrainingLog {
        command,
        device: description,
        host: host_description(),
        train: train_config,
        wall_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        final_lm_loss: final_loss,
        probes_f32: probes_f32.clone(),
        probes_mxfp4: probes_mxfp4.clone(),
    };
    std::fs::write(
        out.join("training.json"),
        serde_json::to_string_pretty(&log)? + "\n",
    )?;
    write_model_card(&out, &curriculum)?;
    for (task, (c, n)) in &probes_mxfp4 {
        tracing::info!(
            "{task:>9}: {c}/{n} ({:.1}%), f32 {:.1}%",
            100.0 * *c as f64 / *n as f64,
            probes_f32
                .get(task)
                .map_or(0.0, |(c, n)| 100.0 * *c as f64 / *n as f64)
        );
    }
    tracing::info!(
        "wrote {} in {:.1} min",
        out.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

fn tokenizer_vocab_size(path: &Path) -> anyhow::Result<usize> {
    let t = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(t.get_vocab_size(true))
}

/// Calibration sets (one per task and the diverse mix), held-out text and probes, plus a
/// manifest.
pub fn write_datasets(
    curriculum: &Curriculum,
    tokenizer: &TextTokenizer,
    dir: &Path,
    probes_path: &Path,
) -> anyhow::Result<()> {
    let count = |s: &str| tokenizer.encode(s).map(|t| t.len()).unwrap_or(0);
    let mut manifest = serde_json::Map::new();
    let mut write = |name: &str, samples: &[Sample]| -> anyhow::Result<()> {
        write_jsonl(
            &dir.join("calibration").join(format!("{name}.jsonl")),
            samples,
        )?;
        let tokens: usize = samples.iter().map(|s| count(&s.text)).sum();
        let math: usize = samples
            .iter()
            .filter(|s| Task::from_name(&s.task).is_some_and(Task::is_arithmetic))
            .map(|s| count(&s.text))
            .sum();
        manifest.insert(name.into(), json!({"samples": samples.len(), "tokens": tokens, "arithmetic_token_share": math as f64 / tokens.max(1) as f64}));
        Ok(())
    };
    for task in Task::ALL {
        write(task.name(), &curriculum.calibration_documents(task, 64))?;
    }
    write(
        "diverse",
        &curriculum.diverse_calibration(40_000, 0.02, &count),
    )?;
    // Arithmetic in probe form from the calibration side of the split, for strategies that look
    // at answer tokens (math-probe-aware).
    let math_probes: Vec<_> = [Task::Add, Task::Sub, Task::Mul]
        .into_iter()
        .flat_map(|t| curriculum.calibration_probes(t, 40))
        .collect();
    write_jsonl(
        &dir.join("calibration").join("math-probes.jsonl"),
        &math_probes,
    )?;
    manifest.insert("math-probes".into(), json!({"items": math_probes.len()}));
    let heldout: Vec<Sample> = Task::ALL
        .into_iter()
        .flat_map(|t| curriculum.heldout_documents(t, 8))
        .collect();
    write_jsonl(&dir.join("heldout.jsonl"), &heldout)?;
    manifest.insert("heldout".into(), json!({"samples": heldout.len()}));
    let probes = curriculum.probes();
    write_jsonl(probes_path, &probes)?;
    manifest.insert(
        "probes".into(),
        json!({"items": probes.len(), "file": probes_path.display().to_string()}),
    );
    manifest.insert("seed".into(), json!(curriculum.seed));
    manifest.insert("generated_by".into(), json!("gpt-oss-lite train-nano"));
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(manifest))? + "\n",
    )?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// The model whose tokenizer counts tokens (the diverse mix is balanced in tokens).
    #[arg(long, default_value = "models/oss-nano")]
    pub model: PathBuf,
    #[arg(long, default_value = "datasets/nano")]
    pub out: PathBuf,
    #[arg(long, default_value = "datasets/probes/oss-nano.jsonl")]
    pub probes: PathBuf,
    /// The curriculum seed (the one the model was trained with).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `nano-data`: rewrites the calibration and probe sets without training.
pub fn run_data(args: DataArgs) -> anyhow::Result<()> {
    let tokenizer = TextTokenizer::from_file(&args.model.join("tokenizer.json"))?;
    write_datasets(
        &Curriculum::new(args.seed),
        &tokenizer,
        &args.out,
        &args.probes,
    )?;
    tracing::info!("wrote {}", args.out.display());
    Ok(())
}

/// README.md of a trained oss-nano folder, from its training.json and fresh measurements of
/// which experts each task routes to.
fn write_model_card(dir: &Path, curriculum: &Curriculum) -> anyhow::Result<()> {
    let log_path = dir.join("training.json");
    let log: TrainingLog = serde_json::from_str(
        &std::fs::read_to_string(&log_path)
            .with_context(|| format!("reading {}", log_path.display()))?,
    )
    .with_context(|| format!("{}: not a train-nano log", log_path.display()))?;
    let model = load_model(dir, &burn::tensor::Device::flex(), LoadOptions::default())?;
    let tokenizer = TextTokenizer::for_model(dir, &model.config)?;
    let usage = usage_by_task(&model, &tokenizer, curriculum, 64)?;
    let card = model_card(&CardInputs {
        log: &log,
        parameters: model.num_params(),
        checkpoint_bytes: std::fs::metadata(dir.join("model.safetensors"))?.len(),
        usage: &usage,
    });
    std::fs::write(dir.join("README.md"), card)?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct CardArgs {
    #[arg(long, default_value = "models/oss-nano")]
    pub model: PathBuf,
    /// The curriculum seed (the one the model was trained with).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `nano-card`: rewrites a trained model's README.md without training.
pub fn run_card(args: CardArgs) -> anyhow::Result<()> {
    write_model_card(&args.model, &Curriculum::new(args.seed))?;
    tracing::info!("wrote {}", args.model.join("README.md").display());
    Ok(())
}
