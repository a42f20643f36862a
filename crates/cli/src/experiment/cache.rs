//! Stage caching: every stage's output lives in a folder named by the hash of its inputs (file
//! contents, options, the keys of the stages it reads, and the running binary: [`build_digest`]),
//! so a changed input re-runs its stage and the stages that read it, and nothing else, and a
//! rebuilt workbench re-runs them all.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// Files up to this size are hashed whole; larger ones (full-size checkpoints) by their length,
/// their safetensors header (names, dtypes, shapes, offsets) and their first and last MiB.
const HASH_WHOLE_BELOW: u64 = 64 << 20;

/// A stage's identity: hex SHA-256 of its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageKey(pub String);

impl StageKey {
    pub fn of(parts: &[&str]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        Self(format!("{:x}", h.finalize()))
    }

    /// The first 16 hex digits, for folder names.
    pub fn short(&self) -> &str {
        &self.0[..16]
    }
}

/// Digest of one file's contents (see [`HASH_WHOLE_BELOW`]).
pub fn file_digest(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    if len < HASH_WHOLE_BELOW {
        let mut bytes = vec![];
        file.read_to_end(&mut bytes)?;
        h.update(&bytes);
    } else {
        use std::io::{Seek, SeekFrom};
        let mut head = vec![0u8; 1 << 20];
        file.read_exact(&mut head)?;
        h.update(&head);
        // safetensors: 8-byte header length, then the JSON header.
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes")).min(len - 8);
        if header_len as usize + 8 > head.len() {
            let mut header = vec![0u8; header_len as usize];
            file.seek(SeekFrom::Start(8))?;
            file.read_exact(&mut header)?;
            h.update(&header);
        }
        file.seek(SeekFrom::End(-(1 << 20)))?;
        file.read_exact(&mut head)?;
        h.update(&head);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Digest of the running gpt-oss-lite binary, every byte of it: part of every stage's key, so
/// that a rebuilt workbench (a strategy, the model code or a metric changed) runs the stages
/// again instead of reusing what the old code wrote. [`file_digest`] samples large files and
/// could miss a change inside the binary.
pub fn build_digest() -> anyhow::Result<String> {
    let binary = std::env::current_exe().context("locating the running gpt-oss-lite binary")?;
    whole_file_digest(&binary)
}

/// Digest of every byte of the file at `path`, read a piece at a time.
fn whole_file_digest(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut piece = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut piece)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        h.update(&piece[..read]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Digest of every file directly inside `dir` (a checkpoint folder), names included.
pub fn folder_digest(dir: &Path) -> anyhow::Result<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut parts = vec![];
    for p in &names {
        parts.push(
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        parts.push(file_digest(p)?);
    }
    Ok(StageKey::of(&parts.iter().map(String::as_str).collect::<Vec<_>>()).0)
}

/// Where stage outputs live; a stage is done once its folder holds a `done` marker (written
/// after everything else).
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    pub fn dir(&self, stage: &str, name: &str, key: &StageKey) -> PathBuf {
        self.root
            .join(stage)
            .join(format!("{name}-{}", key.short()))
    }

    pub fn is_done(dir: &Path) -> bool {
        dir.join("done").exists()
    }

    pub fn mark_done(dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("done"), "").with_context(|| format!("writing {}", dir.display()))
    }

    /// Records in `dir` (made if missing) that the build `digest` ([`build_digest`]) started it.
    pub fn record_build(dir: &Path, digest: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
        std::fs::write(dir.join("build"), digest)
            .with_context(|| format!("writing {}", dir.join("build").display()))
    }

    /// The build [`Self::record_build`] recorded in `dir`, if any (a folder from before builds
    /// were recorded counts as another build's).
    pub fn build_of(dir: &Path) -> Option<String> {
        match std::fs::read_to_string(dir.join("build")) {
            Ok(digest) => Some(digest),
            Err(_) if dir.exists() => Some(String::new()),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_part_and_its_boundaries() {
        assert_eq!(StageKey::of(&["a", "b"]), StageKey::of(&["a", "b"]));
        assert_ne!(StageKey::of(&["a", "b"]), StageKey::of(&["ab"]));
        assert_ne!(StageKey::of(&["a", "b"]), StageKey::of(&["b", "a"]));
        assert_eq!(StageKey::of(&["x"]).short().len(), 16);
    }

    #[test]
    fn file_digest_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.jsonl");
        std::fs::write(&p, "one\n").unwrap();
        let first = file_digest(&p).unwrap();
        assert_eq!(first, file_digest(&p).unwrap());
        std::fs::write(&p, "two\n").unwrap();
        assert_ne!(first, file_digest(&p).unwrap());
        let e = file_digest(&dir.path().join("missing.jsonl")).unwrap_err();
        assert!(format!("{e:#}").contains("missing.jsonl"));
    }

    /// A byte changed in the middle of a file past `HASH_WHOLE_BELOW` escapes the sampling
    /// `file_digest` (same length, same first and last MiB) but not the whole-file digest the
    /// build's key uses.
    #[test]
    fn the_whole_file_digest_sees_a_change_the_sampled_one_misses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("binary");
        let mut bytes = vec![0u8; HASH_WHOLE_BELOW as usize + (4 << 20)];
        std::fs::write(&p, &bytes).unwrap();
        let (sampled, whole) = (file_digest(&p).unwrap(), whole_file_digest(&p).unwrap());
        bytes[HASH_WHOLE_BELOW as usize / 2] = 1;
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(sampled, file_digest(&p).unwrap());
        assert_ne!(whole, whole_file_digest(&p).unwrap());
        let running = build_digest().unwrap();
        assert_eq!(running, build_digest().unwrap());
        assert_eq!(running.len(), 64);
    }
}
