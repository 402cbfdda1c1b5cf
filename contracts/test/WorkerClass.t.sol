// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {WorkerClass} from "../src/WorkerClass.sol";

contract WorkerClassTest is Test {
    function test_Log2() public pure {
        assertEq(WorkerClass.log2(1), 0);
        assertEq(WorkerClass.log2(2), 1);
        assertEq(WorkerClass.log2(3), 1);
        assertEq(WorkerClass.log2(4096), 12);
        assertEq(WorkerClass.log2(type(uint256).max), 255);
    }

    function testFuzz_Log2(uint256 x) public pure {
        x = bound(x, 1, type(uint256).max);
        uint256 r = WorkerClass.log2(x);
        assertLe(uint256(1) << r, x);
        if (r < 255) assertGt(uint256(1) << (r + 1), x);
    }

    function test_PriceCode_ExactBelowSixteen() public pure {
        for (uint256 p; p < 16; ++p) {
            assertEq(WorkerClass.priceCeiling(WorkerClass.priceCode(p)), p);
        }
        assertEq(WorkerClass.priceCeiling(WorkerClass.priceCode(16)), 16);
        assertEq(WorkerClass.priceCeiling(WorkerClass.priceCode(17)), 18);
        assertEq(WorkerClass.priceCeiling(WorkerClass.priceCode(31)), 32);
        assertEq(WorkerClass.priceCeiling(WorkerClass.priceCode(15 << 26)), 15 << 26);
    }

    /// @dev The ceiling is never below the price and at most 12.5% above it.
    function testFuzz_PriceCeiling_Bounds(uint256 price) public pure {
        price = bound(price, 0, type(uint80).max);
        uint256 code = WorkerClass.priceCode(price);
        assertLt(code, 1 << 16);
        uint256 ceiling = WorkerClass.priceCeiling(code);
        assertGe(ceiling, price);
        assertLe(ceiling, price + price / 8);
    }

    function testFuzz_PriceCode_Monotonic(uint256 a, uint256 b) public pure {
        a = bound(a, 0, type(uint80).max);
        b = bound(b, a, type(uint80).max);
        assertLe(WorkerClass.priceCode(a), WorkerClass.priceCode(b));
    }

    /// @dev Soundness of matchmaking: whenever a worker's class satisfies a request, the worker
    /// itself does.
    function testFuzz_Satisfies_ImpliesWorkerMeetsRequest(
        uint8 arch,
        uint32[4] memory caps,
        uint80 price,
        uint32[4] memory req,
        uint256 duration,
        uint256 maxPrice
    ) public pure {
        arch = uint8(bound(arch, 1, 255));
        for (uint256 i; i < 4; ++i) {
            caps[i] = uint32(bound(caps[i], 1, type(uint32).max));
            // requests near the capability so both outcomes occur
            req[i] = uint32(
                bound(
                    req[i],
                    caps[i] / 4,
                    uint256(caps[i]) * 2 > type(uint32).max ? type(uint32).max : caps[i] * 2
                )
            );
        }
        duration = bound(duration, caps[3] / 4, uint256(caps[3]) * 2);
        maxPrice = bound(maxPrice, price / 2, uint256(price) * 2);
        uint64 cls = WorkerClass.classOf(arch, caps[0], caps[1], caps[2], caps[3], price);
        if (WorkerClass.satisfies(cls, arch, req[0], req[1], req[2], duration, maxPrice)) {
            assertGe(caps[0], req[0]);
            assertGe(caps[1], req[1]);
            assertGe(caps[2], req[2]);
            assertGe(caps[3], duration);
            assertLe(price, maxPrice);
        }
        assertFalse(
            WorkerClass.satisfies(cls, arch == 255 ? 1 : arch + 1, 1, 1, 1, 1, type(uint256).max)
        );
    }

    /// @dev Completeness at the class boundary: a request for exactly the class's guaranteed
    /// capacity at the class's price ceiling is always satisfied.
    function testFuzz_Satisfies_ClassGuarantee(uint8 arch, uint32[4] memory caps, uint80 price)
        public
        pure
    {
        arch = uint8(bound(arch, 1, 255));
        for (uint256 i; i < 4; ++i) {
            caps[i] = uint32(bound(caps[i], 1, type(uint32).max));
        }
        uint64 cls = WorkerClass.classOf(arch, caps[0], caps[1], caps[2], caps[3], price);
        uint256 ceiling = WorkerClass.priceCeiling(WorkerClass.priceCode(price));
        assertTrue(
            WorkerClass.satisfies(
                cls,
                arch,
                uint256(1) << WorkerClass.log2(caps[0]),
                uint256(1) << WorkerClass.log2(caps[1]),
                uint256(1) << WorkerClass.log2(caps[2]),
                uint256(1) << WorkerClass.log2(caps[3]),
                ceiling
            )
        );
    }
}
