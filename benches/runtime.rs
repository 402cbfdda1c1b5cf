//! `cargo bench --bench runtime`: figures of the container runtime's image handling against the
//! real Docker engine (the shared one at `/var/run/docker.sock`). It prints figures; it never
//! fails on slowness, only when something it needs is missing.
//!
//! 1. Building a multi-layer test image of about `ZEPPELIN_BENCH_IMAGE_MIB` (default 256) MiB
//!    (busybox plus 4 incompressible filler layers) from a streamed build context, and this
//!    process's peak memory (VmHWM) while doing it: the context is never held whole.
//! 2. A second image sharing that base with a different small top layer: its build time and
//!    how many of its layers [`Runtime::present_prefix`] finds already present.
//! 3. `docker save` of the big image to a file, then removing it and loading it back from the
//!    file through [`Runtime::load_image`] (every layer absent: a cold load), and peak memory.
//!
//! Everything it creates is tagged `zeppelin-rt-bench-<pid>` and removed at the end.
use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use zeppelin::runtime::images::{Content, ImageRecipe, build_image};
use zeppelin::runtime::{DockerRuntime, Runtime};

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn layers(image: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{json .RootFS.Layers}}", image])
        .output()
        .context("docker image inspect")?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn bench(rt: &DockerRuntime, tag_a: &str, tag_b: &str, archive: &std::path::Path) -> Result<()> {
    let total_mib: u64 =
        std::env::var("ZEPPELIN_BENCH_IMAGE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let filler = (total_mib << 20) / 4;
    let seed = std::process::id() as u64;
    let mut recipe = ImageRecipe::httpd(8080, "bench A\n");
    for i in 0..4 {
        recipe = recipe.with_filler(filler, Content::Random, seed * 10 + i);
    }
    println!("image: busybox + 4 x {:.0} MiB incompressible layers", mib(filler));

    let t = Instant::now();
    let a = build_image(rt, tag_a, &recipe).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "build (cold, streamed context of {:.0} MiB): {secs:.1} s, {:.0} MiB/s; peak RSS of this process {:.1} MiB",
        mib(4 * filler),
        mib(4 * filler) / secs,
        vm_hwm_mib()
    );
    println!("layers: {}", layers(&a).await?.len());

    let mut second = recipe.clone();
    second.files[0].1 = b"bench B: a different top layer\n".to_vec();
    let t = Instant::now();
    let b = build_image(rt, tag_b, &second).await?;
    println!(
        "build of a second image, same base, different top layer (build cache; the whole context is still sent): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let b_layers = layers(&b).await?;
    rt.remove_image(tag_b).await?;
    let t = Instant::now();
    let present = rt.present_prefix(&b_layers).await?;
    println!(
        "present_prefix of the second image's {} layers (removed again; the first is there): {present} ({:.0} ms)",
        b_layers.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );

    let t = Instant::now();
    let mut file = std::fs::File::create(archive)?;
    let mut saved = rt.save_image(tag_a).await?;
    let mut size = 0u64;
    while let Some(chunk) = saved.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    drop(file);
    let secs = t.elapsed().as_secs_f64();
    println!("save to a file: {:.0} MiB in {secs:.1} s, {:.0} MiB/s", mib(size), mib(size) / secs);

    let a_layers = layers(&a).await?;
    rt.remove_image(tag_a).await?;
    println!("after removal, present_prefix: {} of {}", rt.present_prefix(&a_layers).await?, a_layers.len());

    let mut file = std::fs::File::open(archive)?;
    let chunks = stream::iter(std::iter::from_fn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok(Bytes::from(buf)))
            }
            Err(e) => Some(Err(e)),
        }
    }));
    let t = Instant::now();
    rt.load_image(chunks).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "load_image, cold, streamed from the file: {secs:.1} s, {:.0} MiB/s; peak RSS of this process {:.1} MiB",
        mib(size) / secs,
        vm_hwm_mib()
    );
    anyhow::ensure!(rt.has_image(&a).await?, "the loaded image is not there");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rt = DockerRuntime::connect(None)?;
    let info = rt.ping().await.context("the benchmark needs a Docker engine (tools/dockerd.sh start)")?;
    println!(
        "engine {} (API {}, cgroup v{}, {}), {} CPUs, {:.1} GiB",
        info.version,
        info.api_version,
        info.cgroup_version,
        info.storage_driver,
        info.cpus,
        mib(info.memory_bytes) / 1024.0
    );
    let pid = std::process::id();
    let (tag_a, tag_b) = (format!("zeppelin-rt-bench-{pid}:a"), format!("zeppelin-rt-bench-{pid}:b"));
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("a.tar");
    let outcome = bench(&rt, &tag_a, &tag_b, &archive).await;
    for tag in [&tag_b, &tag_a] {
        if let Err(e) = rt.remove_image(tag).await {
            eprintln!("clean-up: {e}");
        }
    }
    outcome
}
