//! The client's commands: buy time on a worker and push an image there (`zeppelin client buy`),
//! and follow (`status`, `list`) or cancel what was bought.
//!
//! The client is stateless: everything it shows is read back from the chain (its agreements
//! are the `AgreementCreated` logs naming it; the worker's endpoint is in a letter sealed to its
//! key). Its only files are its key and a cache of exported image archives.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use anyhow::{Context, bail};

use crate::chain::decode;
use crate::chain::market::{Bought, Market, STATES, Wants};
use crate::core::types::{Address, AgreementId};
use crate::core::work::Probe;
use crate::identity::Identity;
use crate::letters::{self, Body, Context as LetterContext, Hello, Offer};
use crate::runtime::DockerRuntime;
use crate::transfer::archive::{self, ImageArchive};
use crate::transfer::push::{PushAuth, push};

/// What `zeppelin client buy` asks for.
#[derive(Clone, Debug)]
pub struct BuyOrder {
    /// A local image: a name, `name:tag`, or an image ID.
    pub image: String,
    pub wants: Wants,
    /// The port the work listens on inside its container.
    pub port: u16,
    pub probe: Probe,
    /// How long to wait for the worker's acceptance and for the work to be ready.
    pub wait: Duration,
}

/// Where the bought work ended up.
#[derive(Clone, Debug)]
pub struct Deployed {
    pub id: AgreementId,
    pub worker: Address,
    pub endpoint: String,
    pub bought_in_block: u64,
    pub ready_in_block: Option<u64>,
}

/// Progress, for a person watching.
fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// Exports `image` from the local engine into the cache (once per image ID) and indexes it.
pub async fn prepare_image(
    docker: &DockerRuntime,
    image: &str,
    cache: &Path,
) -> anyhow::Result<ImageArchive> {
    let engine = docker.client().await?;
    let id = match engine.inspect_image(image).await {
        Ok(found) => found.id.with_context(|| format!("the engine reports no ID for image {image:?}"))?,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
            bail!("no image {image:?} in the local Docker engine (build or load it first)")
        }
        Err(e) => {
            return Err(e).with_context(|| format!("looking up image {image:?} in the local Docker engine"));
        }
    };
    let dir = cache.join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.tar", id.trim_start_matches("sha256:")));
    if !path.exists() {
        let partial = path.with_extension("tar.partial");
        export(docker, &id, &partial).await.with_context(|| format!("exporting {image} ({id})"))?;
        std::fs::rename(&partial, &path).with_context(|| format!("renaming {}", partial.display()))?;
    }
    let indexed = tokio::task::spawn_blocking({
        let path = path.clone();
        move || archive::index(&path)
    })
    .await??;
    anyhow::ensure!(indexed.image == id, "the exported archive is of {}, not of {id}", indexed.image);
    Ok(indexed)
}

/// Streams `docker save` of `image` into the file `path`.
async fn export(docker: &DockerRuntime, image: &str, path: &Path) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut file =
        tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?;
    let mut chunks = std::pin::pin!(docker.save_image(image).await?);
    while let Some(chunk) = chunks.next().await {
        file.write_all(&chunk?).await.with_context(|| format!("writing {}", path.display()))?;
    }
    file.flush().await?;
    Ok(())
}

/// Buys, sends the hello, waits for the offer, pushes, waits for the work to be ready.
pub async fn buy(
    market: &Market,
    identity: &Identity,
    docker: &DockerRuntime,
    cache: &Path,
    order: &BuyOrder,
) -> anyhow::Result<Deployed> {
    let image = prepare_image(docker, &order.image, cache).await?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    say(format!(
        "image {} = {} ({} layers, {:.1} MiB)",
        order.image,
        image.image,
        image.layers.len(),
        mib(image.total_bytes())
    ));
    let mut wants = order.wants;
    // The worker refuses an archive over the agreement's disk size: ask for at least that.
    let needed_mib = u32::try_from(image.total_bytes().div_ceil(1 << 20)).unwrap_or(u32::MAX);
    wants.disk_mib = wants.disk_mib.max(needed_mib);
    let choice = market.choose_class(&wants).await?;
    say(format!(
        "worker class {:#x}: {} worker(s) with free slots, at most {} wei/s",
        choice.class, choice.pool, choice.ceiling
    ));
    let image_digest =
        crate::transfer::parse_digest(&image.image).context("the image ID is not a sha256 digest")?;
    let bought = market.buy(&wants, choice, image_digest, letters::probe_hash(&order.probe)).await?;
    say(format!(
        "agreement {} bought in block {}: worker {}, {} wei in escrow",
        bought.id, bought.block, bought.worker, bought.escrow
    ));
    let ctx = LetterContext {
        chain_id: market.deployment.chain_id,
        dispatcher: decode::address(market.deployment.dispatcher),
        agreement: bought.id,
        from: market.me(),
        to: bought.worker,
    };
    let hello = Hello {
        client_key: alloy::hex::encode(identity.encryption_public_key()),
        container_port: order.port,
        probe: order.probe.clone(),
    };
    let worker_key = market.worker_key(bought.worker).await?;
    market
        .send_message(bought.id, bought.worker, letters::seal(&ctx, Body::Hello(hello), &worker_key)?)
        .await?;
    say("sent the worker our key and probe (sealed to its key); waiting for it to accept");

    let offer = wait_for_offer(market, identity, &bought, order.wait).await?;
    say(format!(
        "the worker accepted; pushing to {} (certificate {}…)",
        offer.transfer,
        &offer.fingerprint[..16]
    ));

    let bar = indicatif::ProgressBar::new(image.total_bytes());
    bar.set_style(
        indicatif::ProgressStyle::with_template("  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("a valid template"),
    );
    let auth = PushAuth {
        chain_id: market.deployment.chain_id,
        dispatcher: ctx.dispatcher,
        agreement: bought.id,
        signer: identity.signer(),
    };
    let report = push(&offer.transfer, &offer.fingerprint, auth, &image, |sent, total| {
        bar.set_length(total);
        bar.set_position(sent);
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    say(format!(
        "pushed in {:.1} s: {} layer(s) sent ({:.1} MiB), {} already on the worker",
        report.elapsed.as_secs_f64(),
        report.layers_sent,
        mib(report.bytes_sent),
        report.layers_reused
    ));
    say("waiting for the worker to start the work and declare it ready");
    let ready_in_block = wait_for_running(market, bought.id, order.wait).await?;
    say(format!("the work is running (declared ready on chain), reachable at {}", offer.work));
    Ok(Deployed {
        id: bought.id,
        worker: bought.worker,
        endpoint: offer.work,
        bought_in_block: bought.block,
        ready_in_block,
    })
}

/// Waits for the worker's offer letter (it comes once the worker has read our hello).
async fn wait_for_offer(
    market: &Market,
    identity: &Identity,
    bought: &Bought,
    wait: Duration,
) -> anyhow::Result<Offer> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(offer) = read_offer(market, identity, bought.id, bought.worker, bought.block).await? {
            return Ok(offer);
        }
        let record = market.agreement(bought.id).await?;
        match STATES.get(record.state as usize).copied().unwrap_or("unknown") {
            "created" | "accepted" | "running" => {}
            "cancelled" => bail!(
                "the worker declined agreement {}: everything was refunded to you (minus nothing; its stake paid the penalty)",
                bought.id
            ),
            other => bail!("agreement {} is {other}: nothing to push", bought.id),
        }
        if Instant::now() >= deadline {
            bail!(
                "the worker did not answer within {} s; once its accept window has passed, \
                 `zeppelin client cancel {}` returns everything to you",
                wait.as_secs(),
                bought.id
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The worker's offer in agreement `id`, if it has sent one.
pub async fn read_offer(
    market: &Market,
    identity: &Identity,
    id: AgreementId,
    worker: Address,
    from_block: u64,
) -> anyhow::Result<Option<Offer>> {
    for (from, ciphertext) in market.letters_to_me(id, from_block).await? {
        if from != worker {
            continue;
        }
        let ctx = LetterContext {
            chain_id: market.deployment.chain_id,
            dispatcher: decode::address(market.deployment.dispatcher),
            agreement: id,
            from,
            to: market.me(),
        };
        match letters::open(|c| identity.open(c), &ctx, &ciphertext) {
            Ok(Body::Offer(offer)) => return Ok(Some(offer)),
            Ok(_) => tracing::warn!(agreement = id, "a letter from the worker that is not an offer"),
            Err(e) => tracing::warn!(agreement = id, "a letter from the worker could not be read: {e}"),
        }
    }
    Ok(None)
}

/// Waits until the agreement runs; returns the block it started in, if known.
async fn wait_for_running(market: &Market, id: AgreementId, wait: Duration) -> anyhow::Result<Option<u64>> {
    let deadline = Instant::now() + wait;
    loop {
        let record = market.agreement(id).await?;
        match STATES.get(record.state as usize).copied().unwrap_or("unknown") {
            "running" => return Ok(Some(market.head().await?)),
            "accepted" | "created" => {}
            other => bail!("agreement {id} became {other} before the work was ready"),
        }
        if Instant::now() >= deadline {
            bail!("the work was not declared ready within {} s", wait.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One agreement, as `zeppelin client status` shows it.
pub async fn status(market: &Market, identity: &Identity, id: AgreementId) -> anyhow::Result<String> {
    let r = market.agreement(id).await?;
    let state = STATES.get(r.state as usize).copied().unwrap_or("unknown");
    if state == "none" {
        bail!("there is no agreement {id} on this dispatcher");
    }
    let mut out = format!("agreement {id}: {state}\n");
    out += &format!("  client        {}\n  worker        {}\n", r.client, r.worker);
    out += &format!(
        "  price         {} wei/s, {} epochs, {} verifier(s)\n",
        r.pricePerSecond, r.epochs, r.verifierCount
    );
    if r.startedAt.to::<u64>() > 0 {
        out += &format!(
            "  started at    {} (served epochs {}, failed {})\n",
            r.startedAt, r.servedEpochs, r.failedEpochs
        );
    }
    if decode::address(r.client) == market.me()
        && let Some(offer) = read_offer(market, identity, id, decode::address(r.worker), 0).await?
    {
        out += &format!("  work          {}\n  transfer      {}\n", offer.work, offer.transfer);
    }
    Ok(out)
}

/// Our agreements, one line each.
pub async fn list(market: &Market) -> anyhow::Result<String> {
    let mine = market.my_agreements().await?;
    if mine.is_empty() {
        return Ok(format!("no agreements bought by {}\n", market.me()));
    }
    let mut out = String::from("ID  STATE       WORKER                                      BLOCK\n");
    for (id, block) in mine {
        let r = market.agreement(id).await?;
        let state = STATES.get(r.state as usize).copied().unwrap_or("unknown");
        out += &format!("{id:<3} {state:<11} {:<43} {block}\n", r.worker.to_string());
    }
    Ok(out)
}

/// The client's key: a hex private key in `path`, created (0600) on first use.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<(Identity, bool)> {
    use alloy::signers::local::PrivateKeySigner;
    if path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let signer: PrivateKeySigner = text
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: not a hex private key: {e}", path.display()))?;
        return Ok((Identity::from_signer(signer), false));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let signer = PrivateKeySigner::random();
    let hex = alloy::hex::encode(signer.to_bytes());
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "{hex}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((Identity::from_signer(signer), true))
}

/// `$XDG_CONFIG_HOME/zeppelin/client.key` (or `~/.config/...`).
pub fn default_key_path() -> PathBuf {
    config_home().join("zeppelin").join("client.key")
}

/// `$XDG_CACHE_HOME/zeppelin` (or `~/.cache/zeppelin`).
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("zeppelin")
}

fn config_home() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"))
}

/// Wei from the command line: a plain integer of wei, or with a unit (`gwei`, `eth`).
pub fn parse_wei(text: &str) -> Result<U256, String> {
    let t = text.trim().to_ascii_lowercase();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (t[..i].trim(), t[i..].trim()),
        None => (t.as_str(), "wei"),
    };
    let decimals = match unit {
        "wei" => 0,
        "gwei" => 9,
        "eth" | "ether" => 18,
        other => return Err(format!("{text:?}: unknown unit {other:?} (wei, gwei or eth)")),
    };
    alloy::primitives::utils::parse_units(number, decimals)
        .map(|v| v.get_absolute())
        .map_err(|e| format!("{text:?}: {e}"))
}
