//! Plain data the core reasons about. Conversions to and from chain types live in `chain/`.
use std::fmt;

use serde::{Deserialize, Serialize};

/// An Ethereum account address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Address(pub [u8; 20]);

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// An agreement's id in the dispatcher.
pub type AgreementId = u64;

/// An amount of wei. 128 bits hold 3.4e20 ETH, more than there is.
pub type Wei = u128;

/// An architecture a worker can advertise, with its code in the contract's
/// `Capabilities.arch`: amd64 (1); arm64 (2): Raspberry Pi 3, 4, 5, Zero 2 W on a 64-bit OS;
/// armhf (3): ARMv7 hard-float, Raspberry Pi 2 and 32-bit OS images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    Amd64,
    Arm64,
    Armhf,
}

impl Arch {
    /// Debian's names, as the config file spells them.
    pub const NAMES: [&'static str; 3] = ["amd64", "arm64", "armhf"];

    /// The architecture of a Debian name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "amd64" => Some(Arch::Amd64),
            "arm64" => Some(Arch::Arm64),
            "armhf" => Some(Arch::Armhf),
            _ => None,
        }
    }

    /// The architecture this binary was built for, if it is one the market knows.
    pub fn of_this_build() -> Option<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            "arm" => Some(Arch::Armhf),
            _ => None,
        }
    }

    /// The code in `WorkerDispatcher.Capabilities.arch`.
    pub fn code(self) -> u8 {
        match self {
            Arch::Amd64 => 1,
            Arch::Arm64 => 2,
            Arch::Armhf => 3,
        }
    }

    /// The architecture of a contract code, if it is one we know.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Arch::Amd64),
            2 => Some(Arch::Arm64),
            3 => Some(Arch::Armhf),
            _ => None,
        }
    }

    /// Debian's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Armhf => "armhf",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a worker offers on chain: its registration's capabilities and price.
/// Equal terms mean nothing to update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub arch: Arch,
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub price_per_second: Wei,
    pub max_duration_secs: u32,
    pub slots: u8,
    /// X25519 public key for the private channel.
    pub encryption_key: [u8; 32],
}
