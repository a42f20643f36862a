# gpt-oss-lite recipes. The two set-up commands (README) are plain cargo; these wrap them and more.

# The main job: the oss-nano experiment (trace, select, eval, report into reports/nano-quality-table).
nano-experiment:
    cargo run -p gpt-oss-lite -- run experiments/nano-quality-table.toml

# Any experiment file; e.g. just run experiments/gpt-oss-20b.toml --model /data/gpt-oss-20b --device wgpu
run experiment *args:
    cargo run -p gpt-oss-lite -- run {{experiment}} {{args}}

# Probe suites and held-out text on a model, optionally through a selection's expert mask.
eval model probes *args:
    cargo run -p gpt-oss-lite -- eval --model {{model}} --probes {{probes}} --out target/eval {{args}}

# The test suite, exactly as CI runs it.
test:
    cargo test --workspace --locked

# Lints as CI would want them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Continue a prompt on a model folder (CPU unless a GPU adapter exists).
generate model prompt *args:
    cargo run -p gpt-oss-lite -- generate --model {{model}} --prompt "{{prompt}}" {{args}}

# Per-token log-probabilities of a text.
score model text *args:
    cargo run -p gpt-oss-lite -- score --model {{model}} --text "{{text}}" {{args}}

# Config, tensors and bytes per component of a checkpoint.
inspect model *args:
    cargo run -p gpt-oss-lite -- inspect --model {{model}} {{args}}

# A random gpt-oss-20b checkpoint in the release layout (13.8 GB).
synth-20b out="models/synth-20b":
    cargo run -p gpt-oss-lite -- synth --preset 20b --out {{out}}

# Rebuild the transformers reference fixtures (needs Python; installs a venv under tools/reference).
fixtures:
    tools/reference/setup-venv.sh
    tools/reference/.venv/bin/python tools/reference/make_fixtures.py

# Rebuild oss-nano from its seed (CPU: 56 minutes on 2 cores; --device wgpu for a GPU).
train-nano *args:
    cargo run -p gpt-oss-lite -- train-nano --force {{args}}

# Compare a checkpoint's log-probabilities in transformers and in the workbench (needs the venv).
interop model:
    cargo build -p gpt-oss-lite
    tools/reference/setup-venv.sh
    tools/reference/.venv/bin/python tools/reference/compare_with_transformers.py --model {{model}} --bin ${CARGO_TARGET_DIR:-target}/debug/gpt-oss-lite

# Rewrite oss-nano's model card from its training.json (no training).
nano-card:
    cargo run -p gpt-oss-lite -- nano-card

# Record oss-nano's routing on its calibration sets into datasets/nano/traces/.
trace-nano:
    cargo run -p gpt-oss-lite -- trace --model models/oss-nano --device cpu --data datasets/nano/calibration/diverse.jsonl --out datasets/nano/traces/diverse
    cargo run -p gpt-oss-lite -- trace --model models/oss-nano --device cpu --data datasets/nano/calibration/add.jsonl,datasets/nano/calibration/add2.jsonl,datasets/nano/calibration/capital.jsonl,datasets/nano/calibration/code.jsonl,datasets/nano/calibration/english.jsonl,datasets/nano/calibration/math-probes.jsonl,datasets/nano/calibration/mul.jsonl,datasets/nano/calibration/sequence.jsonl,datasets/nano/calibration/sub.jsonl,datasets/nano/calibration/sub2.jsonl --out datasets/nano/traces/tasks

# Memory and disk per experts-per-layer budget (pruned variants under target/bench-memory).
bench-memory model="models/oss-nano" *args:
    cargo run -p gpt-oss-lite -- bench memory --model {{model}} --work target/bench-memory {{args}}

# GPU throughput on a model: scoring (with and without routing recorded) and greedy decode.
bench-model model *args:
    cargo run -p gpt-oss-lite -- bench model --model {{model}} --device wgpu {{args}}

# Dense matmul TFLOP/s on the GPU: burn's kernels, or ours with --kernel coopmat.
bench-matmul *args:
    cargo run -p gpt-oss-lite -- bench matmul --device wgpu {{args}}

# Every GPU kernel against its burn-ops reference on random data (GPU).
kernel-check:
    cargo run -p gpt-oss-lite -- bench kernel-check --device wgpu
