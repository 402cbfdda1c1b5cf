// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title WorkAgreement
/// @notice One client-worker agreement: its record, its escrow and its arbitration rules.
/// @dev The thesis made each WorkAgreement its own contract. Here it is a record inside
/// `WorkerDispatcher` plus this library of pure arbitration rules, because that is cheaper and
/// no less clear: a per-agreement contract (even an EIP-1167 clone) adds a CREATE and a
/// cross-contract call to every buy, and moving escrow between contracts would split the
/// "balance equals everything owed" invariant in two. Figures are in contracts/README.md
/// (`gas WorkAgreement as a clone` in bench.sh).
library WorkAgreement {
    /// @notice Lifecycle. Created -> Accepted -> Running -> (Terminated) -> Finished, with the
    /// exits Created -> Cancelled (declined, or not accepted in time) and Accepted -> Aborted
    /// (not ready in time).
    enum State {
        None,
        Created,
        Accepted,
        Running,
        Terminated,
        Finished,
        Cancelled,
        Aborted
    }

    /// @notice The stored part of an agreement. The terms only the daemon needs (requirements,
    /// image digest, probe specification hash) travel in `AgreementCreated`; `termsHash` binds
    /// them: keccak256(abi.encode(requirements, imageDigest, probeSpecHash)).
    struct Record {
        // slot 0
        address client;
        State state;
        uint8 verifierCount;
        uint32 epochs;
        uint40 createdAt;
        // slot 1
        address worker;
        uint80 pricePerSecond; // the worker's price: what it earns per served second
        uint16 priceCode; // the class's price code: the escrow holds its ceiling per second
        // slot 2
        bytes32 termsHash;
        // slot 3 (zero at creation, written by accept and ready)
        uint40 acceptedAt;
        uint40 startedAt;
        uint32 endEpoch;
        uint32 servedEpochs;
        uint32 failedEpochs;
    }

    /// @notice A verifier of an agreement and how many on-time reports it made.
    struct Verifier {
        address account;
        uint32 reports;
    }

    /// @dev Reports are packed 16 epochs per storage word, 16 bits per epoch: the low byte is
    /// the mask of verifiers that reported, the high byte the mask of those that reported "ok".
    uint256 internal constant EPOCHS_PER_WORD = 16;

    /// @dev Epoch outcome, from the on-time reports: more ok than failed is Served, more failed
    /// than ok is Failed, a tie or no report at all is Unjudged (not paid, not slashed).
    uint8 internal constant UNJUDGED = 0;
    uint8 internal constant SERVED = 1;
    uint8 internal constant FAILED = 2;

    /// @dev The 16-bit lane of `epoch` in its word.
    function lane(uint256 word, uint256 epoch) internal pure returns (uint256) {
        return (word >> ((epoch % EPOCHS_PER_WORD) * 16)) & 0xffff;
    }

    /// @dev Number of set bits in a byte.
    function popcount8(uint256 x) internal pure returns (uint256) {
        x = x - ((x >> 1) & 0x55);
        x = (x & 0x33) + ((x >> 2) & 0x33);
        return (x + (x >> 4)) & 0x0f;
    }

    /// @dev The outcome of an epoch given its lane.
    function outcome(uint256 l) internal pure returns (uint8) {
        uint256 reported = l & 0xff;
        uint256 ok = popcount8((l >> 8) & 0xff);
        uint256 failed = popcount8(reported) - ok;
        if (ok > failed) return SERVED;
        if (failed > ok) return FAILED;
        return UNJUDGED;
    }
}
