// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {WorkAgreement} from "../src/WorkAgreement.sol";

contract WorkAgreementTest is Test {
    function test_Outcome() public pure {
        assertEq(WorkAgreement.outcome(0), WorkAgreement.UNJUDGED); // nobody reported
        assertEq(WorkAgreement.outcome(0x0101), WorkAgreement.SERVED); // v0 ok
        assertEq(WorkAgreement.outcome(0x0001), WorkAgreement.FAILED); // v0 failed
        assertEq(WorkAgreement.outcome(0x0103), WorkAgreement.UNJUDGED); // 1 ok, 1 failed
        assertEq(WorkAgreement.outcome(0x0507), WorkAgreement.SERVED); // 2 ok, 1 failed
        assertEq(WorkAgreement.outcome(0x0407), WorkAgreement.FAILED); // 1 ok, 2 failed
        assertEq(WorkAgreement.outcome(0xffff), WorkAgreement.SERVED); // 8 ok
    }

    function testFuzz_Popcount8(uint8 x) public pure {
        uint256 n;
        for (uint256 i; i < 8; ++i) {
            if ((uint256(x) >> i) & 1 == 1) ++n;
        }
        assertEq(WorkAgreement.popcount8(x), n);
    }

    function testFuzz_Lane(uint256 word, uint256 epoch) public pure {
        epoch = bound(epoch, 0, 1 << 32);
        uint256 l = WorkAgreement.lane(word, epoch);
        assertEq(l, (word >> ((epoch % 16) * 16)) & 0xffff);
    }

    /// @dev Majority rule against a direct count, for masks where ok is a subset of reported.
    function testFuzz_Outcome_Majority(uint8 reported, uint8 okBits) public pure {
        uint256 ok = okBits & reported;
        uint256 okCount;
        uint256 failCount;
        for (uint256 i; i < 8; ++i) {
            if ((uint256(reported) >> i) & 1 == 1) {
                if ((ok >> i) & 1 == 1) ++okCount;
                else ++failCount;
            }
        }
        uint8 want = okCount > failCount
            ? WorkAgreement.SERVED
            : (failCount > okCount ? WorkAgreement.FAILED : WorkAgreement.UNJUDGED);
        assertEq(WorkAgreement.outcome(uint256(reported) | (ok << 8)), want);
    }

    /// @dev `agreeing` against the per-lane rule, for words whose ok bits are a subset of the
    /// reported bits: a lane's verifiers that said ok on a Served epoch or failed on a Failed
    /// one, nobody on an Unjudged one.
    function testFuzz_Agreeing_MatchesOutcomePerLane(uint256 reported, uint256 okBits) public pure {
        uint256 word;
        for (uint256 e; e < 16; ++e) {
            uint256 r = (reported >> (8 * e)) & 0xff;
            uint256 k = (okBits >> (8 * e)) & r;
            word |= (r | (k << 8)) << (16 * e);
        }
        uint256 got = WorkAgreement.agreeing(word);
        for (uint256 e; e < 16; ++e) {
            uint256 l = WorkAgreement.lane(word, e);
            uint8 o = WorkAgreement.outcome(l);
            uint256 want = o == WorkAgreement.SERVED
                ? (l >> 8)
                : (o == WorkAgreement.FAILED ? (l & 0xff) & ~(l >> 8) : 0);
            assertEq(WorkAgreement.lane(got, e), want);
        }
    }

    function test_Agreeing_Examples() public pure {
        // epoch 0: v0, v1 ok, v2 failed -> served, v0 and v1 agree
        // epoch 1: v0 ok, v1 and v2 failed -> failed, v1 and v2 agree
        // epoch 2: v0 ok, v1 failed -> tie, nobody agrees
        // epoch 3: nobody reported; epoch 15: all eight ok
        uint256 word = 0x0307 | (0x0107 << 16) | (0x0103 << 32) | (uint256(0xffff) << 240);
        uint256 got = WorkAgreement.agreeing(word);
        assertEq(WorkAgreement.lane(got, 0), 0x03);
        assertEq(WorkAgreement.lane(got, 1), 0x06);
        assertEq(WorkAgreement.lane(got, 2), 0);
        assertEq(WorkAgreement.lane(got, 3), 0);
        assertEq(WorkAgreement.lane(got, 15), 0xff);
        uint256 counts = WorkAgreement.countPerVerifier(got);
        assertEq(counts & 0xffffffff, 2); // v0: epochs 0, 15
        assertEq((counts >> 32) & 0xffffffff, 3); // v1: epochs 0, 1, 15
        assertEq((counts >> 64) & 0xffffffff, 2); // v2: epochs 1, 15
        assertEq((counts >> 96) & 0xffffffff, 1); // v3: epoch 15
        assertEq(counts >> 224, 1); // v7: epoch 15
    }

    function testFuzz_PopcountBytes(uint256 x) public pure {
        uint256 got = WorkAgreement.popcountBytes(x);
        for (uint256 b; b < 32; ++b) {
            assertEq((got >> (8 * b)) & 0xff, WorkAgreement.popcount8((x >> (8 * b)) & 0xff));
        }
    }

    function testFuzz_CountPerVerifier(uint256 x) public pure {
        uint256 agree = x & WorkAgreement.LANE_LOW_BYTES; // what agreeing returns: low bytes
        uint256 got = WorkAgreement.countPerVerifier(agree);
        for (uint256 i; i < 8; ++i) {
            uint256 n;
            for (uint256 e; e < 16; ++e) {
                if ((agree >> (16 * e + i)) & 1 == 1) ++n;
            }
            assertEq((got >> (32 * i)) & 0xffffffff, n);
        }
    }
}
