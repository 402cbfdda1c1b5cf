//! `zeppelin status` for people: aligned `label  value` lines, amounts in ETH, times relative
//! to the report's own `now` (so the output is a pure function of the report).
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::status::{HealthStatus, RegistrationState, StatusReport, TermsStatus};

const WEI_PER_ETH: u128 = 1_000_000_000_000_000_000;
const WEI_PER_MICRO_ETH: u128 = 1_000_000_000_000;

/// The human `zeppelin status` output.
pub fn render_human(r: &StatusReport) -> String {
    let mut out = format!("zeppelin {}\n\n", r.version);
    let mut line = |label: &str, value: &str| {
        let text = format!("{label:<13} {value}");
        writeln!(out, "{}", text.trim_end()).unwrap()
    };

    match r.health.status {
        HealthStatus::Ok => line("health", "ok"),
        HealthStatus::Degraded => line("health", &format!("degraded: {}", r.health.reasons.join("; "))),
    }
    line("address", &r.address);
    line("uptime", &humantime::format_duration(Duration::from_secs(r.uptime_secs)).to_string());
    line("state dir", &r.state_dir);
    line("", "");

    let registration = match r.registration.state {
        RegistrationState::Leaving { unbond_at } if unbond_at <= r.now => {
            format!("leaving, stake withdrawable (unbonded {})", when(r.now, unbond_at))
        }
        RegistrationState::Leaving { unbond_at } => {
            format!("leaving, stake withdrawable {}", when(r.now, unbond_at))
        }
        state => state.name().to_owned(),
    };
    line("registration", &registration);
    if let Some(terms) = &r.registration.terms {
        line("terms", &terms_line(terms));
        let per_hour = terms.price_per_second_wei.saturating_mul(3600);
        line("price", &format!("{} wei/s ({}/hour)", terms.price_per_second_wei, format_eth(per_hour)));
    }
    line("stake", &format_eth(r.registration.stake_wei));
    line("balance", &format_eth(r.balance_wei));
    line("credits", &format!("{} withdrawable", format_eth(r.credits_wei)));
    line("", "");

    let c = &r.chain;
    let connected = if c.connected { "connected" } else { "NOT connected" };
    line("chain", &format!("{connected}, chain id {}, {}", c.chain_id, c.rpc_url));
    let blocks = match (c.head_block, c.lag_blocks) {
        (Some(head), Some(lag)) => {
            format!("head {head}, processed {}, lag {lag} block{}", c.processed_block, plural(lag))
        }
        _ => format!("head unknown, processed {}", c.processed_block),
    };
    line("blocks", &blocks);
    line("last sync", &c.last_sync.map_or_else(|| "never".to_owned(), |at| when(r.now, at)));
    line("", "");

    if let Some(nat) = &r.nat {
        for (i, text) in nat_lines(nat, r.now).iter().enumerate() {
            line(if i == 0 { "nat" } else { "" }, text);
        }
        line("", "");
    }

    let in_flight = if r.transactions_in_flight.is_empty() {
        "none".to_owned()
    } else {
        r.transactions_in_flight.join(", ")
    };
    line("in flight", &in_flight);
    let last_error = r.last_error.as_ref().map_or_else(
        || "none".to_owned(),
        |e| format!("{} ({})", e.message.replace('\n', " "), when(r.now, e.at)),
    );
    line("last error", &last_error);

    if r.agreements.is_empty() {
        line("agreements", "none");
    } else {
        line("agreements", &r.agreements.len().to_string());
        out.push_str(&agreements_table(r));
    }
    out
}

/// The NAT section: the verdict, then one line per mapping.
fn nat_lines(nat: &crate::nat::NatStatus, now: u64) -> Vec<String> {
    let mut lines = vec![nat.explanation.clone()];
    for m in &nat.mappings {
        let mut text = format!("{} {} ({}) ", m.transport, m.internal_port, m.label);
        match &m.external {
            Some(external) => {
                write!(text, "-> {external}, {}", m.state).unwrap();
                match (m.lease_secs, m.expires_at) {
                    (Some(lease), Some(at)) => write!(
                        text,
                        ", lease {}, expires {}",
                        humantime::format_duration(Duration::from_secs(lease)),
                        if at > now {
                            format!("in {}", humantime::format_duration(Duration::from_secs(at - now)))
                        } else {
                            "now".into()
                        }
                    )
                    .unwrap(),
                    _ if m.state == "mapped" => text.push_str(", permanent lease"),
                    _ => {}
                }
                if m.renewals > 0 {
                    write!(text, ", {} renewal{}", m.renewals, plural(m.renewals)).unwrap();
                }
            }
            None => text.push_str(&m.state),
        }
        if let Some(e) = &m.last_error {
            write!(text, "; last error: {e}").unwrap();
        }
        lines.push(text);
    }
    if nat.renewals + nat.failures > 0 {
        lines.push(format!("{} renewals, {} failed requests since start", nat.renewals, nat.failures));
    }
    lines
}

fn agreements_table(r: &StatusReport) -> String {
    let header = ["ID", "ROLE", "STAGE", "CLIENT", "WORKER", "WORK"];
    let rows: Vec<[String; 6]> = r
        .agreements
        .iter()
        .map(|a| {
            [
                a.id.to_string(),
                a.role.name().into(),
                a.stage.name().into(),
                a.client.clone(),
                a.worker.clone(),
                a.work.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let mut text = String::from(" ");
        for (cell, w) in row.iter().zip(widths) {
            write!(text, " {cell:<w$} ").unwrap();
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn terms_line(t: &TermsStatus) -> String {
    let cpus = trim_decimals(format!("{}.{:03}", t.cpu_millis / 1000, t.cpu_millis % 1000));
    format!(
        "{}, {cpus} CPU{}, {} MiB memory, {} MiB disk, {} slot{}",
        t.arch,
        if t.cpu_millis == 1000 { "" } else { "s" },
        t.memory_mib,
        t.disk_mib,
        t.slots,
        plural(t.slots.into())
    )
}

/// An amount in ETH with up to 6 decimals, rounded down: `1.5 ETH`, `0.000001 ETH`,
/// `< 0.000001 ETH` for dust.
pub fn format_eth(wei: u128) -> String {
    let whole = wei / WEI_PER_ETH;
    let micro = wei % WEI_PER_ETH / WEI_PER_MICRO_ETH;
    if wei != 0 && whole == 0 && micro == 0 {
        return "< 0.000001 ETH".into();
    }
    format!("{} ETH", trim_decimals(format!("{whole}.{micro:06}")))
}

fn trim_decimals(number: String) -> String {
    number.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `5m ago, 2026-03-01T12:00:00Z` or `in 1h 30m, ...`, relative to `now`.
fn when(now: u64, at: u64) -> String {
    let date = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(at));
    let relative = if at <= now {
        format!("{} ago", humantime::format_duration(Duration::from_secs(now - at)))
    } else {
        format!("in {}", humantime::format_duration(Duration::from_secs(at - now)))
    };
    format!("{relative}, {date}")
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eth_has_up_to_six_decimals_rounded_down() {
        assert_eq!(format_eth(0), "0 ETH");
        assert_eq!(format_eth(WEI_PER_ETH), "1 ETH");
        assert_eq!(format_eth(1_500_000_000_000_000_000), "1.5 ETH");
        assert_eq!(format_eth(1_234_567_890_000_000_000), "1.234567 ETH");
        assert_eq!(format_eth(WEI_PER_MICRO_ETH), "0.000001 ETH");
        assert_eq!(format_eth(1), "< 0.000001 ETH");
        assert_eq!(format_eth(u128::MAX), "340282366920938463463.374607 ETH");
    }

    #[test]
    fn the_nat_section_shows_the_verdict_and_each_mapping() {
        use crate::nat::{MappingStatus, NatStatus, Transport};
        let nat = NatStatus {
            mode: "auto".into(),
            method: Some("PCP".into()),
            reachable: true,
            explanation: "reachable: ports mapped through PCP on 192.168.1.1, external address 198.20.1.1"
                .into(),
            mappings: vec![
                MappingStatus {
                    label: "transfer".into(),
                    transport: Transport::Tcp,
                    internal_port: 7070,
                    external: Some("198.20.1.1:7070".into()),
                    state: "mapped".into(),
                    lease_secs: Some(3600),
                    expires_at: Some(1_000_001_800),
                    renewals: 2,
                    late_renewals: 0,
                    last_error: None,
                },
                MappingStatus {
                    label: "agreement 3".into(),
                    transport: Transport::Tcp,
                    internal_port: 32768,
                    external: None,
                    state: "failing".into(),
                    lease_secs: None,
                    expires_at: None,
                    renewals: 0,
                    late_renewals: 0,
                    last_error: Some("refused: PCP: Server responded with code: Not authorized".into()),
                },
            ],
            renewals: 2,
            failures: 1,
            ..NatStatus::default()
        };
        assert_eq!(
            nat_lines(&nat, 1_000_000_000),
            [
                "reachable: ports mapped through PCP on 192.168.1.1, external address 198.20.1.1",
                "tcp 7070 (transfer) -> 198.20.1.1:7070, mapped, lease 1h, expires in 30m, 2 renewals",
                "tcp 32768 (agreement 3) failing; last error: refused: PCP: Server responded with code: Not authorized",
                "2 renewals, 1 failed requests since start",
            ]
        );
    }

    #[test]
    fn relative_times() {
        assert_eq!(when(1_000_000_300, 1_000_000_000), "5m ago, 2001-09-09T01:46:40Z");
        assert_eq!(when(1_000_000_000, 1_000_005_400), "in 1h 30m, 2001-09-09T03:16:40Z");
    }
}
