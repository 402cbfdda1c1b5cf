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
}
