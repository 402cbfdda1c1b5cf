//! `zeppelin nat check`: ask the router what works, protocol by protocol, with timings; or
//! (`--hold`) run the same service the daemon runs and print what it does until Ctrl-C.
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::service::{NatEvent, NatService, ServiceConfig, find_route, mappers};
use super::{External, Method, NatStatus, PortMapper, Transport, classify_external, not_public_explanation};

/// What to check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Local ports to map (at least one).
    pub ports: Vec<u16>,
    pub transport: Transport,
    pub lease: Duration,
    pub refresh: Duration,
    /// The protocols to try, in order.
    pub methods: Vec<Method>,
    /// Keep the mappings and renew them until interrupted (or `duration`).
    pub hold: bool,
    pub duration: Option<Duration>,
    /// JSON lines instead of text.
    pub json: bool,
}

/// One protocol's result.
#[derive(Clone, Debug, Serialize)]
pub struct MethodResult {
    pub method: Method,
    pub ok: bool,
    /// The external address and port of the test mapping.
    pub external: Option<String>,
    pub lease_secs: Option<u64>,
    /// From the start of the check of this protocol to its answer to the probe.
    pub answer_ms: Option<u64>,
    /// From the start of the check of this protocol to a working mapping.
    pub mapped_ms: Option<u64>,
    pub removed: bool,
    pub error: Option<String>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the check; an error when no protocol works (its message says why).
pub async fn run(options: CheckOptions) -> anyhow::Result<()> {
    anyhow::ensure!(!options.ports.is_empty(), "--port: give at least one port to map");
    if options.hold {
        return hold(options).await;
    }
    let route = find_route().map_err(|e| anyhow::anyhow!("not reachable: {e}"))?;
    if !options.json {
        println!("gateway {} (local address {})", route.gateway, route.local);
    }
    let port = options.ports[0];
    let mut results = Vec::new();
    for mapper in mappers(route, &options.methods) {
        let start = Instant::now();
        let mut r = MethodResult {
            method: mapper.method(),
            ok: false,
            external: None,
            lease_secs: None,
            answer_ms: None,
            mapped_ms: None,
            removed: false,
            error: None,
        };
        match mapper.probe().await {
            Err(e) => r.error = Some(e.to_string()),
            Ok(_) => {
                r.answer_ms = Some(ms(start.elapsed()));
                match mapper.map(options.transport, port, port, Some(options.lease)).await {
                    Err(e) => r.error = Some(e.to_string()),
                    Ok(g) => {
                        r.mapped_ms = Some(ms(start.elapsed()));
                        r.ok = true;
                        r.external = Some(g.external.to_string());
                        r.lease_secs = g.lifetime.map(|l| l.as_secs());
                        match mapper.unmap(options.transport, port, g.external.port()).await {
                            Ok(()) => r.removed = true,
                            Err(e) => r.error = Some(format!("mapped, but removing it failed: {e}")),
                        }
                    }
                }
            }
        }
        if options.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print_result(&r, options.transport, port);
        }
        results.push(r);
    }
    let Some(best) = results.iter().find(|r| r.ok) else {
        let reasons: Vec<String> = results
            .iter()
            .map(|r| format!("{}: {}", r.method, r.error.as_deref().unwrap_or("failed")))
            .collect();
        anyhow::bail!(
            "not reachable: no gateway answered UPnP IGD, PCP or NAT-PMP (default gateway {}; {}). Enable UPnP \
             or NAT-PMP/PCP on the router, or forward the ports there by hand and set [nat] mode = \"manual\"",
            route.gateway,
            reasons.join("; ")
        );
    };
    let external = best.external.as_deref().unwrap_or_default();
    let ip = external.split(':').next().and_then(|ip| ip.parse().ok());
    if let Some(ip) = ip
        && let External::NotPublic(kind) = classify_external(ip)
    {
        anyhow::bail!("{}", not_public_explanation(ip, kind));
    }
    if !options.json {
        println!("reachable: the daemon would use {} (external address {external})", best.method);
    }
    Ok(())
}

fn print_result(r: &MethodResult, transport: Transport, port: u16) {
    let name = format!("{:<9}", r.method.name());
    if r.ok {
        let lease = r.lease_secs.map_or_else(|| "permanent".to_owned(), |s| format!("{s}s"));
        println!(
            "{name} ok   {transport} {port} -> {} (lease {lease}); answered in {} ms, mapped in {} ms{}",
            r.external.as_deref().unwrap_or("?"),
            r.answer_ms.unwrap_or(0),
            r.mapped_ms.unwrap_or(0),
            if r.removed { ", removed" } else { "" }
        );
        if let Some(e) = &r.error {
            println!("{:<9}      {e}", "");
        }
    } else {
        println!("{name} no   {}", r.error.as_deref().unwrap_or("failed"));
    }
}

async fn hold(options: CheckOptions) -> anyhow::Result<()> {
    let config = ServiceConfig {
        mode: "check".into(),
        methods: options.methods.clone(),
        lease: options.lease,
        refresh: options.refresh,
        manual: None,
    };
    let (service, handle, commands) = NatService::for_host(config);
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let service = service.with_events(events_tx);
    for port in &options.ports {
        handle.want(options.transport, *port, format!("check {port}"));
    }
    let cancel = CancellationToken::new();
    let task = tokio::spawn(service.run(commands, cancel.clone()));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let stop = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some(event) = events.recv() => print_event(&event, options.json)?,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = &mut stop => break,
        }
    }
    let before = handle.status();
    cancel.cancel();
    task.await.context("the NAT task failed")?;
    while let Ok(event) = events.try_recv() {
        print_event(&event, options.json)?;
    }
    print_status(&before, options.json)?;
    Ok(())
}

fn print_event(event: &NatEvent, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(event)?);
        return Ok(());
    }
    let t = |at_ms: &u64| format!("{:>8.3}s", *at_ms as f64 / 1000.0);
    let lease = |l: &Option<u64>| l.map_or_else(|| "permanent".to_owned(), |s| format!("{s}s"));
    match event {
        NatEvent::Chosen { method, gateway, external_ip, at_ms } => println!(
            "{} using {method} on {gateway}{}",
            t(at_ms),
            external_ip.as_ref().map(|ip| format!(", external address {ip}")).unwrap_or_default()
        ),
        NatEvent::NoGateway { explanation, at_ms } => println!("{} {explanation}", t(at_ms)),
        NatEvent::Mapped { transport, internal_port, external, method, lease_secs, at_ms, took_ms } => {
            println!(
                "{} mapped {transport} {internal_port} -> {external} via {method} (lease {}) in {took_ms} ms",
                t(at_ms),
                lease(lease_secs)
            )
        }
        NatEvent::Renewed {
            transport,
            internal_port,
            external,
            lease_secs,
            at_ms,
            margin_ms,
            renewals,
            ..
        } => println!(
            "{} renewed {transport} {internal_port} -> {external} (lease {}), #{renewals}, {}",
            t(at_ms),
            lease(lease_secs),
            match margin_ms {
                Some(m) if *m >= 0 => format!("{:.3} s before expiry", *m as f64 / 1000.0),
                Some(m) => format!("LATE by {:.3} s", -*m as f64 / 1000.0),
                None => "permanent lease".into(),
            }
        ),
        NatEvent::Failed { transport, internal_port, method, error, at_ms } => {
            println!("{} {method} request for {transport} {internal_port} failed: {error}", t(at_ms))
        }
        NatEvent::Dropped { method, at_ms } => {
            println!("{} {method} stopped answering; looking again", t(at_ms))
        }
        NatEvent::Removed { transport, internal_port, method, ok, at_ms } => println!(
            "{} {} {transport} {internal_port} on the router ({method})",
            t(at_ms),
            if *ok { "removed" } else { "could not remove" }
        ),
    }
    Ok(())
}

fn print_status(status: &NatStatus, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::json!({ "event": "status", "status": status }));
    } else {
        println!(
            "renewals {}, failures {}; last state: {}",
            status.renewals, status.failures, status.explanation
        );
    }
    Ok(())
}
