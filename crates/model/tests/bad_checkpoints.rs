//! Broken checkpoints give an error naming the file and what is wrong, never a panic.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use gpt_oss_model::checkpoint::{Checkpoint, PlannedTensor, write_safetensors};
use gpt_oss_model::{LoadOptions, load_model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/reference/out")
        .join(name)
}

/// A copy of a fixture in a temporary folder.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_error(dir: &Path) -> String {
    match load_model(dir, &Device::flex(), LoadOptions::default()) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the single-file fixture, letting `edit` drop or add tensors.
fn rewrite_dense(dir: &Path, edit: impl Fn(&mut Vec<PlannedTensor>)) {
    let src = Checkpoint::open(&fixture("tiny-dense")).unwrap();
    let mut planned: Vec<PlannedTensor> = src
        .names()
        .map(|n| {
            let t = src.tensor(n).unwrap();
            PlannedTensor {
                name: n.to_string(),
                dtype: t.dtype,
                shape: t.shape.to_vec(),
            }
        })
        .collect();
    edit(&mut planned);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    write_safetensors(dir, &planned, u64::MAX, |t| match src.tensor(&t.name) {
        Ok(x) => Ok(x.bytes.to_vec()),
        Err(_) => Ok(vec![0u8; t.byte_len() as usize]),
    })
    .unwrap();
}

#[test]
fn truncated_file_is_named_and_called_truncated() {
    let tmp = copy_fixture("tiny-dense");
    let file = tmp.path().join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len - 100).unwrap();
    let e = load_error(tmp.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn truncated_header_is_an_error_not_a_panic() {
    let tmp = copy_fixture("tiny-dense");
    let file = tmp.path().join("model.safetensors");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(20)
        .unwrap();
    let e = load_error(tmp.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let tmp = copy_fixture("tiny-dense");
    rewrite_dense(tmp.path(), |p| {
        p.retain(|t| t.name != "model.layers.1.self_attn.sinks")
    });
    let e = load_error(tmp.path());
    assert!(
        e.contains("model.layers.1.self_attn.sinks") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let tmp = copy_fixture("tiny-dense");
    rewrite_dense(tmp.path(), |p| {
        p.push(PlannedTensor {
            name: "model.layers.9.extra".into(),
            dtype: safetensors::Dtype::F32,
            shape: vec![3],
        })
    });
    let e = load_error(tmp.path());
    assert!(
        e.contains("model.layers.9.extra") && e.contains("unexpected"),
        "{e}"
    );
}

#[test]
fn shape_contradicting_config_is_named() {
    let tmp = copy_fixture("tiny-dense");
    let path = tmp.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["intermediate_size"] = serde_json::json!(48);
    std::fs::write(&path, config.to_string()).unwrap();
    let e = load_error(tmp.path());
    assert!(
        e.contains("model.layers.0.mlp.experts.gate_up_proj")
            && e.contains("contradicts config.json"),
        "{e}"
    );
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn bad_config_names_the_file_and_field() {
    let tmp = copy_fixture("tiny-dense");
    let path = tmp.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("vocab_size");
    std::fs::write(&path, config.to_string()).unwrap();
    let e = load_error(tmp.path());
    assert!(e.contains("config.json") && e.contains("vocab_size"), "{e}");

    std::fs::write(&path, "{\"hidden_size\": ").unwrap();
    let e = load_error(tmp.path());
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );
}

#[test]
fn mxfp4_scale_byte_255_is_rejected() {
    let tmp = copy_fixture("tiny-mxfp4");
    let name = "model.layers.2.mlp.experts.down_proj_scales";
    let (file, offset) = {
        let ck = Checkpoint::open(tmp.path()).unwrap();
        let t = ck.tensor(name).unwrap();
        let file_bytes = std::fs::read(t.path).unwrap();
        let start = file_bytes
            .windows(t.bytes.len())
            .position(|w| w == t.bytes)
            .unwrap();
        (t.path.to_path_buf(), start + 5)
    };
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[offset] = 255;
    std::fs::write(&file, bytes).unwrap();
    let e = load_error(tmp.path());
    assert!(e.contains(name) && e.contains("255"), "{e}");
    assert!(
        e.contains(file.file_name().unwrap().to_str().unwrap()),
        "{e}"
    );
}

#[test]
fn index_naming_a_missing_shard_is_an_error() {
    let tmp = copy_fixture("tiny-mxfp4");
    let shard = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("model-00001")
        })
        .unwrap();
    std::fs::remove_file(&shard).unwrap();
    let e = load_error(tmp.path());
    assert!(
        e.contains(shard.file_name().unwrap().to_str().unwrap()),
        "{e}"
    );
}

#[test]
fn empty_folder_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("tiny-dense").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let e = load_error(tmp.path());
    assert!(e.contains("no model.safetensors"), "{e}");
}
