// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {DispatcherFixture} from "./utils/DispatcherFixture.sol";
import {WorkerDispatcher} from "../src/WorkerDispatcher.sol";

/// @dev Work spreads evenly over the eligible workers and never reaches ineligible ones.
contract WorkerDispatcherFairnessTest is DispatcherFixture {
    uint256 internal constant ELIGIBLE = 20;
    uint256 internal constant BUYS = 2000;

    address[] internal eligible;
    address[] internal others;
    mapping(address => uint256) internal asWorker;
    mapping(address => uint256) internal asVerifier;

    function setUp() public override {
        super.setUp();
        WorkerDispatcher.Capabilities memory c = _caps();
        c.slots = 255; // keep every eligible worker listed for the whole run
        eligible = _registerMany("eligible", ELIGIBLE, c);

        // Ineligible for this request: another architecture, too little memory, too expensive,
        // and eligible-looking workers that paused.
        WorkerDispatcher.Capabilities memory amd = c;
        amd.arch = 1;
        WorkerDispatcher.Capabilities memory small = c;
        small.memoryMiB = 512;
        WorkerDispatcher.Capabilities memory dear = c;
        dear.pricePerSecond = PRICE * 4;
        _pushAll(_registerMany("amd64-", 10, amd));
        _pushAll(_registerMany("small", 10, small));
        _pushAll(_registerMany("dear", 10, dear));
        address[] memory paused = _registerMany("paused", 10, c);
        for (uint256 i; i < paused.length; ++i) {
            vm.prank(paused[i]);
            d.pauseWorker();
        }
        _pushAll(paused);
    }

    function _pushAll(address[] memory xs) internal {
        for (uint256 i; i < xs.length; ++i) {
            others.push(xs[i]);
        }
    }

    function test_WorkSpreadsEvenlyOverEligibleWorkers() public {
        for (uint256 i; i < BUYS; ++i) {
            vm.prevrandao(keccak256(abi.encode("block", i)));
            uint256 id = _buy(client, 1, 1);
            asWorker[_agreement(id).worker] += 1;
            asVerifier[_verifiers(id)[0]] += 1;
        }
        // Expected 100 each; a binomial(2000, 1/20) lies within 100 +- 40 with probability
        // far above 1 - 1e-4 per worker. The draws are deterministic here (fixed prevrandao).
        uint256 lo = type(uint256).max;
        uint256 hi;
        for (uint256 i; i < ELIGIBLE; ++i) {
            uint256 n = asWorker[eligible[i]];
            if (n < lo) lo = n;
            if (n > hi) hi = n;
        }
        assertGt(lo, 60, "an eligible worker was starved");
        assertLt(hi, 140, "an eligible worker was favoured");
        for (uint256 i; i < others.length; ++i) {
            assertEq(asWorker[others[i]], 0, "an ineligible worker got work");
        }
        // Verifiers come from every active worker (50: the paused ones are out), the agreement's
        // worker excluded: expected 2000/49 ~ 41 each.
        for (uint256 i; i < ELIGIBLE; ++i) {
            assertGt(asVerifier[eligible[i]], 15, "verifier starved");
            assertLt(asVerifier[eligible[i]], 75, "verifier favoured");
        }
        for (uint256 i = 30; i < 40; ++i) {
            assertEq(asVerifier[others[i]], 0, "a paused worker was drawn as verifier");
        }
        emit log_named_uint("min jobs per eligible worker", lo);
        emit log_named_uint("max jobs per eligible worker", hi);
    }
}
