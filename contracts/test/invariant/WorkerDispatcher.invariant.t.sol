// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {DispatcherFixture} from "../utils/DispatcherFixture.sol";
import {DispatcherHandler} from "./DispatcherHandler.sol";
import {WorkAgreement} from "../../src/WorkAgreement.sol";

contract WorkerDispatcherInvariantTest is DispatcherFixture {
    DispatcherHandler internal h;

    function setUp() public override {
        super.setUp();
        h = new DispatcherHandler(d);
        targetContract(address(h));
    }

    function _actors() internal view returns (address[] memory xs) {
        xs = new address[](h.actorCount());
        for (uint256 i; i < xs.length; ++i) {
            xs[i] = h.actors(i);
        }
    }

    /// @dev The contract holds exactly what it owes: stakes, open escrows and credits.
    function invariant_BalanceEqualsOwed() public view {
        assertEq(address(d).balance, _owed(_actors()));
        assertEq(address(d).balance, h.ghostIn() - h.ghostOut());
    }

    /// @dev No wrong success was ever observed: nobody settled twice, only verifiers verified,
    /// settlement always credited exactly escrow plus slash, each verifier exactly the fee of
    /// its reports that agreed with their epoch's outcome and the worker its served epochs,
    /// stakes never grew on settlement, settlement was never blocked once due, withdrawals paid
    /// exactly the credit once.
    function invariant_NoViolation() public view {
        assertEq(h.violations(), 0, h.lastViolation());
    }

    /// @dev A closed agreement stays closed in the state it closed in.
    function invariant_ClosedStaysClosed() public view {
        uint256 n = h.idCount();
        for (uint256 i; i < n; ++i) {
            uint256 id = h.ids(i);
            WorkAgreement.State closed = h.closedAs(id);
            if (closed != WorkAgreement.State.None) {
                assertEq(uint8(d.getAgreement(id).state), uint8(closed));
            }
        }
    }

    /// @dev Running counts match open agreements per worker, and stakes of listed workers are at
    /// least the minimum.
    function invariant_WorkerBookkeeping() public view {
        address[] memory xs = _actors();
        uint256 n = h.idCount();
        for (uint256 i; i < xs.length; ++i) {
            uint256 open;
            for (uint256 j; j < n; ++j) {
                WorkAgreement.Record memory a = d.getAgreement(h.ids(j));
                if (a.worker == xs[i] && uint8(a.state) <= uint8(WorkAgreement.State.Terminated)) {
                    ++open;
                }
            }
            assertEq(d.getWorker(xs[i]).running, open);
            if (d.getWorker(xs[i]).activeIndex != 0) {
                assertGe(d.getWorker(xs[i]).stake, MIN_STAKE);
            }
        }
    }

    /// @dev The handler's actions can all succeed (a scripted walk through each of them), so
    /// the random campaign above is not vacuous.
    function test_HandlerReachesEveryAction() public {
        for (uint256 i; i < 6; ++i) {
            h.buy(i, 3 + i % 3, 2, i);
        }
        h.decline(0); // Created -> Cancelled
        h.warpLong(0); // 1 hour: accept windows pass
        for (uint256 i; i < 6; ++i) {
            h.cancel(i); // Created -> Cancelled after the window
        }
        for (uint256 i; i < 4; ++i) {
            h.buy(i, 6, 2, 100 + i);
        }
        h.accept(0);
        h.accept(1);
        h.accept(2);
        h.ready(0);
        h.ready(1);
        h.verify(1, 1, 1, true);
        h.dissent(1, 1); // 2 verifiers: v0 ok, v1 failed, a tie
        h.outage(0);
        h.outage(0);
        h.outage(0);
        h.outage(0);
        h.warp(300);
        h.terminate(0);
        h.warpLong(0); // the third accepted agreement misses its ready window
        h.abort(0, true);
        h.warpLong(2 days);
        h.redeem(0, 0);
        h.redeem(1, 0);
        for (uint256 i; i < 10; ++i) {
            h.withdraw(i);
        }
        h.addStake(0, 1 ether);
        h.pauseOrResume(3);
        h.pauseOrResume(3);
        for (uint256 i; i < 8; ++i) {
            h.leaveOrRejoin(i);
        }
        h.warpLong(2 days);
        for (uint256 i; i < 8; ++i) {
            h.redeem(i, 0);
            h.leaveOrRejoin(i);
            h.leaveOrRejoin(i);
        }
        string[16] memory names = [
            "buy",
            "accept",
            "ready",
            "decline",
            "cancel",
            "abort",
            "verify",
            "dissent",
            "terminate",
            "redeem",
            "withdraw",
            "addStake",
            "pause",
            "leave",
            "withdrawStake",
            "register"
        ];
        for (uint256 i; i < names.length; ++i) {
            assertGt(h.calls(keccak256(bytes(names[i]))), 0, names[i]);
        }
        assertEq(h.violations(), 0, h.lastViolation());
        invariant_BalanceEqualsOwed();
        invariant_ClosedStaysClosed();
        invariant_WorkerBookkeeping();
    }
}
