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

    /// @notice A verifier of an agreement and how many on-time reports it made (whatever they
    /// said; settlement pays only those that agreed with their epoch's outcome).
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

    /// @dev Bit 0 of every 16-bit lane of a report word.
    uint256 internal constant LANE_ONES =
        0x0001000100010001000100010001000100010001000100010001000100010001;
    /// @dev The low byte of every lane.
    uint256 internal constant LANE_LOW_BYTES =
        0x00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff;

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

    /// @dev Number of set bits in each byte of `x`, in that byte (SWAR: all 32 bytes at once).
    function popcountBytes(uint256 x) internal pure returns (uint256) {
        unchecked {
            x = x - ((x >> 1) & 0x5555555555555555555555555555555555555555555555555555555555555555);
            x = (x & 0x3333333333333333333333333333333333333333333333333333333333333333)
                + ((x >> 2) & 0x3333333333333333333333333333333333333333333333333333333333333333);
            return
                (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f;
        }
    }

    /// @dev The verifiers whose reports agreed with their epoch's outcome, for the 16 epochs of
    /// a report word at once: each lane's low byte is the mask of the verifiers that said ok on
    /// a Served epoch or failed on a Failed one; Unjudged epochs (a tie, no report) have none.
    /// The high bytes are zero. Needs ok bits to be a subset of reported bits (as `_mark`
    /// writes them). Branch-free: per lane, with `r` reports of which `k` ok, the lane holds
    /// `0x100 + 2k - r` (between 0xf8 and 0x110, so no lane borrows from its neighbour):
    /// Served iff `2k > r`, i.e. `0x100 + 2k - r - 1` has bit 8 set; Failed iff `2k < r`, i.e.
    /// `0x100 + 2k - r` has bit 8 clear.
    function agreeing(uint256 word) internal pure returns (uint256) {
        unchecked {
            uint256 counts = popcountBytes(word); // per lane: low byte r, high byte k
            uint256 biased = (((counts >> 8) & LANE_LOW_BYTES) << 1) + (LANE_ONES << 8)
                - (counts & LANE_LOW_BYTES);
            uint256 served = ((biased - LANE_ONES) >> 8) & LANE_ONES;
            uint256 failed = ~(biased >> 8) & LANE_ONES;
            uint256 okBits = (word >> 8) & LANE_LOW_BYTES;
            uint256 failBits = word & LANE_LOW_BYTES & ~okBits;
            return (okBits & (served * 0xff)) | (failBits & (failed * 0xff));
        }
    }

    /// @dev For a word from `agreeing`: per verifier i (0..7), in how many of its 16 lanes bit i
    /// is set, packed 32 bits per verifier (verifier i at bit 32 * i). For each i, the lanes'
    /// bit i is isolated (`(x >> i) & LANE_ONES`) and one multiplication by LANE_ONES sums the
    /// 16 lanes into the top lane (each partial sum is at most 16, so no lane carries into the
    /// next; the products past bit 255 are the ones not wanted). Written out for all eight
    /// verifiers: cheaper than a loop, and the bits of verifiers an agreement does not have are
    /// zero.
    function countPerVerifier(uint256 agree) internal pure returns (uint256) {
        unchecked {
            uint256 o = LANE_ONES;
            return (((agree & o) * o) >> 240) | ((((agree >> 1) & o) * o) >> 240 << 32)
                | ((((agree >> 2) & o) * o) >> 240 << 64) | ((((agree >> 3) & o) * o) >> 240 << 96)
                | ((((agree >> 4) & o) * o) >> 240 << 128)
                | ((((agree >> 5) & o) * o) >> 240 << 160)
                | ((((agree >> 6) & o) * o) >> 240 << 192)
                | ((((agree >> 7) & o) * o) >> 240 << 224);
        }
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
