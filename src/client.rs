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
use crate::chain::market::{
    Bought, Market, MarketError, OUTCOME_FAILED, OUTCOME_SERVED, Reports, STATES, Sent, Settlement, Wants,
};
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

/// The protocol's clock, as the client needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub epoch_length: u64,
    pub report_grace: u64,
    pub max_consecutive_failures: u64,
}

impl Timing {
    pub fn from_params(p: &crate::chain::bindings::WorkerDispatcher::Params) -> Self {
        Timing {
            epoch_length: p.epochLength.into(),
            report_grace: p.reportGrace.into(),
            max_consecutive_failures: p.maxConsecutiveFailures.into(),
        }
    }

    /// When the reporting window of epoch `epoch` closes (for an agreement started at `started`).
    pub fn closes_at(&self, started: u64, epoch: u64) -> u64 {
        started + (epoch + 1) * self.epoch_length + self.report_grace
    }
}

/// An epoch as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not begun yet.
    ToCome,
    /// Being served (verifiers may report already).
    Open,
    /// Over, its reporting window still open, no report so far.
    NotYetReported,
    /// Over, its reporting window still open, with reports (the outcome may still change).
    Reporting,
    Served,
    Failed,
    /// A tie, or nobody reported: neither paid nor slashed.
    Unjudged,
    /// After a termination: refunded.
    Cut,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::ToCome => "to come",
            Verdict::Open => "open",
            Verdict::NotYetReported => "not yet reported",
            Verdict::Reporting => "reporting",
            Verdict::Served => "served",
            Verdict::Failed => "failed",
            Verdict::Unjudged => "unjudged",
            Verdict::Cut => "refunded (terminated)",
        }
    }
}

/// The verdict on `epoch` at chain time `now`, for an agreement started at `started` whose
/// epochs end at `end_epoch` (its length, or where it was terminated).
pub fn verdict(epoch: u64, r: &Reports, started: u64, end_epoch: u64, t: &Timing, now: u64) -> Verdict {
    if epoch >= end_epoch {
        return Verdict::Cut;
    }
    let opens = started + epoch * t.epoch_length;
    if now < opens {
        Verdict::ToCome
    } else if now < opens + t.epoch_length {
        Verdict::Open
    } else if now < t.closes_at(started, epoch) {
        if r.reported == 0 { Verdict::NotYetReported } else { Verdict::Reporting }
    } else {
        match r.outcome {
            OUTCOME_SERVED => Verdict::Served,
            OUTCOME_FAILED => Verdict::Failed,
            _ => Verdict::Unjudged,
        }
    }
}

/// The first epoch of a run of `max_consecutive_failures` failed epochs whose reporting windows
/// have all closed at `now`: what `terminateAgreement` takes.
pub fn failed_run(reports: &[Reports], started: u64, end_epoch: u64, t: &Timing, now: u64) -> Option<u64> {
    let k = t.max_consecutive_failures.max(1);
    let end = end_epoch.min(reports.len() as u64);
    (0..end.saturating_sub(k - 1)).find(|&first| {
        let last = first + k - 1;
        now >= t.closes_at(started, last)
            && (first..=last).all(|e| reports[e as usize].outcome == OUTCOME_FAILED)
    })
}

/// "N of M reported, K ok".
fn report_counts(r: &Reports, verifiers: u8) -> String {
    if r.reported == 0 {
        return "no report".into();
    }
    format!("{} of {verifiers} reported, {} ok", r.reported.count_ones(), r.ok.count_ones())
}

/// An exact amount with a readable figure: "1500000000000000 wei (0.0015 ETH)".
pub fn amount(wei: U256) -> String {
    format!("{wei} wei ({})", crate::api::render::format_eth(wei.saturating_to()))
}

/// A chain timestamp, in UTC.
pub fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `at` relative to `now`: "in 12 s" or "12 s ago".
fn relative(at: u64, now: u64) -> String {
    if at >= now { format!("in {} s", at - now) } else { format!("{} s ago", now - at) }
}

fn state_name(state: u8) -> &'static str {
    STATES.get(state as usize).copied().unwrap_or("unknown")
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One agreement, as `zeppelin client status` shows it: its state, each epoch's verdict, the
/// verifiers, and once settled where the money went.
pub async fn status(market: &Market, identity: &Identity, id: AgreementId) -> anyhow::Result<String> {
    let r = market.agreement(id).await?;
    let state = state_name(r.state);
    if state == "none" {
        bail!("there is no agreement {id} on this dispatcher");
    }
    let p = market.params().await?;
    let t = Timing::from_params(&p);
    let now = market.now().await?;
    let line = |label: &str, value: &str| format!("  {label:<13} {value}\n");
    let mut out = format!("agreement {id}: {state}\n");
    out += &line("client", &r.client.to_string());
    out += &line("worker", &r.worker.to_string());
    out += &line(
        "price",
        &format!(
            "{} wei/s, {} epoch{} of {} s, {} verifier(s)",
            r.pricePerSecond,
            r.epochs,
            plural(r.epochs.into()),
            t.epoch_length,
            r.verifierCount
        ),
    );
    let started: u64 = r.startedAt.to::<u64>();
    let end_epoch: u64 = r.endEpoch.into();
    if started > 0 {
        out += &line(
            "started at",
            &format!("{} (served epochs {}, failed {})", when(started), r.servedEpochs, r.failedEpochs),
        );
        if end_epoch < r.epochs.into() {
            out += &line("terminated", &format!("epochs from {end_epoch} on are refunded"));
        }
        if matches!(state, "running" | "terminated") {
            let settles = t.closes_at(started, end_epoch.saturating_sub(1));
            let who = if now >= settles {
                format!("now (`zeppelin client redeem {id}` if the worker has not)")
            } else {
                relative(settles, now)
            };
            out += &line("settles at", &format!("{}, {who}", when(settles)));
        }
    } else if state == "created" {
        let deadline = r.createdAt.to::<u64>() + u64::from(p.acceptWindow);
        out += &line(
            "accept until",
            &format!(
                "{} ({}; then `zeppelin client cancel {id}` refunds all)",
                when(deadline),
                relative(deadline, now)
            ),
        );
    }
    if decode::address(r.client) == market.me()
        && let Some(offer) = read_offer(market, identity, id, decode::address(r.worker), 0).await?
    {
        out += &line("work", &offer.work);
        out += &line("transfer", &offer.transfer);
    }

    if started > 0 {
        // Reports exist only up to the current epoch: later ones are read as empty, not asked for.
        let current = now.saturating_sub(started) / t.epoch_length.max(1);
        let reports = market.reports_of(id, end_epoch.min(current + 1)).await?;
        out += "  epochs\n";
        let mut rows: Vec<(u64, u64, String)> = Vec::new();
        for e in 0..u64::from(r.epochs) {
            let rep = reports.get(e as usize).copied().unwrap_or_default();
            let v = verdict(e, &rep, started, end_epoch, &t, now);
            let text = match v {
                Verdict::ToCome | Verdict::Cut | Verdict::NotYetReported => v.label().to_owned(),
                _ => format!("{:<17} {}", v.label(), report_counts(&rep, r.verifierCount)),
            };
            match rows.last_mut() {
                Some((_, last, prev)) if *prev == text => *last = e,
                _ => rows.push((e, e, text)),
            }
        }
        for (first, last, text) in rows {
            let span = if first == last { format!("{first}") } else { format!("{first}-{last}") };
            out += &format!("    {span:<11} {text}\n");
        }
    }
    let verifiers = market.verifiers_of(id).await?;
    for (i, (v, reports)) in verifiers.iter().enumerate() {
        let label = if i == 0 { "verifiers" } else { "" };
        out += &line(
            label,
            &format!("{} {reports} on-time report{}", decode::eth_address(*v), plural(*reports)),
        );
    }

    let s = market.settlement(id).await?;
    if let Some((escrow, block)) = s.escrow {
        out += &line("escrowed", &format!("{} by the client (block {block})", amount(escrow)));
    }
    if s.settled() {
        if let Some(red) = &s.redeemed {
            out += &line(
                "settled",
                &format!("in block {} ({} served, {} failed epoch(s))", red.block, red.served, red.failed),
            );
        } else if s.aborted.is_some() {
            out +=
                &line("settled", "aborted: the work was never declared ready; the held slot's cost is split");
        } else {
            out +=
                &line("settled", "cancelled: the worker did not accept; everything back, plus its penalty");
        }
        out += &line("worker earned", &amount(s.worker_earned().unwrap_or_default()));
        for (v, reports, fee) in &s.verifier_fees {
            out += &line(
                "verifier fee",
                &format!(
                    "{} to {} for {reports} report{}",
                    amount(*fee),
                    decode::eth_address(*v),
                    plural(*reports)
                ),
            );
        }
        if !s.slashed.is_zero() {
            out += &line("slashed", &format!("{} from the worker's stake, to the client", amount(s.slashed)));
        }
        out += &line("refunded", &format!("{} to the client", amount(s.client_back().unwrap_or_default())));
        if let Some(held) = s.still_held() {
            out += &line("still held", &amount(held));
        }
    }
    let credits = market.credits(market.me()).await?;
    let hint = if credits.is_zero() { String::new() } else { " (`zeppelin client withdraw`)".into() };
    out += &line(
        "your credits",
        &format!("{} withdrawable by {}{hint}", amount(credits), decode::eth_address(market.me())),
    );
    Ok(out)
}

/// Our agreements, one line each, with what each cost once settled.
pub async fn list(market: &Market) -> anyhow::Result<String> {
    let mine = market.my_agreements().await?;
    if mine.is_empty() {
        return Ok(format!("no agreements bought by {}\n", market.me()));
    }
    let settlements = market.my_settlements().await?;
    let mut out = String::from(
        "ID  STATE       WORKER                                      BLOCK  ESCROWED (wei)         GOT BACK (wei)\n",
    );
    for (id, block) in mine {
        let r = market.agreement(id).await?;
        let state = state_name(r.state);
        let s = settlements.get(&id).cloned().unwrap_or_default();
        let escrow = s.escrow.map(|(e, _)| e.to_string()).unwrap_or_else(|| "-".into());
        let back = s.client_back().map(|b| b.to_string()).unwrap_or_else(|| "-".into());
        out += &format!("{id:<3} {state:<11} {:<43} {block:<6} {escrow:<22} {back}\n", r.worker.to_string());
    }
    let credits = market.credits(market.me()).await?;
    if !credits.is_zero() {
        out += &format!("{} withdrawable: `zeppelin client withdraw`\n", amount(credits));
    }
    Ok(out)
}

/// Whether a client command's error is the contract's custom error `name`.
fn reverted_with(e: &MarketError, name: &str) -> bool {
    matches!(e, MarketError::Reverted { reason, .. } if reason.contains(name))
}

fn sent_line(sent: &Sent) -> String {
    format!("block {}, tx {}, gas fee {} wei", sent.block, sent.tx, sent.fee)
}

/// What a settled agreement's money did, for the client's eyes.
fn settled_line(s: &Settlement) -> String {
    format!(
        "the worker earned {}, the verifiers {}, you got back {}",
        amount(s.worker_earned().unwrap_or_default()),
        amount(s.verifiers_earned()),
        amount(s.client_back().unwrap_or_default())
    )
}

/// `zeppelin client redeem`: settles an agreement whose last reporting window has closed.
/// An agreement already settled is said so (success: there is nothing left to do).
pub async fn redeem(market: &Market, id: AgreementId) -> anyhow::Result<String> {
    let r = market.agreement(id).await?;
    let state = state_name(r.state);
    match state {
        "none" => bail!("there is no agreement {id} on this dispatcher"),
        "finished" | "cancelled" | "aborted" => {
            let s = market.settlement(id).await?;
            return Ok(format!("agreement {id} is already settled ({state}): {}\n", settled_line(&s)));
        }
        "running" | "terminated" => {}
        other => bail!("agreement {id} is {other}: it never started, so there is nothing to redeem"),
    }
    let t = Timing::from_params(&market.params().await?);
    let closes = t.closes_at(r.startedAt.to::<u64>(), u64::from(r.endEpoch).saturating_sub(1));
    let now = market.now().await?;
    if now < closes {
        bail!(
            "agreement {id} is {state}: it settles at {}, in {} s (when the reporting window of its last epoch closes)",
            when(closes),
            closes - now
        );
    }
    match market.redeem(id).await {
        Ok((sent, s)) => Ok(format!("agreement {id} settled ({}): {}\n", sent_line(&sent), settled_line(&s))),
        // Someone (the worker) settled it between our read and our estimate.
        Err(e) if reverted_with(&e, "WrongState") => {
            let s = market.settlement(id).await?;
            Ok(format!("agreement {id} is already settled: {}\n", settled_line(&s)))
        }
        Err(e) => Err(e.into()),
    }
}

/// `zeppelin client terminate`: ends a running agreement after a run of failed epochs.
pub async fn terminate(market: &Market, id: AgreementId) -> anyhow::Result<String> {
    let r = market.agreement(id).await?;
    let state = state_name(r.state);
    let t = Timing::from_params(&market.params().await?);
    let started = r.startedAt.to::<u64>();
    match state {
        "none" => bail!("there is no agreement {id} on this dispatcher"),
        "running" => {}
        "terminated" => {
            let closes = t.closes_at(started, u64::from(r.endEpoch).saturating_sub(1));
            return Ok(format!(
                "agreement {id} is already terminated: epochs from {} on are refunded; it settles at {}\n",
                r.endEpoch,
                when(closes)
            ));
        }
        "finished" => {
            return Ok(format!("agreement {id} is already settled (finished): nothing to terminate\n"));
        }
        other => bail!("agreement {id} is {other}: only a running agreement can be terminated"),
    }
    let end_epoch = u64::from(r.endEpoch);
    let now = market.now().await?;
    let current = now.saturating_sub(started) / t.epoch_length.max(1);
    let reports = market.reports_of(id, end_epoch.min(current + 1)).await?;
    let Some(first) = failed_run(&reports, started, end_epoch, &t, now) else {
        let seen: Vec<String> = reports
            .iter()
            .enumerate()
            .map(|(e, rep)| verdict(e as u64, rep, started, end_epoch, &t, now))
            .take_while(|v| *v != Verdict::ToCome)
            .enumerate()
            .map(|(e, v)| format!("{e} {}", v.label()))
            .collect();
        bail!(
            "agreement {id} cannot be terminated: no {} failed epochs in a row with their reporting windows closed (epochs so far: {})",
            t.max_consecutive_failures,
            if seen.is_empty() { "none".to_owned() } else { seen.join(", ") }
        );
    };
    let last = first + t.max_consecutive_failures - 1;
    match market.terminate(id, first).await {
        Ok((sent, end)) => {
            let closes = t.closes_at(started, end.saturating_sub(1));
            Ok(format!(
                "agreement {id} terminated after failed epochs {first}-{last} ({}): epochs from {end} on are refunded; \
                 it settles at {} (then the worker, or `zeppelin client redeem {id}`, settles it)\n",
                sent_line(&sent),
                when(closes)
            ))
        }
        Err(e) if reverted_with(&e, "WrongState") => {
            Ok(format!("agreement {id} is no longer running (already terminated or settled)\n"))
        }
        Err(e) => Err(e.into()),
    }
}

/// `zeppelin client cancel`: takes back an agreement the worker did not accept in time.
pub async fn cancel(market: &Market, id: AgreementId) -> anyhow::Result<String> {
    let r = market.agreement(id).await?;
    let state = state_name(r.state);
    match state {
        "none" => bail!("there is no agreement {id} on this dispatcher"),
        "created" => {}
        "cancelled" => {
            let s = market.settlement(id).await?;
            return Ok(format!("agreement {id} is already cancelled: {}\n", settled_line(&s)));
        }
        other => {
            bail!("agreement {id} is {other}: only an agreement the worker has not accepted can be cancelled")
        }
    }
    let deadline = r.createdAt.to::<u64>() + u64::from(market.params().await?.acceptWindow);
    let now = market.now().await?;
    if now < deadline {
        bail!(
            "agreement {id} cannot be cancelled yet: the worker may accept until {}, in {} s",
            when(deadline),
            deadline - now
        );
    }
    match market.cancel(id).await {
        Ok((sent, s)) => Ok(format!(
            "agreement {id} cancelled ({}): {} credited to you (the escrow, plus {} from the worker's stake); \
             `zeppelin client withdraw` sends it to you\n",
            sent_line(&sent),
            amount(s.client_back().unwrap_or_default()),
            amount(s.slashed)
        )),
        Err(e) if reverted_with(&e, "WrongState") => Ok(format!(
            "agreement {id} is no longer waiting for the worker (accepted or cancelled meanwhile)\n"
        )),
        Err(e) => Err(e.into()),
    }
}

/// `zeppelin client withdraw`: sends our credits (refunds) to us. Nothing to withdraw is said
/// so, not an error.
pub async fn withdraw(market: &Market) -> anyhow::Result<String> {
    let me = market.me();
    let nothing =
        || format!("nothing to withdraw: {} has no credits on the dispatcher\n", decode::eth_address(me));
    if market.credits(me).await?.is_zero() {
        return Ok(nothing());
    }
    match market.withdraw().await {
        Ok((sent, withdrawn)) => Ok(format!(
            "withdrew {} to {} ({})\n",
            amount(withdrawn),
            decode::eth_address(me),
            sent_line(&sent)
        )),
        Err(e) if reverted_with(&e, "NothingToWithdraw") => Ok(nothing()),
        Err(e) => Err(e.into()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing { epoch_length: 30, report_grace: 15, max_consecutive_failures: 2 };
    const FAILED: Reports = Reports { reported: 1, ok: 0, outcome: OUTCOME_FAILED };
    const SERVED: Reports = Reports { reported: 1, ok: 1, outcome: OUTCOME_SERVED };
    const NONE: Reports = Reports { reported: 0, ok: 0, outcome: 0 };

    #[test]
    fn an_epoch_is_open_then_awaits_reports_then_has_its_outcome() {
        let at = |now| verdict(1, &NONE, 1000, 4, &T, now);
        assert_eq!(at(1029), Verdict::ToCome);
        assert_eq!(at(1030), Verdict::Open);
        assert_eq!(at(1059), Verdict::Open);
        assert_eq!(at(1060), Verdict::NotYetReported);
        assert_eq!(verdict(1, &SERVED, 1000, 4, &T, 1074), Verdict::Reporting);
        assert_eq!(at(1075), Verdict::Unjudged);
        assert_eq!(verdict(1, &SERVED, 1000, 4, &T, 1075), Verdict::Served);
        assert_eq!(verdict(1, &FAILED, 1000, 4, &T, 1075), Verdict::Failed);
        assert_eq!(verdict(3, &NONE, 1000, 3, &T, 1075), Verdict::Cut, "past a termination");
    }

    #[test]
    fn a_failed_run_counts_only_once_every_window_of_it_has_closed() {
        let reports = [SERVED, FAILED, FAILED, NONE];
        // Epoch 2's window closes at 1000 + 3 * 30 + 15.
        assert_eq!(failed_run(&reports, 1000, 4, &T, 1104), None);
        assert_eq!(failed_run(&reports, 1000, 4, &T, 1105), Some(1));
        assert_eq!(failed_run(&[FAILED, SERVED, FAILED, NONE], 1000, 4, &T, 9999), None, "not in a row");
        assert_eq!(failed_run(&[SERVED, FAILED, FAILED], 1000, 2, &T, 9999), None, "past the end");
        let three = Timing { max_consecutive_failures: 3, ..T };
        assert_eq!(failed_run(&reports, 1000, 4, &three, 9999), None);
    }

    #[test]
    fn a_settlement_accounts_for_the_whole_escrow() {
        let worker = Address([7; 20]);
        let mut s = Settlement { escrow: Some((U256::from(1000), 1)), ..Settlement::default() };
        assert!(!s.settled());
        assert_eq!(s.still_held(), None);
        s.redeemed = Some(crate::chain::market::Redeemed {
            worker_pay: U256::from(600),
            client_refund: U256::from(350),
            served: 2,
            failed: 1,
            block: 9,
            tx: Default::default(),
        });
        s.verifier_fees.push((worker, 3, U256::from(100)));
        s.slashed = U256::from(50);
        assert_eq!(s.client_back(), Some(U256::from(350)), "the refund includes the slash");
        assert_eq!(s.still_held(), Some(U256::ZERO));
        let cancelled = Settlement {
            escrow: Some((U256::from(1000), 1)),
            cancelled: Some(U256::from(1000)),
            slashed: U256::from(50),
            ..Settlement::default()
        };
        assert_eq!(cancelled.client_back(), Some(U256::from(1050)));
        assert_eq!(cancelled.still_held(), Some(U256::ZERO));
    }
}
