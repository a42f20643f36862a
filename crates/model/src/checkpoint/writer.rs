//! Writing checkpoints: safetensors files streamed tensor by tensor (a 13 GB model is never built
//! in memory), split into shards with an index when large, inside an output folder that appears
//! only when complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::json;

use crate::checkpoint::reader::{INDEX_FILE, SINGLE_FILE};
use crate::error::{ModelError, Result};

/// One tensor to write: its name, dtype and shape; the bytes come from a callback.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    pub fn byte_len(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product::<u64>() * (self.dtype.bitsize() / 8) as u64
    }
}

/// What was written: files and the sum of tensor bytes (the index's `total_size`).
#[derive(Debug, Clone)]
pub struct WrittenCheckpoint {
    pub files: Vec<PathBuf>,
    pub total_tensor_bytes: u64,
}

/// Writes `tensors` into `dir` (which must exist): one `model.safetensors` when everything fits
/// in `max_shard_bytes`, else `model-0000i-of-0000N.safetensors` plus the index. `data` is asked
/// for each tensor's bytes in order and must return exactly `byte_len()` bytes.
pub fn write_safetensors(
    dir: &Path,
    tensors: &[PlannedTensor],
    max_shard_bytes: u64,
    mut data: impl FnMut(&PlannedTensor) -> Result<Vec<u8>>,
) -> Result<WrittenCheckpoint> {
    let mut shards: Vec<Vec<&PlannedTensor>> = vec![vec![]];
    let mut current = 0u64;
    for t in tensors {
        let len = t.byte_len();
        if current > 0 && current + len > max_shard_bytes {
            shards.push(vec![]);
            current = 0;
        }
        shards.last_mut().expect("one shard").push(t);
        current += len;
    }
    let n = shards.len();
    let mut written = WrittenCheckpoint {
        files: vec![],
        total_tensor_bytes: 0,
    };
    let mut weight_map = BTreeMap::new();
    for (s, shard) in shards.iter().enumerate() {
        let file_name = if n == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, n)
        };
        let path = dir.join(&file_name);
        write_one_file(&path, shard, &mut data)?;
        for t in shard {
            weight_map.insert(t.name.clone(), file_name.clone());
            written.total_tensor_bytes += t.byte_len();
        }
        written.files.push(path);
    }
    if n > 1 {
        let index = json!({
            "metadata": {"total_size": written.total_tensor_bytes},
            "weight_map": weight_map,
        });
        let path = dir.join(INDEX_FILE);
        write_json(&path, &index)?;
        written.files.push(path);
    }
    Ok(written)
}

fn write_one_file(
    path: &Path,
    tensors: &[&PlannedTensor],
    data: &mut impl FnMut(&PlannedTensor) -> Result<Vec<u8>>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.byte_len();
        header.insert(
            t.name.clone(),
            json!({"dtype": dtype_name(t.dtype), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).expect("header serialises");
    // Pad to 8 bytes with spaces, as the reference writer does, so data starts aligned.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let io = |e| ModelError::io(path, e);
    let mut out = BufWriter::with_capacity(1 << 22, File::create(path).map_err(io)?);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for t in tensors {
        let bytes = data(t)?;
        if bytes.len() as u64 != t.byte_len() {
            return Err(ModelError::tensor(
                path,
                &t.name,
                format!(
                    "writer got {} bytes, expected {}",
                    bytes.len(),
                    t.byte_len()
                ),
            ));
        }
        out.write_all(&bytes).map_err(io)?;
    }
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(())
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("json serialises") + "\n";
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::BF16 => "BF16",
        Dtype::F16 => "F16",
        Dtype::F32 => "F32",
        Dtype::U8 => "U8",
        Dtype::I64 => "I64",
        Dtype::I32 => "I32",
        other => panic!("dtype {other:?} is not written by this workbench"),
    }
}

/// An output folder that appears only when complete: everything is written into a hidden
/// sibling, then renamed into place. Refuses to replace an existing folder unless `force`.
pub struct StagedDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Prepares writing `target`. `sources` are folders the writer reads from: the target may be
    /// none of them (a writer never touches its source model).
    pub fn create(target: &Path, force: bool, sources: &[&Path]) -> Result<Self> {
        let canonical_target = absolute(target);
        for src in sources {
            if absolute(src) == canonical_target {
                return Err(ModelError::checkpoint(
                    target,
                    "the output folder is the source model; choose another folder",
                ));
            }
        }
        if target.exists() && !force {
            return Err(ModelError::checkpoint(
                target,
                "already exists; pass --force to replace it",
            ));
        }
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        }
        let name = target
            .file_name()
            .ok_or_else(|| ModelError::checkpoint(target, "not a folder name"))?
            .to_string_lossy();
        let staging = target.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| ModelError::io(&staging, e))?;
        }
        std::fs::create_dir(&staging).map_err(|e| ModelError::io(&staging, e))?;
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// Where to write files now.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Moves the finished folder into place (replacing an old one only now, after success).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            let old = self.staging.with_extension("old");
            std::fs::rename(&self.target, &old).map_err(|e| ModelError::io(&self.target, e))?;
            std::fs::rename(&self.staging, &self.target)
                .map_err(|e| ModelError::io(&self.target, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| ModelError::io(&old, e))?;
        } else {
            std::fs::rename(&self.staging, &self.target)
                .map_err(|e| ModelError::io(&self.target, e))?;
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::reader::Checkpoint;

    fn planned(name: &str, n: usize) -> PlannedTensor {
        PlannedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape: vec![n],
        }
    }

    fn f32_bytes(t: &PlannedTensor) -> Result<Vec<u8>> {
        let n = t.shape[0];
        Ok((0..n).flat_map(|i| (i as f32).to_le_bytes()).collect())
    }

    #[test]
    fn sharded_write_reads_back_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = vec![planned("a", 10), planned("b", 20), planned("c", 30)];
        let w = write_safetensors(dir.path(), &tensors, 100, f32_bytes).unwrap();
        assert_eq!(w.total_tensor_bytes, 240);
        assert_eq!(w.files.len(), 4, "three shards and the index");
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.total_tensor_bytes(), 240);
        let c = ck.tensor("c").unwrap();
        assert_eq!(c.shape, &[30]);
        assert_eq!(c.to_f32().unwrap()[29], 29.0);
    }

    #[test]
    fn staged_dir_appears_only_on_commit_and_refuses_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let staged = StagedDir::create(&target, false, &[]).unwrap();
        std::fs::write(staged.path().join("x"), b"1").unwrap();
        assert!(!target.exists());
        staged.commit().unwrap();
        assert!(target.join("x").exists());

        let e = StagedDir::create(&target, false, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
        let e = StagedDir::create(&target, true, &[&target])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("source model"), "{e}");

        // A failed write (dropped without commit) leaves the old folder and no debris.
        let staged = StagedDir::create(&target, true, &[]).unwrap();
        std::fs::write(staged.path().join("y"), b"2").unwrap();
        drop(staged);
        assert!(target.join("x").exists() && !target.join("y").exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
