//! `docker save` archives: reading one on the client (where each piece lies in the file) and
//! writing one on the worker (tar headers around the pieces as they arrive).
//!
//! Both archive layouts are read: the legacy one of engines before 25 (`<id>/layer.tar`,
//! `<hex>.json`) and the OCI layout of newer ones (`blobs/sha256/<hex>`, where `layer.tar` may
//! be a symlink). Both have a `manifest.json` naming the config and the layers in order. The
//! worker writes the legacy layout, which every engine loads.
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{LayerInfo, MAX_CONFIG, MAX_LAYERS};

/// Where a piece lies in the archive file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

/// An image archive on disk, indexed.
#[derive(Clone, Debug)]
pub struct ImageArchive {
    pub path: PathBuf,
    /// `sha256:<hex>` of the config: the image ID, which the client commits to on chain.
    pub image: String,
    pub config: Span,
    pub layers: Vec<(LayerInfo, Span)>,
}

impl ImageArchive {
    /// The size of everything that would be sent for a cold push.
    pub fn total_bytes(&self) -> u64 {
        self.config.len + self.layers.iter().map(|(l, _)| l.size).sum::<u64>()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading image archive {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("image archive {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

enum Item {
    File(Span),
    Link(String),
}

/// Indexes the archive at `path`: where the config and each layer lie, and their digests.
/// Only the manifest and the config are read whole (both small).
pub fn index(path: &Path) -> Result<ImageArchive, ArchiveError> {
    let io = |source| ArchiveError::Io { path: path.into(), source };
    let invalid = |reason: String| ArchiveError::Invalid { path: path.into(), reason };
    let mut items: HashMap<String, Item> = HashMap::new();
    let mut archive = tar::Archive::new(File::open(path).map_err(io)?);
    for entry in archive.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = normalize(&entry.path().map_err(io)?.to_string_lossy());
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let target = entry.link_name().map_err(io)?.map(|t| t.to_string_lossy().into_owned());
            if let Some(target) = target {
                let base = Path::new(&name).parent().unwrap_or(Path::new("")).to_path_buf();
                items.insert(name, Item::Link(normalize(&base.join(target).to_string_lossy())));
            }
        } else if kind.is_file() {
            items.insert(name, Item::File(Span { offset: entry.raw_file_position(), len: entry.size() }));
        }
    }
    let resolve = |name: &str| -> Result<Span, ArchiveError> {
        let mut name = normalize(name);
        for _ in 0..8 {
            match items.get(&name) {
                Some(Item::File(span)) => return Ok(*span),
                Some(Item::Link(target)) => name = target.clone(),
                None => return Err(invalid(format!("'{name}' is named in manifest.json but missing"))),
            }
        }
        Err(invalid(format!("'{name}': too many symlinks")))
    };
    let mut file = File::open(path).map_err(io)?;
    let manifest_span = resolve("manifest.json")?;
    let manifest: Vec<ManifestEntry> =
        serde_json::from_slice(&read_span(&mut file, manifest_span, MAX_CONFIG).map_err(io)?)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let [entry] = <[ManifestEntry; 1]>::try_from(manifest)
        .map_err(|m| invalid(format!("manifest.json lists {} images; export exactly one", m.len())))?;
    let config = resolve(&entry.config)?;
    if config.len > MAX_CONFIG {
        return Err(invalid(format!("the image config is {} bytes (at most {MAX_CONFIG})", config.len)));
    }
    let config_bytes = read_span(&mut file, config, MAX_CONFIG).map_err(io)?;
    let parsed: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| invalid(format!("image config: {e}")))?;
    let diff_ids = parsed.rootfs.diff_ids;
    if diff_ids.len() != entry.layers.len() || diff_ids.len() > MAX_LAYERS {
        return Err(invalid(format!(
            "the config lists {} layers and the manifest {} (at most {MAX_LAYERS})",
            diff_ids.len(),
            entry.layers.len()
        )));
    }
    let layers = diff_ids
        .into_iter()
        .zip(&entry.layers)
        .map(|(diff_id, name)| {
            let span = resolve(name)?;
            Ok((LayerInfo { diff_id, size: span.len }, span))
        })
        .collect::<Result<Vec<_>, ArchiveError>>()?;
    Ok(ImageArchive { path: path.into(), image: sha256_string(&config_bytes), config, layers })
}

fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn read_span(file: &mut File, span: Span, max: u64) -> std::io::Result<Vec<u8>> {
    if span.len > max {
        return Err(std::io::Error::other(format!("{} bytes is over the {max}-byte limit", span.len)));
    }
    file.seek(SeekFrom::Start(span.offset))?;
    let mut buf = vec![0; span.len as usize];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_string(bytes: &[u8]) -> String {
    format!("sha256:{}", alloy::hex::encode(Sha256::digest(bytes)))
}

/// The tar header of a regular file in the archive the worker writes.
pub fn header(path: &str, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).expect("our archive paths are short and relative");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    *h.as_bytes()
}

/// Zero bytes that pad a file of `size` bytes to the 512-byte tar block.
pub fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// The end-of-archive marker: two zero blocks.
pub const TRAILER: [u8; 1024] = [0; 1024];

/// The paths the worker's archive uses for a config and a layer (legacy layout).
pub fn config_path(image: &str) -> String {
    format!("{}.json", image.trim_start_matches("sha256:"))
}

pub fn layer_path(diff_id: &str) -> String {
    format!("{}/layer.tar", diff_id.trim_start_matches("sha256:"))
}

/// `manifest.json` for an image whose layers are `diff_ids` (present ones need not be in the
/// archive: the engine reuses a layer chain it already has without reading the file).
pub fn manifest(image: &str, diff_ids: &[String]) -> Vec<u8> {
    let layers: Vec<String> = diff_ids.iter().map(|d| layer_path(d)).collect();
    serde_json::to_vec(
        &serde_json::json!([{ "Config": config_path(image), "RepoTags": null, "Layers": layers }]),
    )
    .expect("a manifest always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, bytes) in files {
            out.extend_from_slice(&header(path, bytes.len() as u64));
            out.extend_from_slice(bytes);
            out.extend(std::iter::repeat_n(0, padding(bytes.len() as u64)));
        }
        out.extend_from_slice(&TRAILER);
        out
    }

    #[test]
    fn the_archive_we_write_is_indexed_back_with_its_digests_and_spans() {
        let layer_a = b"layer a bytes".to_vec();
        let layer_b = vec![7u8; 1500];
        let diff_ids = vec![sha256_string(&layer_a), sha256_string(&layer_b)];
        let config =
            serde_json::to_vec(&serde_json::json!({"rootfs": {"type": "layers", "diff_ids": diff_ids}}))
                .unwrap();
        let image = sha256_string(&config);
        let bytes = tar_of(&[
            (&layer_path(&diff_ids[0]), &layer_a),
            (&config_path(&image), &config),
            (&layer_path(&diff_ids[1]), &layer_b),
            ("manifest.json", &manifest(&image, &diff_ids)),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        std::fs::write(&path, &bytes).unwrap();
        let got = index(&path).unwrap();
        assert_eq!(got.image, image);
        assert_eq!(got.layers.len(), 2);
        for ((info, span), (want_id, want)) in
            got.layers.iter().zip(diff_ids.iter().zip([&layer_a, &layer_b]))
        {
            assert_eq!(&info.diff_id, want_id);
            assert_eq!(&bytes[span.offset as usize..(span.offset + span.len) as usize], &want[..]);
        }
        assert_eq!(got.total_bytes(), config.len() as u64 + 13 + 1500);
    }

    #[test]
    fn an_archive_with_a_missing_layer_or_two_images_is_refused_with_the_reason() {
        let config = br#"{"rootfs":{"diff_ids":["sha256:00"]}}"#;
        let image = sha256_string(config);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let bytes = tar_of(&[
            (&config_path(&image), config),
            ("manifest.json", &manifest(&image, &["sha256:00".into()])),
        ]);
        std::fs::write(&path, bytes).unwrap();
        let err = index(&path).unwrap_err().to_string();
        assert!(err.contains("named in manifest.json but missing"), "{err}");
        let two = br#"[{"Config":"a.json","Layers":[]},{"Config":"b.json","Layers":[]}]"#;
        std::fs::write(&path, tar_of(&[("manifest.json", two)])).unwrap();
        let err = index(&path).unwrap_err().to_string();
        assert!(err.contains("lists 2 images"), "{err}");
    }
}
