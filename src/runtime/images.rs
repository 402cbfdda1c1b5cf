//! Small test images built on the local engine (there is no registry to pull from): Debian's
//! static busybox in a `FROM scratch` image, optional filler layers of a chosen size, a few files
//! and a command. Used by the tests, the benchmarks and `zeppelin dev`.
//!
//! The build context is a tar generated on the fly and streamed to the engine's build API: a
//! 256 MiB filler layer is never held in memory or written to disk here. The classic builder
//! caches each step, so two recipes that share their first steps (same busybox, same filler
//! layers) share those layers while the first image (or its cache) is still on the engine: the
//! warm-redeploy benchmark builds a second image as the same base plus a different top layer.
use std::path::PathBuf;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};

use super::{DockerRuntime, RuntimeError};

/// Debian's `busybox-static` (installed by `tools/setup.sh`).
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// Every entry of the build context has this modification time, so the same recipe gives the
/// same context bytes.
const MTIME: u64 = 1_700_000_000;
/// Size of the chunks the context is generated in.
const CHUNK: usize = 64 * 1024;

/// What a filler layer's file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Pseudo-random bytes from the seed: incompressible, like most real layers' binaries.
    Random,
    /// Numbered text lines: compresses well.
    Text,
}

/// A layer holding one file of `size` bytes at `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillerLayer {
    /// Absolute path in the image, e.g. `/data/filler0.bin`.
    pub path: String,
    pub size: u64,
    pub content: Content,
    pub seed: u64,
}

/// How to build a test image. Steps, in order (each one layer): busybox at `/bin/busybox`,
/// `busybox --install -s /bin`, one layer per filler, one layer with all `files` (if any); then
/// the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecipe {
    /// A statically linked busybox on this machine.
    pub busybox: PathBuf,
    pub fillers: Vec<FillerLayer>,
    /// `(absolute path in the image, content)`, mode 0644.
    pub files: Vec<(String, Vec<u8>)>,
    /// Exec form, e.g. `["httpd", "-f", "-p", "8080", "-h", "/www"]`.
    pub cmd: Vec<String>,
}

impl ImageRecipe {
    /// Busybox running `cmd` (exec form, through `sh -c` if a shell is wanted).
    pub fn busybox(cmd: &[&str]) -> Self {
        ImageRecipe {
            busybox: PathBuf::from(DEFAULT_BUSYBOX),
            fillers: Vec::new(),
            files: Vec::new(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Busybox running `sh -c script`.
    pub fn shell(script: &str) -> Self {
        Self::busybox(&["sh", "-c", script])
    }

    /// Busybox's httpd serving `index_html` as `/www/index.html` on `port`.
    pub fn httpd(port: u16, index_html: &str) -> Self {
        let port = port.to_string();
        let mut recipe = Self::busybox(&["httpd", "-f", "-v", "-p", &port, "-h", "/www"]);
        recipe.files.push(("/www/index.html".into(), index_html.as_bytes().to_vec()));
        recipe
    }

    /// Adds a filler layer at `/data/filler<n>.bin`.
    pub fn with_filler(mut self, size: u64, content: Content, seed: u64) -> Self {
        let path = format!("/data/filler{}.bin", self.fillers.len());
        self.fillers.push(FillerLayer { path, size, content, seed });
        self
    }

    fn dockerfile(&self) -> String {
        let mut d = String::from("FROM scratch\nCOPY busybox /bin/busybox\n");
        d.push_str("RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n");
        for (i, f) in self.fillers.iter().enumerate() {
            d.push_str(&format!("COPY filler{i} {}\n", f.path));
        }
        if !self.files.is_empty() {
            d.push_str("COPY files/ /\n");
        }
        d.push_str(&format!("CMD {}\n", serde_json::to_string(&self.cmd).expect("strings serialize")));
        d
    }

    fn check(&self) -> Result<(), RuntimeError> {
        let bad = |field: &'static str, reason: String| Err(RuntimeError::InvalidRecipe { field, reason });
        if self.cmd.is_empty() {
            return bad("cmd", "must not be empty".into());
        }
        // Paths go into the Dockerfile and the context's tar headers as they are.
        let plain = |p: &str| {
            p.starts_with('/')
                && !p.ends_with('/')
                && !p.contains("..")
                && p.len() <= 90
                && p.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
        };
        for f in &self.fillers {
            if !plain(&f.path) {
                return bad(
                    "fillers.path",
                    format!("{:?} must be an absolute file path of at most 90 plain characters", f.path),
                );
            }
        }
        for (path, _) in &self.files {
            if !plain(path) {
                return bad(
                    "files",
                    format!("{path:?} must be an absolute file path of at most 90 plain characters"),
                );
            }
        }
        Ok(())
    }
}

/// Builds `recipe` as `tag` and returns the image ID (`sha256:...`).
pub async fn build_image(
    runtime: &DockerRuntime,
    tag: &str,
    recipe: &ImageRecipe,
) -> Result<String, RuntimeError> {
    recipe.check()?;
    let context = format!("building test image {tag}");
    let busybox = std::fs::read(&recipe.busybox).map_err(|e| RuntimeError::InvalidRecipe {
        field: "busybox",
        reason: format!("{}: {e} (install Debian's busybox-static)", recipe.busybox.display()),
    })?;
    let mut entries = vec![
        Entry::file("Dockerfile", 0o644, Source::Bytes(Bytes::from(recipe.dockerfile()))),
        Entry::file("busybox", 0o755, Source::Bytes(Bytes::from(busybox))),
    ];
    for (i, f) in recipe.fillers.iter().enumerate() {
        entries.push(Entry {
            name: format!("filler{i}"),
            mode: 0o644,
            dir: false,
            size: f.size,
            source: Source::Generated(Generator::new(f.content, f.seed)),
        });
    }
    let mut dirs: Vec<String> = Vec::new();
    for (path, content) in &recipe.files {
        let rel = format!("files{path}");
        // Parent directories first, each once.
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            let dir = format!("{}/", &rel[..at + i]);
            if !dirs.contains(&dir) {
                dirs.push(dir.clone());
                entries.push(Entry { name: dir, mode: 0o755, dir: true, size: 0, source: Source::Empty });
            }
            at += i + 1;
        }
        entries.push(Entry::file(&rel, 0o644, Source::Bytes(Bytes::from(content.clone()))));
    }

    let docker = runtime.client().await?;
    let options =
        BuildImageOptionsBuilder::new().dockerfile("Dockerfile").t(tag).rm(true).forcerm(true).build();
    let body = bollard::body_try_stream(tar_stream(entries));
    let mut progress = docker.build_image(options, None, Some(body));
    let mut id = None;
    let mut log = String::new();
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if let Some(aux) = info.aux.and_then(|a| a.id) {
                    id = Some(aux);
                }
                if let Some(line) = info.stream {
                    log.push_str(&line);
                }
            }
            Err(e) => {
                let mut error = runtime.err(context.clone(), e);
                if let RuntimeError::Engine { message, .. } = &mut error {
                    message.push_str(&format!("; build output:\n{log}"));
                }
                return Err(error);
            }
        }
    }
    match id {
        Some(id) => Ok(id),
        None => Err(RuntimeError::Engine {
            context,
            message: format!("the engine named no image; build output:\n{log}"),
            status: None,
        }),
    }
}

enum Source {
    Empty,
    Bytes(Bytes),
    Generated(Generator),
}

struct Entry {
    name: String,
    mode: u32,
    dir: bool,
    size: u64,
    source: Source,
}

impl Entry {
    fn file(name: &str, mode: u32, source: Source) -> Self {
        let size = match &source {
            Source::Bytes(b) => b.len() as u64,
            _ => 0,
        };
        Entry { name: name.into(), mode, dir: false, size, source }
    }
}

/// A ustar archive of `entries`, generated chunk by chunk.
fn tar_stream(entries: Vec<Entry>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    struct State {
        entries: std::vec::IntoIter<Entry>,
        current: Option<(Entry, u64)>,
        done: bool,
    }
    let state = State { entries: entries.into_iter(), current: None, done: false };
    stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            if let Some((entry, written)) = &mut s.current {
                let left = entry.size - *written;
                if left == 0 {
                    let pad = (512 - (entry.size % 512) as usize) % 512;
                    s.current = None;
                    if pad > 0 {
                        return Some((Ok(Bytes::from(vec![0u8; pad])), s));
                    }
                    continue;
                }
                let n = left.min(CHUNK as u64) as usize;
                let chunk = match &mut entry.source {
                    Source::Empty => unreachable!("empty entries have size 0"),
                    Source::Bytes(b) => b.split_to(n),
                    Source::Generated(g) => g.next_chunk(n),
                };
                *written += n as u64;
                return Some((Ok(chunk), s));
            }
            match s.entries.next() {
                Some(entry) => {
                    let header = header(&entry);
                    s.current = Some((entry, 0));
                    return Some((Ok(header), s));
                }
                None => {
                    s.done = true;
                    // Two zero blocks end the archive.
                    return Some((Ok(Bytes::from(vec![0u8; 1024])), s));
                }
            }
        }
    })
}

/// A ustar header block (names under 100 bytes, as [`ImageRecipe::check`] ensures).
fn header(entry: &Entry) -> Bytes {
    let mut h = [0u8; 512];
    let name = entry.name.as_bytes();
    assert!(name.len() < 100, "tar entry names are checked to be short");
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], entry.mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], entry.size);
    octal(&mut h[136..148], MTIME);
    h[156] = if entry.dir { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    Bytes::copy_from_slice(&h)
}

/// Zero-padded octal digits with a terminating NUL, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert!(text.len() == digits, "{value} does not fit {digits} octal digits");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

/// Deterministic filler bytes: splitmix64 for [`Content::Random`], numbered lines for
/// [`Content::Text`].
struct Generator {
    content: Content,
    state: u64,
    seed: u64,
    /// Bytes made but not yet handed out (the tail of a word or line).
    pending: Vec<u8>,
    line: u64,
}

impl Generator {
    fn new(content: Content, seed: u64) -> Self {
        Generator { content, state: seed, seed, pending: Vec::new(), line: 0 }
    }

    fn next_chunk(&mut self, n: usize) -> Bytes {
        let mut out = BytesMut::with_capacity(n + 64);
        out.put_slice(&self.pending);
        self.pending.clear();
        while out.len() < n {
            match self.content {
                Content::Random => {
                    self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = self.state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    out.put_u64_le(z ^ (z >> 31));
                }
                Content::Text => {
                    out.put_slice(
                        format!(
                            "zeppelin filler {} line {:010}: the quick brown fox\n",
                            self.seed, self.line
                        )
                        .as_bytes(),
                    );
                    self.line += 1;
                }
            }
        }
        let mut out = out.freeze();
        let tail = out.split_off(n);
        self.pending.extend_from_slice(&tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(entries: Vec<Entry>) -> Vec<u8> {
        let mut all = Vec::new();
        let mut s = Box::pin(tar_stream(entries));
        while let Some(chunk) = s.next().await {
            all.extend_from_slice(&chunk.unwrap());
        }
        all
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn the_tar_is_well_formed() {
        let entries = vec![
            Entry::file("a", 0o644, Source::Bytes(Bytes::from_static(b"hello"))),
            Entry { name: "d/".into(), mode: 0o755, dir: true, size: 0, source: Source::Empty },
            Entry {
                name: "big".into(),
                mode: 0o644,
                dir: false,
                size: 200_000,
                source: Source::Generated(Generator::new(Content::Random, 1)),
            },
        ];
        let tar = block_on(collect(entries));
        // header + 1 block, header, header + ceil(200000/512) blocks, 2 end blocks
        assert_eq!(tar.len(), 512 * (2 + 1 + 1 + 200_000usize.div_ceil(512) + 2));
        assert_eq!(&tar[..1], b"a");
        assert_eq!(&tar[257..263], b"ustar\0");
        assert_eq!(&tar[512..517], b"hello");
        // The checksum field holds the sum of the header with the field as spaces.
        let mut h = tar[..512].to_vec();
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        h[148..156].fill(b' ');
        assert_eq!(stored, h.iter().map(|&b| b as u64).sum::<u64>());
        assert_eq!(tar[1024 + 156], b'5');
    }

    #[test]
    fn generated_content_is_deterministic_whatever_the_chunking() {
        for content in [Content::Random, Content::Text] {
            let mut a = Generator::new(content, 42);
            let mut b = Generator::new(content, 42);
            let whole = a.next_chunk(10_000);
            let mut pieces = Vec::new();
            for n in [1, 7, 999, 3000, 5993] {
                pieces.extend_from_slice(&b.next_chunk(n));
            }
            assert_eq!(whole.as_ref(), pieces.as_slice());
            assert_ne!(whole, Generator::new(content, 43).next_chunk(10_000));
        }
    }

    #[test]
    fn the_dockerfile_has_one_step_per_layer() {
        let r = ImageRecipe::httpd(8080, "hi").with_filler(10, Content::Text, 1);
        assert_eq!(
            r.dockerfile(),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             COPY filler0 /data/filler0.bin\nCOPY files/ /\n\
             CMD [\"httpd\",\"-f\",\"-v\",\"-p\",\"8080\",\"-h\",\"/www\"]\n"
        );
        assert!(ImageRecipe::busybox(&[]).check().is_err());
        let mut spaced = ImageRecipe::busybox(&["true"]);
        spaced.files.push(("/a b".into(), vec![]));
        assert!(spaced.check().unwrap_err().to_string().starts_with("image recipe: files: "));
        assert!(r.check().is_ok());
    }
}
