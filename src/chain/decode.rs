//! Chain logs and records -> core types. Pure conversions; the only place the two meet.
use alloy::primitives::{Address as EthAddress, B256, U256};
use alloy::sol_types::SolEventInterface;

use super::bindings::WorkerDispatcher::{self, WorkerDispatcherEvents as Ev};
use crate::core::node::{ChainEvent, ProtocolParams};
use crate::core::types::{Address, Arch, Terms, Wei};
use crate::core::work::Work;

pub fn address(a: EthAddress) -> Address {
    Address(a.0.0)
}

pub fn eth_address(a: Address) -> EthAddress {
    EthAddress::from(a.0)
}

/// Saturates: no amount the contract holds comes near 2^128 wei.
fn wei(v: U256) -> Wei {
    v.try_into().unwrap_or(Wei::MAX)
}

fn secs(v: U256) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

/// The agreement id as the core keeps it (ids are sequential from 1).
fn id(v: U256) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

/// The capabilities of a registration, if its architecture is one we know.
pub fn terms(c: &WorkerDispatcher::Capabilities) -> Option<Terms> {
    Some(Terms {
        arch: Arch::from_code(c.arch)?,
        cpu_millis: c.cpuMillis,
        memory_mib: c.memoryMiB,
        disk_mib: c.diskMiB,
        price_per_second: c.pricePerSecond.to::<u128>(),
        max_duration_secs: c.maxDuration,
        slots: c.slots,
        encryption_key: c.encryptionKey.0,
    })
}

/// The contract's form of our terms.
pub fn capabilities(t: &Terms) -> WorkerDispatcher::Capabilities {
    WorkerDispatcher::Capabilities {
        arch: t.arch.code(),
        cpuMillis: t.cpu_millis,
        memoryMiB: t.memory_mib,
        diskMiB: t.disk_mib,
        pricePerSecond: alloy::primitives::aliases::U80::from(t.price_per_second),
        maxDuration: t.max_duration_secs,
        slots: t.slots,
        encryptionKey: B256::from(t.encryption_key),
    }
}

pub fn params(p: &WorkerDispatcher::Params) -> ProtocolParams {
    ProtocolParams {
        min_stake: p.minStake.to::<u128>(),
        accept_window: p.acceptWindow.into(),
        ready_window: p.readyWindow.into(),
        epoch_length: p.epochLength.into(),
        report_grace: p.reportGrace.into(),
        max_consecutive_failures: p.maxConsecutiveFailures.into(),
    }
}

/// Decodes one dispatcher log into the core's event, if it is one the core follows.
/// Logs of other contracts or shapes are `None` (a hostile log cannot make this panic).
pub fn chain_event(log: &alloy::primitives::Log) -> Option<ChainEvent> {
    let event = Ev::decode_log(log).ok()?.data;
    Some(match event {
        Ev::WorkerRegistered(e) => ChainEvent::WorkerRegistered {
            worker: address(e.worker),
            stake: wei(e.stake),
            terms: terms(&e.caps)?,
        },
        Ev::WorkerUpdated(e) => {
            ChainEvent::WorkerUpdated { worker: address(e.worker), terms: terms(&e.caps)? }
        }
        Ev::WorkerPaused(e) => ChainEvent::WorkerPaused { worker: address(e.worker) },
        Ev::WorkerResumed(e) => ChainEvent::WorkerResumed { worker: address(e.worker) },
        Ev::StakeAdded(e) => ChainEvent::StakeChanged { worker: address(e.worker), stake: wei(e.stake) },
        Ev::LeaveRequested(e) => {
            ChainEvent::LeaveRequested { worker: address(e.worker), unbond_at: secs(e.unbondAt) }
        }
        Ev::StakeWithdrawn(e) => ChainEvent::StakeWithdrawn { worker: address(e.worker) },
        Ev::AgreementCreated(e) => ChainEvent::AgreementCreated {
            id: id(e.id),
            client: address(e.client),
            worker: address(e.worker),
            price_per_second: wei(e.pricePerSecond),
            duration: secs(e.duration),
            accept_deadline: secs(e.acceptDeadline),
            work: Work {
                cpu_millis: e.requirements.cpuMillis,
                memory_mib: e.requirements.memoryMiB,
                disk_mib: e.requirements.diskMiB,
                image: e.work.imageDigest.0,
                probe: e.work.probeSpecHash.0,
            },
        },
        Ev::MessageSent(e) => ChainEvent::MessageSent {
            id: id(e.id),
            from: address(e.from),
            to: address(e.to),
            ciphertext: e.ciphertext.to_vec(),
        },
        Ev::VerifierAssigned(e) => ChainEvent::VerifierAssigned {
            id: id(e.id),
            verifier: address(e.verifier),
            worker: address(e.worker),
        },
        Ev::AgreementAccepted(e) => {
            ChainEvent::AgreementAccepted { id: id(e.id), ready_deadline: secs(e.readyDeadline) }
        }
        Ev::AgreementCancelled(e) => ChainEvent::AgreementCancelled { id: id(e.id) },
        Ev::AgreementAborted(e) => ChainEvent::AgreementAborted { id: id(e.id) },
        Ev::AgreementStarted(e) => ChainEvent::AgreementStarted {
            id: id(e.id),
            started_at: secs(e.startedAt),
            epochs: secs(e.epochs),
        },
        Ev::AgreementTerminated(e) => {
            ChainEvent::AgreementTerminated { id: id(e.id), end_epoch: secs(e.endEpoch) }
        }
        Ev::PaymentRedeemed(e) => ChainEvent::PaymentRedeemed { id: id(e.id) },
        // Money moved: the follower re-reads our stake and credits after these.
        Ev::Withdrawn(e) => ChainEvent::Withdrawn { amount: wei(e.amount) },
        Ev::VerifierPaid(e) => ChainEvent::VerifierPaid { id: id(e.id) },
        Ev::StakeSlashed(_) => ChainEvent::BalancesMoved,
        Ev::VerificationProvided(e) => ChainEvent::VerificationProvided {
            id: id(e.id),
            verifier: address(e.verifier),
            epoch: secs(e.epoch),
            ok: e.ok,
        },
        // The verifier's copy of `AgreementStarted` (which names only client and worker).
        Ev::VerificationScheduled(e) => ChainEvent::AgreementStarted {
            id: id(e.id),
            started_at: secs(e.startedAt),
            epochs: secs(e.epochs),
        },
    })
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Log, U256, address};
    use alloy::sol_types::SolEvent;

    use super::*;

    fn caps() -> WorkerDispatcher::Capabilities {
        WorkerDispatcher::Capabilities {
            arch: 2,
            cpuMillis: 4000,
            memoryMiB: 3800,
            diskMiB: 20_000,
            pricePerSecond: alloy::primitives::aliases::U80::from(1_000_000_000u64),
            maxDuration: 86_400,
            slots: 2,
            encryptionKey: B256::repeat_byte(9),
        }
    }

    fn log_of<E: SolEvent>(e: &E) -> Log {
        Log { address: address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"), data: e.encode_log_data() }
    }

    #[test]
    fn a_registration_log_becomes_the_core_event_with_its_terms() {
        let worker = address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
        let e = WorkerDispatcher::WorkerRegistered {
            worker,
            workerClass: 7,
            stake: U256::from(10u64).pow(U256::from(18)),
            caps: caps(),
        };
        let got = chain_event(&log_of(&e)).unwrap();
        let want_terms = terms(&caps()).unwrap();
        assert_eq!(want_terms.arch, Arch::Arm64);
        assert_eq!(
            got,
            ChainEvent::WorkerRegistered {
                worker: address(worker),
                stake: 1_000_000_000_000_000_000,
                terms: want_terms
            }
        );
        // And back: the terms round-trip to the contract's struct.
        assert_eq!(capabilities(&want_terms), caps());
    }

    #[test]
    fn an_agreement_log_keeps_its_parties_and_deadline() {
        let e = WorkerDispatcher::AgreementAccepted {
            id: U256::from(12),
            client: EthAddress::repeat_byte(1),
            worker: EthAddress::repeat_byte(2),
            readyDeadline: U256::from(1_700_000_300u64),
        };
        assert_eq!(
            chain_event(&log_of(&e)),
            Some(ChainEvent::AgreementAccepted { id: 12, ready_deadline: 1_700_000_300 })
        );
    }

    #[test]
    fn foreign_and_garbage_logs_are_ignored_not_fatal() {
        let mut log = log_of(&WorkerDispatcher::WorkerPaused { worker: EthAddress::repeat_byte(3) });
        log.data =
            alloy::primitives::LogData::new_unchecked(vec![B256::repeat_byte(0xee)], vec![1, 2, 3].into());
        assert_eq!(chain_event(&log), None);
        let truncated = alloy::primitives::LogData::new_unchecked(
            vec![WorkerDispatcher::WorkerRegistered::SIGNATURE_HASH, B256::ZERO, B256::ZERO],
            vec![0u8; 7].into(),
        );
        assert_eq!(chain_event(&Log { address: log.address, data: truncated }), None);
    }

    #[test]
    fn an_unknown_architecture_code_is_not_taken_for_ours() {
        let mut c = caps();
        c.arch = 42;
        assert_eq!(terms(&c), None);
    }
}
