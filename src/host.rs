//! What this machine can offer: architecture, CPUs, memory and free disk, measured at start-up
//! and capped by the config. The parsing is pure; `measure` is the thin I/O around it.
use std::path::Path;

use crate::config::WorkerConfig;
use crate::core::types::{Arch, Terms};

/// Memory kept back for the system and the daemon itself: a quarter of the machine, at least
/// 256 MiB, at most 1 GiB (a 1 GiB Pi offers 768 MiB, an 8 GiB one 7 GiB).
fn memory_reserve_mib(total_mib: u64) -> u64 {
    (total_mib / 4).clamp(256, 1024)
}

/// Disk kept free under the state directory (logs, updates, the daemon's database).
const DISK_RESERVE_MIB: u64 = 1024;
/// Free disk is offered in whole GiB: it moves all the time, and every change of the offer is
/// a transaction.
const DISK_STEP_MIB: u64 = 1024;

/// The machine's measured capacity, before the config's caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub arch: Option<Arch>,
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
}

/// Measuring the host failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading /proc/meminfo: {0}")]
    Meminfo(std::io::Error),
    #[error("/proc/meminfo has no MemTotal line")]
    NoMemTotal,
    #[error("measuring free space under {path}: {source}")]
    Disk { path: String, source: std::io::Error },
    #[error("this machine offers nothing: {0} (at least 1 MiB of each is needed)")]
    Nothing(&'static str),
    #[error("cannot tell which architecture to advertise for a {0} build: set worker.arch")]
    UnknownArch(&'static str),
}

/// Debian's name for the architecture this binary was built for (the client's default).
pub const NATIVE_ARCH: &str = if cfg!(target_arch = "aarch64") {
    "arm64"
} else if cfg!(target_arch = "arm") {
    "armhf"
} else {
    "amd64"
};

/// `MemTotal` of `/proc/meminfo`, in MiB.
pub fn parse_meminfo_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Measures this machine. CPUs are what the process may use (affinity and cgroup quota
/// included); memory is the total less a reserve; disk is what is free under `state_dir`
/// less a reserve, in whole GiB.
pub fn measure(state_dir: &Path) -> Result<Capacity, HostError> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(HostError::Meminfo)?;
    let total = parse_meminfo_total_mib(&meminfo).ok_or(HostError::NoMemTotal)?;
    let stat = rustix::fs::statvfs(state_dir)
        .map_err(|e| HostError::Disk { path: state_dir.display().to_string(), source: e.into() })?;
    let free_mib = stat.f_bavail.saturating_mul(stat.f_frsize) / (1024 * 1024);
    Ok(Capacity {
        arch: Arch::of_this_build(),
        cpu_millis: u32::try_from(cpus * 1000).unwrap_or(u32::MAX),
        memory_mib: clamp_u32(total.saturating_sub(memory_reserve_mib(total))),
        disk_mib: clamp_u32(free_mib.saturating_sub(DISK_RESERVE_MIB) / DISK_STEP_MIB * DISK_STEP_MIB),
    })
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The terms to register: the measured capacity capped by the config, with the config's price,
/// longest duration and slots.
pub fn terms(
    capacity: &Capacity,
    worker: &WorkerConfig,
    encryption_key: [u8; 32],
) -> Result<Terms, HostError> {
    let cap = |measured: u32, limit: Option<std::num::NonZeroU32>| {
        limit.map_or(measured, |l| measured.min(l.get()))
    };
    let arch = match (worker.arch, capacity.arch) {
        (Some(arch), _) | (None, Some(arch)) => arch,
        (None, None) => return Err(HostError::UnknownArch(std::env::consts::ARCH)),
    };
    let terms = Terms {
        arch,
        cpu_millis: cap(capacity.cpu_millis, worker.cpu_millis),
        memory_mib: cap(capacity.memory_mib, worker.memory_mib),
        disk_mib: cap(capacity.disk_mib, worker.disk_mib),
        price_per_second: worker.price_per_second.to::<u128>(),
        max_duration_secs: u32::try_from(worker.max_duration.as_secs()).unwrap_or(u32::MAX),
        slots: worker.slots.get(),
        encryption_key,
    };
    for (name, value) in [("cpu", terms.cpu_millis), ("memory", terms.memory_mib), ("disk", terms.disk_mib)] {
        if value == 0 {
            return Err(HostError::Nothing(name));
        }
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const MEMINFO: &str =
        "MemTotal:        3884328 kB\nMemFree:          120000 kB\nMemAvailable:    2000000 kB\n";

    #[test]
    fn memtotal_is_read_in_mib() {
        assert_eq!(parse_meminfo_total_mib(MEMINFO), Some(3793));
        assert_eq!(parse_meminfo_total_mib("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total_mib("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn the_memory_reserve_scales_with_the_machine_within_bounds() {
        assert_eq!(memory_reserve_mib(512), 256);
        assert_eq!(memory_reserve_mib(4096), 1024);
        assert_eq!(memory_reserve_mib(2048), 512);
    }

    fn worker(extra: &str) -> WorkerConfig {
        let text = format!("[worker]\nprice_per_second = \"1 gwei\"\n{extra}");
        Config::from_toml_str(&text, "test.toml").unwrap().worker
    }

    #[test]
    fn the_config_caps_what_is_measured_and_never_raises_it() {
        let capacity =
            Capacity { arch: Some(Arch::Arm64), cpu_millis: 4000, memory_mib: 3000, disk_mib: 50_000 };
        let t = terms(&capacity, &worker("cpus = 1.5\nmemory = \"8 GiB\"\n"), [1; 32]).unwrap();
        assert_eq!((t.cpu_millis, t.memory_mib, t.disk_mib), (1500, 3000, 50_000));
        assert_eq!(t.price_per_second, 1_000_000_000);
        assert_eq!(t.arch, Arch::Arm64);
        let t = terms(&capacity, &worker("arch = \"armhf\"\n"), [1; 32]).unwrap();
        assert_eq!(t.arch, Arch::Armhf);
    }

    #[test]
    fn a_full_disk_is_refused_with_the_reason() {
        let capacity = Capacity { arch: Some(Arch::Amd64), cpu_millis: 1000, memory_mib: 1000, disk_mib: 0 };
        let err = terms(&capacity, &worker(""), [1; 32]).unwrap_err().to_string();
        assert_eq!(err, "this machine offers nothing: disk (at least 1 MiB of each is needed)");
    }

    #[test]
    fn this_machine_measures_something() {
        let c = measure(&std::env::temp_dir()).unwrap();
        assert!(c.cpu_millis >= 1000 && c.memory_mib > 0, "{c:?}");
    }
}
