// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title WorkerClass
/// @notice Capability classes: the unit of matchmaking.
/// @dev A worker's class is its advertised capacity rounded *down* (cpu, memory, disk, longest
/// duration: to a power of two) and its price rounded *up* (to three significant bits, at most
/// 12.5% above the real price), plus its architecture code. Every worker listed in a class
/// therefore offers at least the class's capacity at no more than the class's price ceiling, so a
/// client that names a class dominating its requirements can take any worker of that class
/// without a per-worker check. Layout of the uint64 key, high to low:
/// `arch:8 | cpuTier:8 | memTier:8 | diskTier:8 | durationTier:8 | priceCode:16`.
library WorkerClass {
    /// @dev log2 rounded down; x must be > 0.
    function log2(uint256 x) internal pure returns (uint256 r) {
        unchecked {
            if (x >> 128 != 0) (x, r) = (x >> 128, r + 128);
            if (x >> 64 != 0) (x, r) = (x >> 64, r + 64);
            if (x >> 32 != 0) (x, r) = (x >> 32, r + 32);
            if (x >> 16 != 0) (x, r) = (x >> 16, r + 16);
            if (x >> 8 != 0) (x, r) = (x >> 8, r + 8);
            if (x >> 4 != 0) (x, r) = (x >> 4, r + 4);
            if (x >> 2 != 0) (x, r) = (x >> 2, r + 2);
            if (x >> 1 != 0) r += 1;
        }
    }

    /// @dev Price rounded up to three significant bits, encoded: codes 0..15 are exact prices;
    /// above, code = 8 * (e + 1) + (m - 8) stands for m << e with m in 8..15.
    function priceCode(uint256 price) internal pure returns (uint256) {
        if (price < 16) return price;
        unchecked {
            uint256 e = log2(price) - 3;
            uint256 m = (price + (uint256(1) << e) - 1) >> e; // ceil(price / 2^e), in 8..16
            if (m == 16) (e, m) = (e + 1, 8);
            return 8 * (e + 1) + (m - 8);
        }
    }

    /// @dev The highest price a worker of this price code may ask.
    function priceCeiling(uint256 code) internal pure returns (uint256) {
        if (code < 16) return code;
        unchecked {
            return (8 + (code & 7)) << ((code >> 3) - 1);
        }
    }

    /// @dev The class key of a worker with these capabilities (all sizes must be > 0).
    function classOf(
        uint8 arch,
        uint256 cpuMillis,
        uint256 memoryMiB,
        uint256 diskMiB,
        uint256 maxDuration,
        uint256 pricePerSecond
    ) internal pure returns (uint64) {
        return uint64(
            (uint256(arch) << 48) | (log2(cpuMillis) << 40) | (log2(memoryMiB) << 32)
                | (log2(diskMiB) << 24) | (log2(maxDuration) << 16) | priceCode(pricePerSecond)
        );
    }

    /// @dev Whether every worker of class `cls` satisfies the requirements, duration and price.
    function satisfies(
        uint64 cls,
        uint8 arch,
        uint256 cpuMillis,
        uint256 memoryMiB,
        uint256 diskMiB,
        uint256 duration,
        uint256 maxPricePerSecond
    ) internal pure returns (bool) {
        uint256 c = cls;
        return uint8(c >> 48) == arch && (uint256(1) << uint8(c >> 40)) >= cpuMillis
            && (uint256(1) << uint8(c >> 32)) >= memoryMiB
            && (uint256(1) << uint8(c >> 24)) >= diskMiB
            && (uint256(1) << uint8(c >> 16)) >= duration
            && priceCeiling(uint16(c)) <= maxPricePerSecond;
    }
}
