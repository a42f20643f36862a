//! Reading a checkpoint folder: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped, so a 13 GB checkpoint is never held
//! in RAM twice; tensors are looked up by their Hugging Face name.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{AllocationProperty, Bytes};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{ModelError, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    /// Shared with the tensors made from [`TensorRef::shared_bytes`].
    mmap: Arc<Mmap>,
    /// Offset of the first data byte (8 + header length).
    data_start: usize,
}

struct Location {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// An opened checkpoint: every tensor's place, dtype and shape, with its bytes mapped.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Location>,
}

/// One tensor's bytes as stored, with where they came from (for error messages).
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
    /// The map `bytes` lie in.
    map: &'a Arc<Mmap>,
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens `dir`, validating every shard's header against its size.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let mut ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            shards: vec![],
            tensors: BTreeMap::new(),
        };
        if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let index: IndexFile = serde_json::from_str(&text).map_err(|e| {
                ModelError::checkpoint(&index_path, format!("not a valid index: {e}"))
            })?;
            let mut files: Vec<&String> = index.weight_map.values().collect();
            files.sort();
            files.dedup();
            for file in files {
                if file.contains('/') || file.contains("..") {
                    return Err(ModelError::checkpoint(
                        &index_path,
                        format!("shard name `{file}` must be a plain file name"),
                    ));
                }
                ckpt.add_shard(&dir.join(file))?;
            }
            for (name, file) in &index.weight_map {
                let loc = ckpt.tensors.get(name).ok_or_else(|| {
                    ModelError::tensor(
                        dir.join(file),
                        name,
                        "listed in the index but not in this shard",
                    )
                })?;
                let actual = &ckpt.shards[loc.shard].path;
                if actual.file_name().and_then(|f| f.to_str()) != Some(file.as_str()) {
                    return Err(ModelError::tensor(
                        &index_path,
                        name,
                        format!("index says {file}, found in {}", actual.display()),
                    ));
                }
            }
            if ckpt.tensors.len() != index.weight_map.len() {
                let extra = ckpt
                    .tensors
                    .iter()
                    .find(|(n, _)| !index.weight_map.contains_key(*n))
                    .map(|(n, l)| (n.clone(), ckpt.shards[l.shard].path.clone()));
                if let Some((name, path)) = extra {
                    return Err(ModelError::tensor(
                        path,
                        name,
                        "in a shard but not in the index",
                    ));
                }
            }
        } else if single_path.exists() {
            ckpt.add_shard(&single_path)?;
        } else {
            return Err(ModelError::checkpoint(
                dir,
                format!("no {SINGLE_FILE} and no {INDEX_FILE}"),
            ));
        }
        Ok(ckpt)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint changed by another process while we
        // read it is outside what any loader can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| describe_header_error(path, &mmap, e))?;
        let shard = self.shards.len();
        for (name, info) in metadata.tensors() {
            if self.tensors.contains_key(&name) {
                return Err(ModelError::tensor(path, &name, "appears in two shards"));
            }
            self.tensors.insert(
                name,
                Location {
                    shard,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    begin: info.data_offsets.0,
                    end: info.data_offsets.1,
                },
            );
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            data_start: 8 + header_len,
        });
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The files the tensors live in.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// The file holding `name`, or the folder when no file does.
    pub fn path_of(&self, name: &str) -> &Path {
        self.tensors
            .get(name)
            .map(|l| self.shards[l.shard].path.as_path())
            .unwrap_or(&self.dir)
    }

    /// Looks up a tensor; a missing one is an error naming the checkpoint folder.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let (key, loc) = self
            .tensors
            .get_key_value(name)
            .ok_or_else(|| ModelError::tensor(&self.dir, name, "missing from the checkpoint"))?;
        let shard = &self.shards[loc.shard];
        let bytes = &shard.mmap[shard.data_start + loc.begin..shard.data_start + loc.end];
        Ok(TensorRef {
            name: key,
            path: &shard.path,
            dtype: loc.dtype,
            shape: &loc.shape,
            bytes,
            map: &shard.mmap,
        })
    }

    /// Sum of all tensor bytes (what an index's `total_size` holds).
    pub fn total_tensor_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|l| (l.end - l.begin) as u64)
            .sum()
    }
}

impl<'a> TensorRef<'a> {
    fn error(&self, message: impl Into<String>) -> ModelError {
        ModelError::tensor(self.path, self.name, message)
    }

    /// Errors unless the stored shape is `expected`.
    pub fn expect_shape(&self, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(self.error(format!(
                "shape {:?} contradicts config.json, which implies {:?}",
                self.shape, expected
            )));
        }
        Ok(())
    }

    /// Errors unless the tensor is a floating-point tensor we can read.
    pub fn expect_float(&self) -> Result<()> {
        match self.dtype {
            Dtype::BF16 | Dtype::F16 | Dtype::F32 => Ok(()),
            other => Err(self.error(format!("dtype {other:?}, expected BF16, F16 or F32"))),
        }
    }

    pub fn expect_u8(&self) -> Result<()> {
        match self.dtype {
            Dtype::U8 => Ok(()),
            other => Err(self.error(format!("dtype {other:?}, expected U8 (MXFP4 bytes)"))),
        }
    }

    /// The values as f32 (BF16 and F16 widen exactly).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.expect_float()?;
        Ok(match self.dtype {
            Dtype::F32 => stored_values(self.bytes),
            Dtype::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => unreachable!("checked by expect_float"),
        })
    }

    /// The values of a BF16 tensor as they are stored (no conversion), read in place where they
    /// lie on a 2-byte boundary (every caller copies them on, transposed or in pieces), else
    /// copied; an error for other dtypes.
    pub fn to_bf16(&self) -> Result<Cow<'a, [half::bf16]>> {
        match self.dtype {
            Dtype::BF16 => Ok(match bytemuck::try_cast_slice(self.bytes) {
                Ok(values) => Cow::Borrowed(values),
                Err(_) => Cow::Owned(stored_values(self.bytes)),
            }),
            other => Err(self.error(format!("dtype {other:?}, expected BF16"))),
        }
    }

    /// The stored bytes as burn [`Bytes`] that share the checkpoint's map instead of copying it:
    /// a device upload then reads the file's pages once, and the map stays open while the
    /// `Bytes` live. Copying a 120b's 57 GB of MXFP4 blocks into fresh memory first took 42-45 s
    /// of its 64-67 s load, and 31 s remain without it (docs/benchmarks.md, thirty-first round).
    pub fn shared_bytes(&self) -> Bytes {
        self.shared_range(0..self.bytes.len())
    }

    /// Bytes `range` of the stored bytes, shared with the map as [`TensorRef::shared_bytes`].
    pub fn shared_range(&self, range: Range<usize>) -> Bytes {
        assert!(
            range.end <= self.bytes.len(),
            "{range:?} of {} bytes",
            self.bytes.len()
        );
        let start = self.bytes.as_ptr() as usize - self.map.as_ptr() as usize;
        let mapped = MappedRange {
            map: Arc::clone(self.map),
            range: start + range.start..start + range.end,
        };
        Bytes::from_shared(bytes::Bytes::from_owner(mapped), AllocationProperty::File)
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A range of a shard's map, owned by the [`Bytes`] made from it.
struct MappedRange {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

// safetensors stores values little-endian; `stored_values` reads them as this target's own.
#[cfg(not(target_endian = "little"))]
compile_error!("checkpoint values are read in place, which needs a little-endian target");

/// Stored little-endian values as `T`, in one copy of their bytes. A conversion value by value
/// (`from_le_bytes` over `chunks_exact`) runs at a sixth of a copy's speed in our lightly
/// optimised build (docs/benchmarks.md, thirty-first round).
pub(crate) fn stored_values<T: bytemuck::NoUninit + bytemuck::AnyBitPattern>(
    bytes: &[u8],
) -> Vec<T> {
    debug_assert_eq!(bytes.len() % std::mem::size_of::<T>(), 0, "whole values");
    bytemuck::pod_collect_to_vec(bytes)
}

/// Turns safetensors' header errors into sentences that name the file and say what is wrong.
fn describe_header_error(path: &Path, bytes: &[u8], e: safetensors::SafeTensorError) -> ModelError {
    use safetensors::SafeTensorError as E;
    let message = match e {
        E::HeaderTooSmall => format!("only {} bytes: not a safetensors file", bytes.len()),
        E::InvalidHeaderLength => {
            "header length exceeds the file: truncated or not a safetensors file".to_string()
        }
        E::MetadataIncompleteBuffer => match declared_data_bytes(bytes) {
            Some((header, data)) => {
                let expected = 8 + header + data;
                if bytes.len() < expected {
                    format!(
                        "truncated: the header describes {expected} bytes, the file has {}",
                        bytes.len()
                    )
                } else {
                    format!(
                        "{} trailing bytes after the last tensor",
                        bytes.len() - expected
                    )
                }
            }
            None => "the header does not match the file size".to_string(),
        },
        E::InvalidOffset(name) => format!("tensor `{name}`: data offsets overlap or leave gaps"),
        E::TensorInvalidInfo => "a tensor's byte range does not match its dtype and shape".into(),
        E::InvalidHeaderDeserialization(err) => format!("header is not valid JSON: {err}"),
        other => format!("invalid safetensors header: {other}"),
    };
    ModelError::checkpoint(path, message)
}

/// (header length, sum of declared tensor bytes), read leniently for error messages.
fn declared_data_bytes(bytes: &[u8]) -> Option<(usize, usize)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    let end = header
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    Some((n, end as usize))
}

/// Tests': a one-shard checkpoint in `dir` whose data is `data`, with `header` (JSON) padded to
/// 8, written by hand (safetensors' writer puts every tensor on its dtype's boundary).
#[cfg(test)]
pub(crate) fn write_shard(dir: &Path, header: &str, data: &[u8]) {
    let mut header = header.as_bytes().to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    std::fs::write(dir.join(SINGLE_FILE), file).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_values_are_read_in_place_where_aligned_and_copied_where_not() {
        // `odd` is one byte, so `late` starts off a 2-byte boundary; `early` starts the data.
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"early":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"odd":{"dtype":"U8","shape":[1],"data_offsets":[4,5]},"late":{"dtype":"BF16","shape":[2],"data_offsets":[5,9]}}"#;
        let (one, minus_two) = (half::bf16::from_f32(1.0), half::bf16::from_f32(-2.0));
        let values = [one.to_le_bytes(), minus_two.to_le_bytes()].concat();
        let data = [&values[..], &[7], &values[..]].concat();
        write_shard(dir.path(), header, &data);
        let ckpt = Checkpoint::open(dir.path()).unwrap();

        let early = ckpt.tensor("early").unwrap().to_bf16().unwrap();
        assert!(matches!(early, Cow::Borrowed(_)));
        assert_eq!(early[..], [one, minus_two]);
        let late = ckpt.tensor("late").unwrap().to_bf16().unwrap();
        assert!(matches!(late, Cow::Owned(_)));
        assert_eq!(late[..], [one, minus_two]);
        assert!(ckpt.tensor("odd").unwrap().to_bf16().is_err());
    }
}
