// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Vm} from "forge-std/Vm.sol";
import {DispatcherFixture} from "./utils/DispatcherFixture.sol";
import {WorkerDispatcher} from "../src/WorkerDispatcher.sol";
import {WorkAgreement} from "../src/WorkAgreement.sol";

/// @dev A receiver that tries to re-enter `withdraw` when paid, and records what happened.
contract Reenterer {
    WorkerDispatcher internal immutable d;
    bool public reentered;
    bytes public innerError;
    uint256 public received;

    constructor(WorkerDispatcher d_) {
        d = d_;
    }

    function register(WorkerDispatcher.Capabilities calldata c) external payable {
        d.registerWorker{value: msg.value}(c);
    }

    function leave() external {
        d.requestLeave();
    }

    function withdrawStake() external {
        d.withdrawStake();
    }

    function pull() external {
        d.withdraw();
    }

    receive() external payable {
        received += msg.value;
        if (!reentered) {
            reentered = true;
            try d.withdraw() {}
            catch (bytes memory err) {
                innerError = err;
            }
        }
    }
}

/// @dev A receiver that refuses ETH.
contract Refuser {
    function pull(WorkerDispatcher d) external {
        d.withdraw();
    }

    function register(WorkerDispatcher d, WorkerDispatcher.Capabilities calldata c)
        external
        payable
    {
        d.registerWorker{value: msg.value}(c);
    }

    function leave(WorkerDispatcher d) external {
        d.requestLeave();
    }

    function withdrawStake(WorkerDispatcher d) external {
        d.withdrawStake();
    }
}

contract WorkerDispatcherTest is DispatcherFixture {
    address[] internal workers;

    function setUp() public override {
        super.setUp();
        workers = _registerMany("worker", 5, _caps());
    }

    function _all() internal view returns (address[] memory all) {
        all = new address[](workers.length + 2);
        for (uint256 i; i < workers.length; ++i) {
            all[i] = workers[i];
        }
        all[workers.length] = client;
        all[workers.length + 1] = stranger;
    }

    function _assertSolvent() internal view {
        assertEq(address(d).balance, _owed(_all()), "balance != owed");
    }

    /*//////////////////////////////////////////////////////////////
                               CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    function test_Constructor_StoresParams() public view {
        WorkerDispatcher.Params memory p = d.params();
        assertEq(abi.encode(p), abi.encode(_params()));
    }

    function test_RevertWhen_Constructor_InvalidParams() public {
        for (uint256 i; i < 7; ++i) {
            WorkerDispatcher.Params memory p = _params();
            if (i == 0) p.minStake = 0;
            if (i == 1) p.acceptWindow = 0;
            if (i == 2) p.readyWindow = 0;
            if (i == 3) p.epochLength = 0;
            if (i == 4) p.maxEpochs = 0;
            if (i == 5) p.maxConsecutiveFailures = 0;
            if (i == 6) p.acceptPenalty = p.minStake + 1;
            vm.expectRevert(WorkerDispatcher.InvalidParams.selector);
            new WorkerDispatcher(p);
        }
    }

    /*//////////////////////////////////////////////////////////////
                                REGISTRY
    //////////////////////////////////////////////////////////////*/

    function test_RegisterWorker() public {
        address w = makeAddr("new");
        WorkerDispatcher.Capabilities memory c = _caps();
        vm.deal(w, 2 ether);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.WorkerRegistered(w, d.classOf(c), 2 ether, c);
        vm.prank(w);
        d.registerWorker{value: 2 ether}(c);
        workers.push(w);
        WorkerDispatcher.Worker memory r = d.getWorker(w);
        assertEq(r.stake, 2 ether);
        assertEq(uint8(r.status), uint8(WorkerDispatcher.Status.Active));
        assertEq(r.cpuMillis, c.cpuMillis);
        assertEq(r.encryptionKey, c.encryptionKey);
        assertEq(r.class, d.classOf(c));
        assertEq(d.poolSize(r.class), 6);
        assertEq(d.activeWorkerCount(), 6);
        _assertSolvent();
    }

    function test_RevertWhen_RegisterWorker_StakeTooLow() public {
        vm.deal(stranger, 1 ether);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(WorkerDispatcher.StakeTooLow.selector, MIN_STAKE - 1, MIN_STAKE)
        );
        d.registerWorker{value: MIN_STAKE - 1}(_caps());
    }

    function test_RevertWhen_RegisterWorker_AlreadyRegistered() public {
        vm.deal(workers[0], MIN_STAKE);
        vm.prank(workers[0]);
        vm.expectRevert(WorkerDispatcher.AlreadyRegistered.selector);
        d.registerWorker{value: MIN_STAKE}(_caps());
    }

    function test_RevertWhen_RegisterWorker_InvalidCapabilities() public {
        vm.deal(stranger, 10 ether);
        for (uint256 i; i < 7; ++i) {
            WorkerDispatcher.Capabilities memory c = _caps();
            if (i == 0) c.arch = 0;
            if (i == 1) c.cpuMillis = 0;
            if (i == 2) c.memoryMiB = 0;
            if (i == 3) c.diskMiB = 0;
            if (i == 4) c.maxDuration = 0;
            if (i == 5) c.slots = 0;
            if (i == 6) c.encryptionKey = 0;
            vm.prank(stranger);
            vm.expectRevert(WorkerDispatcher.InvalidCapabilities.selector);
            d.registerWorker{value: MIN_STAKE}(c);
        }
    }

    function test_UpdateWorker_MovesClass() public {
        WorkerDispatcher.Capabilities memory c = _caps();
        uint64 oldClass = d.classOf(c);
        c.memoryMiB = 8192;
        uint64 newClass = d.classOf(c);
        assertTrue(newClass != oldClass);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.WorkerUpdated(workers[0], newClass, c);
        vm.prank(workers[0]);
        d.updateWorker(c);
        assertEq(d.poolSize(oldClass), 4);
        assertEq(d.poolSize(newClass), 1);
        assertEq(d.getWorker(workers[0]).memoryMiB, 8192);
        assertEq(d.getWorker(workers[0]).poolIndex, 1);
        // the worker that was moved into its old position keeps a correct index
        for (uint256 i = 1; i < 5; ++i) {
            assertTrue(d.getWorker(workers[i]).poolIndex != 0);
        }
    }

    function test_RevertWhen_UpdateWorker_NotRegistered() public {
        vm.prank(stranger);
        vm.expectRevert(WorkerDispatcher.NotRegistered.selector);
        d.updateWorker(_caps());
    }

    function test_RevertWhen_UpdateWorker_Leaving() public {
        vm.startPrank(workers[0]);
        d.requestLeave();
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongWorkerStatus.selector, WorkerDispatcher.Status.Leaving
            )
        );
        d.updateWorker(_caps());
        vm.stopPrank();
    }

    function test_RevertWhen_UpdateWorker_InvalidCapabilities() public {
        WorkerDispatcher.Capabilities memory c = _caps();
        c.slots = 0;
        vm.prank(workers[0]);
        vm.expectRevert(WorkerDispatcher.InvalidCapabilities.selector);
        d.updateWorker(c);
    }

    function test_AddStake() public {
        vm.deal(workers[0], 1 ether);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.StakeAdded(workers[0], 1 ether, MIN_STAKE + 1 ether);
        vm.prank(workers[0]);
        d.addStake{value: 1 ether}();
        assertEq(d.getWorker(workers[0]).stake, MIN_STAKE + 1 ether);
        _assertSolvent();
    }

    function test_RevertWhen_AddStake_NotRegistered() public {
        vm.deal(stranger, 1 ether);
        vm.prank(stranger);
        vm.expectRevert(WorkerDispatcher.NotRegistered.selector);
        d.addStake{value: 1 ether}();
    }

    function test_RevertWhen_AddStake_Leaving() public {
        vm.deal(workers[0], 1 ether);
        vm.startPrank(workers[0]);
        d.requestLeave();
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongWorkerStatus.selector, WorkerDispatcher.Status.Leaving
            )
        );
        d.addStake{value: 1 ether}();
        vm.stopPrank();
    }

    function test_PauseAndResumeWorker() public {
        uint64 cls = d.classOf(_caps());
        vm.expectEmit(address(d));
        emit WorkerDispatcher.WorkerPaused(workers[0]);
        vm.prank(workers[0]);
        d.pauseWorker();
        assertEq(d.poolSize(cls), 4);
        assertEq(d.activeWorkerCount(), 4);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.WorkerResumed(workers[0]);
        vm.prank(workers[0]);
        d.resumeWorker();
        assertEq(d.poolSize(cls), 5);
        assertEq(d.activeWorkerCount(), 5);
    }

    function test_RevertWhen_PauseWorker_NotActive() public {
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongWorkerStatus.selector, WorkerDispatcher.Status.None
            )
        );
        d.pauseWorker();
    }

    function test_RevertWhen_ResumeWorker_NotPaused() public {
        vm.prank(workers[0]);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongWorkerStatus.selector, WorkerDispatcher.Status.Active
            )
        );
        d.resumeWorker();
    }

    function test_RevertWhen_ResumeWorker_StakeTooLow() public {
        // a worker slashed below the minimum while paused cannot resume until it tops up
        uint256 id = _buy(client, 1, 1);
        address w = _agreement(id).worker;
        vm.prank(w);
        d.pauseWorker();
        vm.warp(block.timestamp + ACCEPT_WINDOW);
        vm.prank(client);
        d.cancelAgreement(id);
        vm.prank(w);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.StakeTooLow.selector, MIN_STAKE - ACCEPT_PENALTY, MIN_STAKE
            )
        );
        d.resumeWorker();
        vm.deal(w, ACCEPT_PENALTY);
        vm.startPrank(w);
        d.addStake{value: ACCEPT_PENALTY}();
        d.resumeWorker();
        vm.stopPrank();
        assertEq(d.getWorker(w).activeIndex != 0, true);
    }

    function test_RequestLeaveAndWithdrawStake() public {
        address w = workers[2];
        vm.expectEmit(address(d));
        emit WorkerDispatcher.LeaveRequested(w, block.timestamp + UNBONDING);
        vm.prank(w);
        d.requestLeave();
        assertEq(d.poolSize(d.classOf(_caps())), 4);
        assertEq(d.activeWorkerCount(), 4);
        vm.warp(block.timestamp + UNBONDING);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.StakeWithdrawn(w, MIN_STAKE);
        vm.prank(w);
        d.withdrawStake();
        assertEq(d.credits(w), MIN_STAKE);
        assertEq(uint8(d.getWorker(w).status), uint8(WorkerDispatcher.Status.None));
        uint256 before = w.balance;
        vm.prank(w);
        d.withdraw();
        assertEq(w.balance, before + MIN_STAKE);
        _assertSolvent();
        // and it may register again
        _register(w, _caps());
    }

    function test_RevertWhen_RequestLeave_NotRegistered() public {
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongWorkerStatus.selector, WorkerDispatcher.Status.None
            )
        );
        d.requestLeave();
    }

    function test_RevertWhen_WithdrawStake_NotLeaving() public {
        vm.prank(workers[0]);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongWorkerStatus.selector, WorkerDispatcher.Status.Active
            )
        );
        d.withdrawStake();
    }

    function test_RevertWhen_WithdrawStake_UnbondingNotOver() public {
        vm.startPrank(workers[0]);
        d.requestLeave();
        vm.warp(block.timestamp + UNBONDING - 1);
        vm.expectRevert(
            abi.encodeWithSelector(WorkerDispatcher.UnbondingNotOver.selector, block.timestamp + 1)
        );
        d.withdrawStake();
        vm.stopPrank();
    }

    function test_RevertWhen_WithdrawStake_AgreementsRunning() public {
        uint256 id = _buy(client, 1, 1);
        address w = _agreement(id).worker;
        vm.startPrank(w);
        d.requestLeave();
        vm.warp(block.timestamp + UNBONDING);
        vm.expectRevert(abi.encodeWithSelector(WorkerDispatcher.AgreementsRunning.selector, 1));
        d.withdrawStake();
        vm.stopPrank();
    }

    /*//////////////////////////////////////////////////////////////
                                 BUYING
    //////////////////////////////////////////////////////////////*/

    function test_BuyContract() public {
        uint256 duration = 3 * EPOCH;
        uint256 escrow = _escrow(PRICE, duration, 2);
        uint256 balance = address(d).balance;
        vm.expectEmit(true, true, false, false, address(d));
        emit WorkerDispatcher.AgreementCreated(
            1, client, address(0), _req(_caps()), _work(), 0, 0, 0, 0
        );
        vm.prank(client);
        uint256 id = d.buyContract{value: escrow}(_req(_caps()), duration, PRICE, 2, _work());
        assertEq(id, 1);
        assertEq(d.nextAgreementId(), 2);
        WorkAgreement.Record memory a = _agreement(id);
        assertEq(a.client, client);
        assertEq(uint8(a.state), uint8(WorkAgreement.State.Created));
        assertEq(a.epochs, 3);
        assertEq(a.verifierCount, 2);
        assertEq(a.pricePerSecond, PRICE);
        assertEq(a.createdAt, block.timestamp);
        assertEq(a.termsHash, keccak256(abi.encode(_req(_caps()), _work())));
        assertEq(address(d).balance, balance + escrow);
        address[] memory vs = _verifiers(id);
        assertEq(vs.length, 2);
        assertTrue(vs[0] != vs[1]);
        for (uint256 i; i < 2; ++i) {
            assertTrue(vs[i] != a.worker && vs[i] != client && vs[i] != address(0));
            assertTrue(d.getWorker(vs[i]).status == WorkerDispatcher.Status.Active);
        }
        // the worker had one slot: it left its pool but is still drawable as a verifier
        assertEq(d.getWorker(a.worker).running, 1);
        assertEq(d.getWorker(a.worker).poolIndex, 0);
        assertEq(d.poolSize(d.classOf(_caps())), 4);
        assertEq(d.activeWorkerCount(), 5);
        _assertSolvent();
    }

    function test_BuyContract_EmitsVerifierAssignedPerVerifier() public {
        vm.recordLogs();
        uint256 id = _buy(client, 1, 3);
        address[] memory vs = _verifiers(id);
        bytes32 sig = keccak256("VerifierAssigned(uint256,address,address,uint256)");
        uint256 seen;
        VmSafeLog[] memory logs = _logs();
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] == sig) {
                assertEq(uint256(logs[i].topics[1]), id);
                assertEq(address(uint160(uint256(logs[i].topics[2]))), vs[seen]);
                assertEq(address(uint160(uint256(logs[i].topics[3]))), _agreement(id).worker);
                ++seen;
            }
        }
        assertEq(seen, 3);
    }

    struct VmSafeLog {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    function _logs() internal returns (VmSafeLog[] memory out) {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        out = new VmSafeLog[](logs.length);
        for (uint256 i; i < logs.length; ++i) {
            out[i] = VmSafeLog(logs[i].topics, logs[i].data, logs[i].emitter);
        }
    }

    function test_BuyContract_ClientNeverDrawnAsWorkerOrVerifier() public {
        // the client is itself a worker of the class: it must not be drawn
        address selfish = workers[0];
        vm.deal(selfish, 100 ether);
        for (uint256 i; i < 20; ++i) {
            vm.prevrandao(uint256(keccak256(abi.encode(i))));
            uint256 id = _buy(selfish, 1, 3);
            WorkAgreement.Record memory a = _agreement(id);
            assertTrue(a.worker != selfish);
            address[] memory vs = _verifiers(id);
            for (uint256 j; j < vs.length; ++j) {
                assertTrue(vs[j] != selfish && vs[j] != a.worker);
            }
            // free the worker's slot again
            vm.prank(a.worker);
            d.declineAgreement(id);
            vm.deal(a.worker, ACCEPT_PENALTY);
            vm.prank(a.worker);
            d.addStake{value: ACCEPT_PENALTY}();
        }
    }

    function testFuzz_BuyContract_DistinctVerifiers(uint256 rand, uint256 count) public {
        count = bound(count, 1, 4); // 5 workers: one is drawn as worker, four remain
        vm.prevrandao(rand);
        uint256 id = _buy(client, 1, count);
        address[] memory vs = _verifiers(id);
        address worker = _agreement(id).worker;
        assertEq(vs.length, count);
        for (uint256 i; i < count; ++i) {
            assertTrue(vs[i] != worker && vs[i] != client);
            for (uint256 j; j < i; ++j) {
                assertTrue(vs[i] != vs[j]);
            }
        }
    }

    function test_BuyContract_FreesSlotOnSettlement() public {
        uint256 id = _buy(client, 1, 1);
        address w = _agreement(id).worker;
        assertEq(d.getWorker(w).poolIndex, 0);
        vm.prank(w);
        d.declineAgreement(id);
        // stake fell below the minimum: not listed until topped up
        assertEq(d.getWorker(w).poolIndex, 0);
        assertEq(d.getWorker(w).activeIndex, 0);
        vm.deal(w, ACCEPT_PENALTY);
        vm.prank(w);
        d.addStake{value: ACCEPT_PENALTY}();
        assertTrue(d.getWorker(w).poolIndex != 0);
        assertTrue(d.getWorker(w).activeIndex != 0);
    }

    function test_RevertWhen_BuyContract_NoEligibleWorker() public {
        WorkerDispatcher.Capabilities memory c = _caps();
        c.arch = 1; // nobody registered amd64
        WorkerDispatcher.Requirements memory r = _req(c);
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NoEligibleWorker.selector);
        d.buyContract{value: _escrow(PRICE, EPOCH, 1)}(r, EPOCH, PRICE, 1, _work());
    }

    function test_RevertWhen_BuyContract_AllWorkersBusy() public {
        for (uint256 i; i < 5; ++i) {
            _buy(client, 1, 1);
        }
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NoEligibleWorker.selector);
        d.buyContract{value: _escrow(PRICE, EPOCH, 1)}(_req(_caps()), EPOCH, PRICE, 1, _work());
    }

    function test_RevertWhen_BuyContract_OnlyWorkerIsClient() public {
        WorkerDispatcher.Capabilities memory c = _caps();
        c.arch = 5;
        _register(client, c);
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NoEligibleWorker.selector);
        d.buyContract{value: _escrow(PRICE, EPOCH, 1)}(_req(c), EPOCH, PRICE, 1, _work());
    }

    function test_RevertWhen_BuyContract_NotEnoughVerifiers() public {
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(WorkerDispatcher.NotEnoughVerifiers.selector, 4, 5));
        d.buyContract{value: _escrow(PRICE, EPOCH, 5)}(_req(_caps()), EPOCH, PRICE, 5, _work());
    }

    function test_RevertWhen_BuyContract_ClassDoesNotSatisfy() public {
        WorkerDispatcher.Requirements memory base = _req(_caps());
        for (uint256 i; i < 6; ++i) {
            WorkerDispatcher.Requirements memory r = base;
            uint256 duration = EPOCH;
            uint256 maxPrice = PRICE;
            if (i == 0) r.arch = 1;
            if (i == 1) r.cpuMillis = 4097; // class guarantees 2^11 = 2048 millicores
            if (i == 2) r.memoryMiB = 4097;
            if (i == 3) r.diskMiB = 32_769;
            if (i == 4) maxPrice = PRICE - 1; // the class's ceiling is >= the price
            if (i == 5) {
                // a class of workers taking at most one hour guarantees only 2^11 s
                WorkerDispatcher.Capabilities memory c = _caps();
                c.maxDuration = 3600;
                r.workerClass = _class(c);
                duration = 6 * EPOCH;
            }
            vm.prank(client);
            vm.expectRevert(WorkerDispatcher.ClassDoesNotSatisfy.selector);
            d.buyContract{value: _escrow(PRICE, duration, 1)}(r, duration, maxPrice, 1, _work());
        }
    }

    function test_RevertWhen_BuyContract_InvalidDuration() public {
        uint256[3] memory durations = [uint256(0), EPOCH + 1, uint256(MAX_EPOCHS + 1) * EPOCH];
        for (uint256 i; i < 3; ++i) {
            vm.prank(client);
            vm.expectRevert(WorkerDispatcher.InvalidDuration.selector);
            d.buyContract{value: 1 ether}(_req(_caps()), durations[i], PRICE, 1, _work());
        }
    }

    function test_RevertWhen_BuyContract_InvalidVerifierCount() public {
        uint256[2] memory counts = [uint256(0), 9];
        for (uint256 i; i < 2; ++i) {
            vm.prank(client);
            vm.expectRevert(WorkerDispatcher.InvalidVerifierCount.selector);
            d.buyContract{value: 1 ether}(_req(_caps()), EPOCH, PRICE, counts[i], _work());
        }
    }

    function test_RevertWhen_BuyContract_WrongPayment() public {
        uint256 escrow = _escrow(PRICE, EPOCH, 1);
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(WorkerDispatcher.WrongPayment.selector, escrow));
        d.buyContract{value: escrow + 1}(_req(_caps()), EPOCH, PRICE, 1, _work());
    }

    /*//////////////////////////////////////////////////////////////
                                LIFECYCLE
    //////////////////////////////////////////////////////////////*/

    function test_AcceptAgreement() public {
        uint256 id = _buy(client, 2, 1);
        address w = _agreement(id).worker;
        vm.warp(block.timestamp + ACCEPT_WINDOW - 1);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.AgreementAccepted(id, client, w, block.timestamp + READY_WINDOW);
        vm.prank(w);
        d.acceptAgreement(id);
        assertEq(uint8(_agreement(id).state), uint8(WorkAgreement.State.Accepted));
        assertEq(_agreement(id).acceptedAt, block.timestamp);
    }

    function test_RevertWhen_AcceptAgreement_NotWorker() public {
        uint256 id = _buy(client, 2, 1);
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NotWorker.selector);
        d.acceptAgreement(id);
    }

    function test_RevertWhen_AcceptAgreement_DeadlinePassed() public {
        uint256 id = _buy(client, 2, 1);
        uint256 deadline = block.timestamp + ACCEPT_WINDOW;
        vm.warp(deadline);
        vm.prank(_agreement(id).worker);
        vm.expectRevert(abi.encodeWithSelector(WorkerDispatcher.DeadlinePassed.selector, deadline));
        d.acceptAgreement(id);
    }

    function test_RevertWhen_AcceptAgreement_WrongState() public {
        vm.expectRevert(
            abi.encodeWithSelector(WorkerDispatcher.WrongState.selector, WorkAgreement.State.None)
        );
        d.acceptAgreement(42);
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        vm.prank(_agreement(id).worker);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Accepted
            )
        );
        d.acceptAgreement(id);
    }

    function test_DeclineAgreement() public {
        uint256 id = _buy(client, 2, 2);
        address w = _agreement(id).worker;
        uint256 escrow = _escrow(PRICE, 2 * EPOCH, 2);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.StakeSlashed(w, id, client, ACCEPT_PENALTY);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.AgreementCancelled(id, client, w, escrow);
        vm.prank(w);
        d.declineAgreement(id);
        assertEq(uint8(_agreement(id).state), uint8(WorkAgreement.State.Cancelled));
        assertEq(d.credits(client), escrow + ACCEPT_PENALTY);
        assertEq(d.getWorker(w).stake, MIN_STAKE - ACCEPT_PENALTY);
        assertEq(d.getWorker(w).running, 0);
        _assertSolvent();
    }

    function test_RevertWhen_DeclineAgreement_NotWorker() public {
        uint256 id = _buy(client, 2, 1);
        vm.prank(stranger);
        vm.expectRevert(WorkerDispatcher.NotWorker.selector);
        d.declineAgreement(id);
    }

    function test_RevertWhen_DeclineAgreement_WrongState() public {
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        vm.prank(_agreement(id).worker);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Accepted
            )
        );
        d.declineAgreement(id);
    }

    function test_CancelAgreement_AfterAcceptWindow() public {
        uint256 id = _buy(client, 2, 1);
        vm.warp(block.timestamp + ACCEPT_WINDOW);
        vm.prank(client);
        d.cancelAgreement(id);
        assertEq(uint8(_agreement(id).state), uint8(WorkAgreement.State.Cancelled));
        assertEq(d.credits(client), _escrow(PRICE, 2 * EPOCH, 1) + ACCEPT_PENALTY);
        _assertSolvent();
    }

    function test_CancelAgreement_PenaltyCappedAtStake() public {
        // a worker with 20 slots takes 20 agreements and declines them all: the penalties
        // (2 ether) exceed its stake (1 ether), so the last ones take only what is left
        WorkerDispatcher.Capabilities memory c = _caps();
        c.arch = 4;
        c.slots = 20;
        address w = makeAddr("greedy");
        _register(w, c);
        workers.push(w);
        WorkerDispatcher.Requirements memory r = _req(c);
        uint256[] memory ids = new uint256[](20);
        for (uint256 i; i < 20; ++i) {
            vm.prank(client);
            ids[i] = d.buyContract{value: _escrow(PRICE, EPOCH, 1)}(r, EPOCH, PRICE, 1, _work());
        }
        uint256 penalties;
        for (uint256 i; i < 20; ++i) {
            uint256 stake = d.getWorker(w).stake;
            vm.prank(w);
            d.declineAgreement(ids[i]);
            uint256 taken = stake - d.getWorker(w).stake;
            assertEq(taken, _min(ACCEPT_PENALTY, stake));
            penalties += taken;
        }
        assertEq(penalties, MIN_STAKE);
        assertEq(d.getWorker(w).stake, 0);
        assertEq(d.getWorker(w).running, 0);
        assertEq(d.poolSize(r.workerClass), 0);
        assertEq(d.credits(client), 20 * _escrow(PRICE, EPOCH, 1) + MIN_STAKE);
        _assertSolvent();
    }

    function test_RevertWhen_CancelAgreement_BeforeDeadline() public {
        uint256 id = _buy(client, 2, 1);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.DeadlineNotReached.selector, block.timestamp + ACCEPT_WINDOW
            )
        );
        d.cancelAgreement(id);
    }

    function test_RevertWhen_CancelAgreement_NotClient() public {
        uint256 id = _buy(client, 2, 1);
        vm.warp(block.timestamp + ACCEPT_WINDOW);
        vm.prank(stranger);
        vm.expectRevert(WorkerDispatcher.NotClient.selector);
        d.cancelAgreement(id);
    }

    function test_RevertWhen_CancelAgreement_AlreadyAccepted() public {
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        vm.warp(block.timestamp + ACCEPT_WINDOW);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Accepted
            )
        );
        d.cancelAgreement(id);
    }

    function test_DeclareReady() public {
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        address w = _agreement(id).worker;
        vm.warp(block.timestamp + READY_WINDOW - 1);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.AgreementStarted(id, client, w, block.timestamp, 2);
        vm.prank(w);
        d.declareReady(id);
        WorkAgreement.Record memory a = _agreement(id);
        assertEq(uint8(a.state), uint8(WorkAgreement.State.Running));
        assertEq(a.startedAt, block.timestamp);
        assertEq(a.endEpoch, 2);
        (bool started, uint256 epoch, uint256 deadline) = d.epochOf(id);
        assertTrue(started);
        assertEq(epoch, 0);
        assertEq(deadline, block.timestamp + EPOCH + GRACE);
    }

    function test_DeclareReady_NotifiesEachVerifier() public {
        uint256 id = _buy(client, 4, 3);
        _accept(id);
        address w = _agreement(id).worker;
        address[] memory vs = _verifiers(id);
        for (uint256 i; i < vs.length; ++i) {
            vm.expectEmit(address(d));
            emit WorkerDispatcher.VerificationScheduled(id, vs[i], w, block.timestamp, 4);
        }
        vm.prank(w);
        d.declareReady(id);
    }

    function test_RevertWhen_DeclareReady_NotWorker() public {
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NotWorker.selector);
        d.declareReady(id);
    }

    function test_RevertWhen_DeclareReady_NotAccepted() public {
        uint256 id = _buy(client, 2, 1);
        vm.prank(_agreement(id).worker);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Created
            )
        );
        d.declareReady(id);
    }

    function test_RevertWhen_DeclareReady_DeadlinePassed() public {
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        uint256 deadline = block.timestamp + READY_WINDOW;
        vm.warp(deadline);
        vm.prank(_agreement(id).worker);
        vm.expectRevert(abi.encodeWithSelector(WorkerDispatcher.DeadlinePassed.selector, deadline));
        d.declareReady(id);
    }

    function test_AbortAgreement_ByWorkerWhenImageNeverArrives() public {
        uint256 id = _buy(client, 10, 2);
        _accept(id);
        address w = _agreement(id).worker;
        vm.warp(block.timestamp + READY_WINDOW);
        uint256 compensation = uint256(PRICE) * READY_WINDOW / 2;
        uint256 refund = _escrow(PRICE, 10 * EPOCH, 2) - compensation;
        vm.expectEmit(address(d));
        emit WorkerDispatcher.AgreementAborted(id, client, w, compensation, refund);
        vm.prank(w);
        d.abortAgreement(id);
        assertEq(uint8(_agreement(id).state), uint8(WorkAgreement.State.Aborted));
        assertEq(d.credits(w), compensation);
        assertEq(d.credits(client), refund);
        assertEq(d.getWorker(w).running, 0);
        assertTrue(d.getWorker(w).poolIndex != 0, "slot freed");
        _assertSolvent();
    }

    function test_AbortAgreement_ByClientCompensationCapped() public {
        uint256 id = _buy(client, 1, 1); // 600 s of pay < half the ready window
        _accept(id);
        vm.warp(block.timestamp + READY_WINDOW);
        vm.prank(client);
        d.abortAgreement(id);
        address w = _agreement(id).worker;
        assertEq(d.credits(w), uint256(PRICE) * EPOCH);
        assertEq(d.credits(client), VERIFIER_FEE);
        _assertSolvent();
    }

    function test_RevertWhen_AbortAgreement_BeforeDeadline() public {
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.DeadlineNotReached.selector, block.timestamp + READY_WINDOW
            )
        );
        d.abortAgreement(id);
    }

    function test_RevertWhen_AbortAgreement_NotParty() public {
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        vm.warp(block.timestamp + READY_WINDOW);
        vm.prank(_verifiers(id)[0]);
        vm.expectRevert(WorkerDispatcher.NotClientOrWorker.selector);
        d.abortAgreement(id);
    }

    function test_RevertWhen_AbortAgreement_Running() public {
        uint256 id = _buy(client, 2, 1);
        _accept(id);
        _ready(id);
        vm.warp(block.timestamp + READY_WINDOW);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Running
            )
        );
        d.abortAgreement(id);
    }

    /*//////////////////////////////////////////////////////////////
                              VERIFICATION
    //////////////////////////////////////////////////////////////*/

    function _running(uint256 epochs, uint256 verifiers) internal returns (uint256 id) {
        id = _buy(client, epochs, verifiers);
        _accept(id);
        _ready(id);
    }

    function test_ProvideVerification() public {
        uint256 id = _running(3, 3);
        address[] memory vs = _verifiers(id);
        address w = _agreement(id).worker;
        vm.warp(block.timestamp + EPOCH + 10); // epoch 1
        vm.expectEmit(address(d));
        emit WorkerDispatcher.VerificationProvided(id, vs[1], w, 1, true);
        vm.prank(vs[1]);
        d.provideVerification(id, 1, true);
        (uint8 reported, uint8 ok, uint8 outcome) = d.reportsOf(id, 1);
        assertEq(reported, 2);
        assertEq(ok, 2);
        assertEq(outcome, 1);
        assertEq(_agreement(id).servedEpochs, 1);
        // a failing report makes it a tie: neither served nor failed
        vm.prank(vs[0]);
        d.provideVerification(id, 1, false);
        assertEq(_agreement(id).servedEpochs, 0);
        assertEq(_agreement(id).failedEpochs, 0);
        // a second failure makes it failed
        vm.prank(vs[2]);
        d.provideVerification(id, 1, false);
        assertEq(_agreement(id).failedEpochs, 1);
        (, uint256[] memory reports) = d.verifiersOf(id);
        assertEq(reports[0] + reports[1] + reports[2], 3);
    }

    function test_ProvideVerification_InGrace() public {
        uint256 id = _running(3, 1);
        vm.warp(block.timestamp + EPOCH + GRACE - 1); // epoch 0's grace, epoch 1 open
        address v = _verifiers(id)[0];
        vm.startPrank(v);
        d.provideVerification(id, 0, true);
        d.provideVerification(id, 1, true);
        vm.stopPrank();
        assertEq(_agreement(id).servedEpochs, 2);
    }

    function test_RevertWhen_ProvideVerification_NotVerifier() public {
        uint256 id = _running(3, 2);
        address[3] memory callers = [client, _agreement(id).worker, stranger];
        for (uint256 i; i < 3; ++i) {
            vm.prank(callers[i]);
            vm.expectRevert(WorkerDispatcher.NotVerifier.selector);
            d.provideVerification(id, 0, true);
        }
    }

    function test_RevertWhen_ProvideVerification_AlreadyReported() public {
        uint256 id = _running(3, 1);
        address v = _verifiers(id)[0];
        vm.startPrank(v);
        d.provideVerification(id, 0, false);
        vm.expectRevert(WorkerDispatcher.AlreadyReported.selector);
        d.provideVerification(id, 0, true);
        vm.stopPrank();
    }

    function test_RevertWhen_ProvideVerification_OutsideWindow() public {
        uint256 id = _running(3, 1);
        uint256 start = block.timestamp;
        address v = _verifiers(id)[0];
        // too early for epoch 1
        vm.prank(v);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.OutsideReportingWindow.selector,
                start + EPOCH,
                start + 2 * EPOCH + GRACE
            )
        );
        d.provideVerification(id, 1, true);
        // too late for epoch 0
        vm.warp(start + EPOCH + GRACE);
        vm.prank(v);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.OutsideReportingWindow.selector, start, start + EPOCH + GRACE
            )
        );
        d.provideVerification(id, 0, true);
    }

    function test_RevertWhen_ProvideVerification_EpochOutOfRange() public {
        uint256 id = _running(3, 1);
        vm.prank(_verifiers(id)[0]);
        vm.expectRevert(WorkerDispatcher.EpochOutOfRange.selector);
        d.provideVerification(id, 3, true);
    }

    function test_RevertWhen_ProvideVerification_NotRunning() public {
        uint256 id = _buy(client, 3, 1);
        _accept(id);
        vm.prank(_verifiers(id)[0]);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Accepted
            )
        );
        d.provideVerification(id, 0, true);
    }

    /*//////////////////////////////////////////////////////////////
                               TERMINATION
    //////////////////////////////////////////////////////////////*/

    function test_TerminateAgreement_AfterConsecutiveFailures() public {
        uint256 id = _running(10, 2);
        uint256 start = _agreement(id).startedAt;
        _reportAll(id, 0, true);
        _reportAll(id, 1, false);
        _reportAll(id, 2, false);
        _reportAll(id, 3, false);
        vm.warp(start + 4 * EPOCH + GRACE); // epoch 4 is current
        _reportAll(id, 4, true);
        vm.warp(start + 4 * EPOCH + GRACE);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.AgreementTerminated(id, client, _agreement(id).worker, 5);
        vm.prank(client);
        d.terminateAgreement(id, 1);
        WorkAgreement.Record memory a = _agreement(id);
        assertEq(uint8(a.state), uint8(WorkAgreement.State.Terminated));
        assertEq(a.endEpoch, 5);
        // later epochs are closed to reports
        vm.warp(start + 5 * EPOCH);
        vm.prank(_verifiers(id)[0]);
        vm.expectRevert(WorkerDispatcher.EpochOutOfRange.selector);
        d.provideVerification(id, 5, true);
        // settle after epoch 4's window
        vm.warp(start + 5 * EPOCH + GRACE);
        d.redeemPayment(id);
        address w = a.worker;
        uint256 workerPay = 2 * uint256(EPOCH) * PRICE;
        uint256 slash = 3 * uint256(SLASH);
        assertEq(d.credits(w), workerPay);
        uint256 fees = 2 * 5 * uint256(VERIFIER_FEE);
        assertEq(d.credits(client), _escrow(PRICE, 10 * EPOCH, 2) - workerPay - fees + slash);
        assertEq(d.getWorker(w).stake, MIN_STAKE - slash);
        _assertSolvent();
    }

    function test_TerminateAgreement_ByWorker() public {
        // a worker that is down can stop losing stake once the failed run is final
        uint256 id = _running(10, 1);
        uint256 start = _agreement(id).startedAt;
        for (uint256 e; e < 3; ++e) {
            _reportAll(id, e, false);
        }
        vm.warp(start + 3 * EPOCH + GRACE);
        vm.prank(_agreement(id).worker);
        d.terminateAgreement(id, 0);
        assertEq(_agreement(id).endEpoch, 4);
        vm.warp(start + 4 * EPOCH + GRACE);
        d.redeemPayment(id);
        assertEq(d.getWorker(_agreement(id).worker).stake, MIN_STAKE - 3 * uint256(SLASH));
        _assertSolvent();
    }

    function test_UpdateWorker_KeepsRunningTerms() public {
        uint256 id = _buy(client, 2, 1);
        address w = _agreement(id).worker;
        WorkerDispatcher.Capabilities memory c = _caps();
        c.pricePerSecond = PRICE * 2;
        c.slots = 2;
        vm.prank(w);
        d.updateWorker(c);
        assertEq(_agreement(id).pricePerSecond, PRICE, "agreement keeps its price");
        assertEq(d.getWorker(w).pricePerSecond, PRICE * 2);
        // one slot of two is taken: listed in its new class
        assertEq(d.poolSize(_class(c)), 1);
        _accept(id);
        _ready(id);
        _reportAll(id, 0, true);
        _reportAll(id, 1, true);
        vm.warp(uint256(_agreement(id).startedAt) + 2 * EPOCH + GRACE);
        d.redeemPayment(id);
        assertEq(d.credits(w), 2 * uint256(EPOCH) * PRICE);
        _assertSolvent();
    }

    function test_RevertWhen_TerminateAgreement_NotConsecutive() public {
        uint256 id = _running(10, 1);
        uint256 start = _agreement(id).startedAt;
        _reportAll(id, 0, false);
        _reportAll(id, 1, true);
        _reportAll(id, 2, false);
        vm.warp(start + 3 * EPOCH + GRACE);
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NotConsecutiveFailures.selector);
        d.terminateAgreement(id, 0);
    }

    function test_RevertWhen_TerminateAgreement_UnreportedIsNotFailure() public {
        uint256 id = _running(10, 1);
        vm.warp(block.timestamp + 3 * EPOCH + GRACE);
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NotConsecutiveFailures.selector);
        d.terminateAgreement(id, 0);
    }

    function test_RevertWhen_TerminateAgreement_WindowsOpen() public {
        uint256 id = _running(10, 1);
        uint256 start = _agreement(id).startedAt;
        _reportAll(id, 0, false);
        _reportAll(id, 1, false);
        _reportAll(id, 2, false);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.DeadlineNotReached.selector, start + 3 * EPOCH + GRACE
            )
        );
        d.terminateAgreement(id, 0);
    }

    function test_RevertWhen_TerminateAgreement_RunPastEnd() public {
        uint256 id = _running(3, 1);
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.EpochOutOfRange.selector);
        d.terminateAgreement(id, 1);
    }

    function test_RevertWhen_TerminateAgreement_NotClientOrWorker() public {
        uint256 id = _running(10, 1);
        vm.prank(stranger);
        vm.expectRevert(WorkerDispatcher.NotClientOrWorker.selector);
        d.terminateAgreement(id, 0);
    }

    function test_RevertWhen_TerminateAgreement_NotRunning() public {
        uint256 id = _buy(client, 10, 1);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Created
            )
        );
        d.terminateAgreement(id, 0);
    }

    /*//////////////////////////////////////////////////////////////
                                REDEMPTION
    //////////////////////////////////////////////////////////////*/

    function test_RedeemPayment_AllServed() public {
        uint256 id = _running(3, 2);
        for (uint256 e; e < 3; ++e) {
            _reportAll(id, e, true);
        }
        WorkAgreement.Record memory a = _agreement(id);
        vm.warp(uint256(a.startedAt) + 3 * EPOCH + GRACE);
        uint256 pay = 3 * uint256(EPOCH) * PRICE;
        vm.expectEmit(address(d));
        emit WorkerDispatcher.PaymentRedeemed(id, client, a.worker, pay, 0, 3, 0);
        vm.prank(stranger); // anyone may settle; each party gets only its own share
        d.redeemPayment(id);
        assertEq(d.credits(a.worker), pay);
        assertEq(d.credits(client), 0);
        assertEq(d.credits(stranger), 0);
        address[] memory vs = _verifiers(id);
        for (uint256 i; i < vs.length; ++i) {
            assertEq(d.credits(vs[i]), 3 * uint256(VERIFIER_FEE));
        }
        assertEq(uint8(_agreement(id).state), uint8(WorkAgreement.State.Finished));
        assertEq(d.getWorker(a.worker).running, 0);
        _assertSolvent();
    }

    function test_RedeemPayment_MixedEpochs() public {
        uint256 id = _running(4, 3);
        address[] memory vs = _verifiers(id);
        uint256 start = _agreement(id).startedAt;
        _reportAll(id, 0, true); // served
        _reportAll(id, 1, false); // failed
        vm.warp(start + 2 * EPOCH); // epoch 2: one report only, ok -> served
        vm.prank(vs[0]);
        d.provideVerification(id, 2, true);
        // epoch 3: nobody reports -> unjudged (refunded, not slashed)
        vm.warp(start + 4 * EPOCH + GRACE);
        d.redeemPayment(id);
        address w = _agreement(id).worker;
        uint256 workerPay = 2 * uint256(EPOCH) * PRICE;
        assertEq(d.credits(w), workerPay);
        assertEq(d.credits(vs[0]), 3 * uint256(VERIFIER_FEE));
        assertEq(d.credits(vs[1]), 2 * uint256(VERIFIER_FEE));
        uint256 unusedFees = (12 - 7) * uint256(VERIFIER_FEE);
        assertEq(d.credits(client), 4 * uint256(EPOCH) * PRICE - workerPay + unusedFees + SLASH);
        assertEq(d.getWorker(w).stake, MIN_STAKE - SLASH);
        _assertSolvent();
    }

    function test_RedeemPayment_RefundsPriceBelowClassCeiling() public {
        // a cheaper worker in a class whose ceiling is PRICE: the client escrows the ceiling
        // and gets the difference back
        WorkerDispatcher.Capabilities memory c = _caps();
        c.arch = 4;
        c.pricePerSecond = PRICE - 1000;
        assertEq(_class(c) & 0xffff, _class(_caps()) & 0xffff, "same price code");
        address cheap = makeAddr("cheap");
        _register(cheap, c);
        workers.push(cheap);
        WorkerDispatcher.Requirements memory r = _req(c);
        uint256 value = d.quote(r.workerClass, 2 * EPOCH, 1);
        assertEq(value, _escrow(PRICE, 2 * EPOCH, 1));
        vm.prank(client);
        uint256 id = d.buyContract{value: value}(r, 2 * EPOCH, PRICE, 1, _work());
        assertEq(_agreement(id).pricePerSecond, PRICE - 1000);
        _accept(id);
        _ready(id);
        _reportAll(id, 0, true);
        _reportAll(id, 1, true);
        vm.warp(uint256(_agreement(id).startedAt) + 2 * EPOCH + GRACE);
        d.redeemPayment(id);
        assertEq(d.credits(cheap), 2 * uint256(EPOCH) * (PRICE - 1000));
        assertEq(d.credits(client), 2 * uint256(EPOCH) * 1000);
        _assertSolvent();
    }

    function test_RedeemPayment_SlashCappedAtStake() public {
        uint256 id = _running(30, 1);
        for (uint256 e; e < 30; ++e) {
            _reportAll(id, e, false);
        }
        vm.warp(uint256(_agreement(id).startedAt) + 30 * EPOCH + GRACE);
        d.redeemPayment(id);
        address w = _agreement(id).worker;
        assertEq(d.getWorker(w).stake, 0); // 30 * 0.05 > 1 ether: capped, never below zero
        assertEq(d.getWorker(w).activeIndex, 0);
        assertEq(d.credits(client), 30 * uint256(EPOCH) * PRICE + MIN_STAKE);
        _assertSolvent();
    }

    function test_RevertWhen_RedeemPayment_Early() public {
        uint256 id = _running(3, 1);
        uint256 closes = block.timestamp + 3 * EPOCH + GRACE;
        vm.warp(closes - 1);
        vm.expectRevert(
            abi.encodeWithSelector(WorkerDispatcher.DeadlineNotReached.selector, closes)
        );
        d.redeemPayment(id);
    }

    function test_RevertWhen_RedeemPayment_Twice() public {
        uint256 id = _running(1, 1);
        vm.warp(block.timestamp + EPOCH + GRACE);
        d.redeemPayment(id);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Finished
            )
        );
        d.redeemPayment(id);
    }

    function test_RevertWhen_RedeemPayment_NotStarted() public {
        uint256 id = _buy(client, 1, 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Created
            )
        );
        d.redeemPayment(id);
    }

    function testFuzz_RedeemPayment_ConservesEscrow(uint256 seed, uint256 epochs, uint256 count)
        public
    {
        epochs = bound(epochs, 1, 40);
        count = bound(count, 1, 8);
        _ensureWorkers(count + 1);
        uint256 id = _running(epochs, count);
        address[] memory vs = _verifiers(id);
        uint256 start = _agreement(id).startedAt;
        for (uint256 e; e < epochs; ++e) {
            vm.warp(start + e * EPOCH);
            for (uint256 i; i < count; ++i) {
                uint256 r = uint256(keccak256(abi.encode(seed, e, i))) % 3; // 0 skip, 1 ok, 2 fail
                if (r == 0) continue;
                vm.prank(vs[i]);
                d.provideVerification(id, e, r == 1);
            }
        }
        address w = _agreement(id).worker;
        uint256 stakeBefore = d.getWorker(w).stake;
        vm.warp(start + epochs * EPOCH + GRACE);
        d.redeemPayment(id);
        WorkAgreement.Record memory a = _agreement(id);
        assertLe(a.servedEpochs + a.failedEpochs, epochs);
        uint256 slashed = stakeBefore - d.getWorker(w).stake;
        uint256 total = d.credits(w) + d.credits(client);
        for (uint256 i; i < count; ++i) {
            total += d.credits(vs[i]);
        }
        assertEq(total, _escrow(PRICE, epochs * EPOCH, count) + slashed);
        assertEq(d.credits(w), uint256(a.servedEpochs) * EPOCH * PRICE);
        assertEq(slashed, _min(uint256(a.failedEpochs) * SLASH, stakeBefore));
        uint256[] memory agreed = _agreedByCount(id, epochs, count);
        for (uint256 i; i < count; ++i) {
            assertEq(
                d.credits(vs[i]), agreed[i] * VERIFIER_FEE, "verifier paid its agreeing reports"
            );
        }
        _assertSolvent();
    }

    /// @dev Registers more workers until there are `n`.
    function _ensureWorkers(uint256 n) internal {
        while (workers.length < n) {
            address w = makeAddr(string.concat("extra", vm.toString(workers.length)));
            _register(w, _caps());
            workers.push(w);
        }
    }

    /// @dev The model: per verifier, its reports that agreed with the epoch's majority, counted
    /// directly from each epoch's masks (reportsOf), one epoch and one verifier at a time.
    function _agreedByCount(uint256 id, uint256 epochs, uint256 count)
        internal
        view
        returns (uint256[] memory agreed)
    {
        agreed = new uint256[](count);
        for (uint256 e; e < epochs; ++e) {
            (uint8 reported, uint8 ok,) = d.reportsOf(id, e);
            uint256 oks;
            uint256 fails;
            for (uint256 i; i < count; ++i) {
                if ((reported >> i) & 1 == 0) continue;
                if ((ok >> i) & 1 == 1) ++oks;
                else ++fails;
            }
            if (oks == fails) continue;
            for (uint256 i; i < count; ++i) {
                if ((reported >> i) & 1 == 1 && (((ok >> i) & 1 == 1) == (oks > fails))) {
                    ++agreed[i];
                }
            }
        }
    }

    /*//////////////////////////////////////////////////////////////
                               VERIFIER PAY
    //////////////////////////////////////////////////////////////*/

    /// @dev On `epoch`, at its start, verifier i reports if bit i of `reporters` is set, saying
    /// ok if bit i of `oks` is set.
    function _report(uint256 id, uint256 epoch, uint256 reporters, uint256 oks) internal {
        vm.warp(uint256(_agreement(id).startedAt) + epoch * EPOCH);
        address[] memory vs = _verifiers(id);
        for (uint256 i; i < vs.length; ++i) {
            if ((reporters >> i) & 1 == 0) continue;
            vm.prank(vs[i]);
            d.provideVerification(id, epoch, (oks >> i) & 1 == 1);
        }
    }

    function _settle(uint256 id) internal {
        WorkAgreement.Record memory a = _agreement(id);
        vm.warp(uint256(a.startedAt) + uint256(a.endEpoch) * EPOCH + GRACE);
        d.redeemPayment(id);
    }

    /// @dev How many VerifierPaid logs name `verifier` among the recorded logs.
    function _verifierPaidLogs(VmSafeLog[] memory logs, address verifier)
        internal
        pure
        returns (uint256 n)
    {
        for (uint256 i; i < logs.length; ++i) {
            if (
                logs[i].topics[0] == WorkerDispatcher.VerifierPaid.selector
                    && logs[i].topics[2] == bytes32(uint256(uint160(verifier)))
            ) ++n;
        }
    }

    function test_RedeemPayment_LiarUnpaid_HonestMajorityPaid() public {
        // Epochs 0-1 served (v0, v1 say ok, v2 lies "failed"); epoch 2 the worker is down (v0,
        // v1 say failed, v2 lies "ok"). The liar is outvoted every time.
        uint256 id = _running(3, 3);
        address[] memory vs = _verifiers(id);
        address w = _agreement(id).worker;
        _report(id, 0, 7, 3);
        _report(id, 1, 7, 3);
        _report(id, 2, 7, 4);
        WorkAgreement.Record memory a = _agreement(id);
        assertEq(a.servedEpochs, 2);
        assertEq(a.failedEpochs, 1);
        vm.warp(uint256(a.startedAt) + 3 * EPOCH + GRACE);
        uint256 workerPay = 2 * uint256(EPOCH) * PRICE;
        uint256 fee = VERIFIER_FEE;
        vm.expectEmit(address(d));
        emit WorkerDispatcher.VerifierPaid(id, vs[0], 3, 3 * fee);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.VerifierPaid(id, vs[1], 3, 3 * fee);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.VerifierPaid(id, vs[2], 0, 0);
        d.redeemPayment(id);
        assertEq(d.credits(vs[0]), 3 * fee, "honest verifier: every report paid");
        assertEq(d.credits(vs[1]), 3 * fee, "honest verifier: every report paid");
        assertEq(d.credits(vs[2]), 0, "liar: nothing");
        assertEq(d.credits(w), workerPay, "worker: the two served epochs");
        assertEq(d.getWorker(w).stake, MIN_STAKE - SLASH);
        // escrow = 3 epochs of pay + 9 fees; the liar's 3 fees go back to the client, to the wei
        assertEq(
            d.credits(client),
            3 * uint256(EPOCH) * PRICE + 9 * fee - workerPay - 6 * fee + SLASH,
            "client: the exact rest"
        );
        (, uint256[] memory onTime) = d.verifiersOf(id);
        assertEq(onTime[2], 3, "verifiersOf still counts the liar's on-time reports");
        _assertSolvent();
    }

    function test_RedeemPayment_SilentVerifierUnpaid() public {
        uint256 id = _running(3, 3);
        address[] memory vs = _verifiers(id);
        for (uint256 e; e < 3; ++e) {
            _report(id, e, 3, 3); // v2 never reports
        }
        vm.recordLogs();
        _settle(id);
        VmSafeLog[] memory logs = _logs();
        assertEq(d.credits(vs[0]), 3 * uint256(VERIFIER_FEE));
        assertEq(d.credits(vs[1]), 3 * uint256(VERIFIER_FEE));
        assertEq(d.credits(vs[2]), 0);
        assertEq(_verifierPaidLogs(logs, vs[0]), 1);
        assertEq(_verifierPaidLogs(logs, vs[2]), 0, "a silent verifier is not named");
        assertEq(d.credits(client), 3 * uint256(VERIFIER_FEE));
        _assertSolvent();
    }

    function test_RedeemPayment_TiePaysNoVerifier() public {
        // 2 verifiers: epoch 0 a tie (v0 ok, v1 failed), epoch 1 both ok
        uint256 id = _running(2, 2);
        address[] memory vs = _verifiers(id);
        _report(id, 0, 3, 1);
        _report(id, 1, 3, 3);
        (,, uint8 outcome) = d.reportsOf(id, 0);
        assertEq(outcome, WorkAgreement.UNJUDGED);
        _settle(id);
        assertEq(d.credits(vs[0]), uint256(VERIFIER_FEE), "nothing for the tied epoch");
        assertEq(d.credits(vs[1]), uint256(VERIFIER_FEE), "nothing for the tied epoch");
        uint256 pay = uint256(EPOCH) * PRICE;
        assertEq(d.credits(_agreement(id).worker), pay);
        assertEq(
            d.credits(client), 2 * pay + 4 * uint256(VERIFIER_FEE) - pay - 2 * uint256(VERIFIER_FEE)
        );
        _assertSolvent();
    }

    function test_RedeemPayment_TieOfFour_NoVerifierPaid() public {
        // 4 verifiers split 2-2 on every epoch: nobody can be shown right, nobody is paid
        uint256 id = _running(3, 4);
        address[] memory vs = _verifiers(id);
        for (uint256 e; e < 3; ++e) {
            _report(id, e, 15, e % 2 == 0 ? 3 : 12);
        }
        _settle(id);
        for (uint256 i; i < 4; ++i) {
            assertEq(d.credits(vs[i]), 0);
        }
        assertEq(d.credits(_agreement(id).worker), 0);
        assertEq(d.credits(client), _escrow(PRICE, 3 * EPOCH, 4), "the whole escrow back");
        _assertSolvent();
    }

    function test_RedeemPayment_PartialLiarPaidForTrueReportsOnly() public {
        // 20 epochs (two report words), worker always up. v0 and v1 always say ok; v2 lies
        // ("failed") on every third epoch (0, 3, ..., 18: 7 epochs) and tells the truth on 13.
        uint256 epochs = 20;
        uint256 id = _running(epochs, 3);
        address[] memory vs = _verifiers(id);
        for (uint256 e; e < epochs; ++e) {
            _report(id, e, 7, e % 3 == 0 ? 3 : 7);
        }
        vm.warp(uint256(_agreement(id).startedAt) + epochs * EPOCH + GRACE);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.VerifierPaid(id, vs[2], 13, 13 * uint256(VERIFIER_FEE));
        d.redeemPayment(id);
        assertEq(d.credits(vs[0]), 20 * uint256(VERIFIER_FEE));
        assertEq(d.credits(vs[1]), 20 * uint256(VERIFIER_FEE));
        assertEq(d.credits(vs[2]), 13 * uint256(VERIFIER_FEE), "paid exactly its true reports");
        assertEq(d.credits(_agreement(id).worker), epochs * EPOCH * PRICE);
        assertEq(d.credits(client), 7 * uint256(VERIFIER_FEE));
        _assertSolvent();
    }

    function test_RedeemPayment_TerminatedCountsOnlyUpToEndEpoch() public {
        // 3 verifiers, 10 epochs, failed run 0-2 (v2 lies "ok"), terminated in epoch 3
        uint256 id = _running(10, 3);
        address[] memory vs = _verifiers(id);
        for (uint256 e; e < 3; ++e) {
            _report(id, e, 7, 4);
        }
        _report(id, 3, 7, 7); // epoch 3 served
        vm.warp(uint256(_agreement(id).startedAt) + 3 * EPOCH + GRACE);
        vm.prank(client);
        d.terminateAgreement(id, 0);
        assertEq(_agreement(id).endEpoch, 4);
        _settle(id);
        assertEq(d.credits(vs[0]), 4 * uint256(VERIFIER_FEE));
        assertEq(d.credits(vs[1]), 4 * uint256(VERIFIER_FEE));
        assertEq(d.credits(vs[2]), 1 * uint256(VERIFIER_FEE));
        _assertSolvent();
    }

    /// @dev The residual threat: two colluding liars out of three ARE the majority. They swing
    /// every epoch to failed: the honest worker earns nothing and is slashed, the liars are
    /// paid, the honest verifier is not. Nothing on chain can tell them apart; what answers it is
    /// the draw (random, from all staked workers, after the buy), see contracts/README.md.
    function test_RedeemPayment_TwoLiarsOfThreeSwingTheOutcome() public {
        uint256 id = _running(3, 3);
        address[] memory vs = _verifiers(id);
        address w = _agreement(id).worker;
        for (uint256 e; e < 3; ++e) {
            _report(id, e, 7, 1); // the worker is up: v0 says ok, v1 and v2 lie "failed"
        }
        WorkAgreement.Record memory a = _agreement(id);
        assertEq(a.servedEpochs, 0);
        assertEq(a.failedEpochs, 3);
        _settle(id);
        assertEq(d.credits(w), 0, "the honest worker is not paid");
        assertEq(d.getWorker(w).stake, MIN_STAKE - 3 * uint256(SLASH), "and is slashed");
        assertEq(d.credits(vs[0]), 0, "the honest verifier is outvoted");
        assertEq(d.credits(vs[1]), 3 * uint256(VERIFIER_FEE), "the liars are paid");
        assertEq(d.credits(vs[2]), 3 * uint256(VERIFIER_FEE), "the liars are paid");
        assertEq(
            d.credits(client),
            3 * uint256(EPOCH) * PRICE + 3 * uint256(VERIFIER_FEE) + 3 * uint256(SLASH)
        );
        _assertSolvent();
    }

    function _min(uint256 a, uint256 b) internal pure returns (uint256) {
        return a < b ? a : b;
    }

    /*//////////////////////////////////////////////////////////////
                             PRIVATE CHANNEL
    //////////////////////////////////////////////////////////////*/

    function test_SendMessage() public {
        uint256 id = _buy(client, 2, 2);
        address w = _agreement(id).worker;
        address v = _verifiers(id)[1];
        bytes memory ct = hex"deadbeef";
        vm.expectEmit(address(d));
        emit WorkerDispatcher.MessageSent(id, client, w, ct);
        vm.prank(client);
        d.sendMessage(id, w, ct);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.MessageSent(id, client, v, ct);
        vm.prank(client);
        d.sendMessage(id, v, ct);
        vm.expectEmit(address(d));
        emit WorkerDispatcher.MessageSent(id, v, w, ct);
        vm.prank(v);
        d.sendMessage(id, w, ct);
    }

    function test_RevertWhen_SendMessage_NotParty() public {
        uint256 id = _buy(client, 2, 1);
        address w = _agreement(id).worker;
        vm.prank(stranger);
        vm.expectRevert(WorkerDispatcher.NotParty.selector);
        d.sendMessage(id, w, hex"00");
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NotParty.selector);
        d.sendMessage(id, stranger, hex"00");
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NotParty.selector);
        d.sendMessage(id, client, hex"00");
    }

    function test_RevertWhen_SendMessage_TooLong() public {
        uint256 id = _buy(client, 2, 1);
        address w = _agreement(id).worker;
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.MessageTooLong.selector);
        d.sendMessage(id, w, new bytes(4097));
    }

    function test_RevertWhen_SendMessage_Closed() public {
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(WorkerDispatcher.WrongState.selector, WorkAgreement.State.None)
        );
        d.sendMessage(99, stranger, hex"00");
        uint256 id = _buy(client, 2, 1);
        address w = _agreement(id).worker;
        vm.prank(w);
        d.declineAgreement(id);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                WorkerDispatcher.WrongState.selector, WorkAgreement.State.Cancelled
            )
        );
        d.sendMessage(id, w, hex"00");
    }

    /*//////////////////////////////////////////////////////////////
                                PAYMENTS
    //////////////////////////////////////////////////////////////*/

    function test_Withdraw() public {
        uint256 id = _buy(client, 2, 1);
        vm.prank(_agreement(id).worker);
        d.declineAgreement(id);
        uint256 amount = d.credits(client);
        uint256 before = client.balance;
        vm.expectEmit(address(d));
        emit WorkerDispatcher.Withdrawn(client, amount);
        vm.prank(client);
        d.withdraw();
        assertEq(client.balance, before + amount);
        assertEq(d.credits(client), 0);
        vm.prank(client);
        vm.expectRevert(WorkerDispatcher.NothingToWithdraw.selector);
        d.withdraw();
        _assertSolvent();
    }

    function test_RevertWhen_Withdraw_NothingToWithdraw() public {
        vm.prank(stranger);
        vm.expectRevert(WorkerDispatcher.NothingToWithdraw.selector);
        d.withdraw();
    }

    function test_RevertWhen_Withdraw_Reentered() public {
        Reenterer r = new Reenterer(d);
        vm.deal(address(r), MIN_STAKE);
        r.register{value: MIN_STAKE}(_caps());
        r.leave();
        vm.warp(block.timestamp + UNBONDING);
        r.withdrawStake();
        uint256 balance = address(d).balance;
        r.pull();
        assertTrue(r.reentered());
        // the credit was zeroed before the transfer: the re-entered call finds nothing
        assertEq(
            r.innerError(), abi.encodeWithSelector(WorkerDispatcher.NothingToWithdraw.selector)
        );
        assertEq(r.received(), MIN_STAKE, "paid once");
        assertEq(address(d).balance, balance - MIN_STAKE);
        assertEq(d.credits(address(r)), 0);
    }

    function test_RevertWhen_Withdraw_TransferFails() public {
        Refuser r = new Refuser();
        vm.deal(address(r), MIN_STAKE);
        r.register{value: MIN_STAKE}(d, _caps());
        r.leave(d);
        vm.warp(block.timestamp + UNBONDING);
        r.withdrawStake(d);
        vm.expectRevert(WorkerDispatcher.TransferFailed.selector);
        r.pull(d);
        assertEq(d.credits(address(r)), MIN_STAKE, "credit kept");
    }

    /*//////////////////////////////////////////////////////////////
                                  VIEWS
    //////////////////////////////////////////////////////////////*/

    function test_ClassOf_MatchesLibrary() public view {
        WorkerDispatcher.Capabilities memory c = _caps();
        assertEq(d.classOf(c), _class(c));
        assertEq(d.getWorker(workers[0]).class, _class(c));
    }

    function test_BuyContract_DrawDoesNotDependOnCaller() public {
        // the same block and id give the same draw whoever buys: no grinding over addresses
        address other = makeAddr("other client");
        vm.deal(other, 100 ether);
        vm.prevrandao(uint256(7));
        uint256 snap = vm.snapshotState();
        uint256 id = _buy(client, 1, 2);
        address w1 = _agreement(id).worker;
        address[] memory v1 = _verifiers(id);
        vm.revertToState(snap);
        id = _buy(other, 1, 2);
        assertEq(_agreement(id).worker, w1);
        assertEq(abi.encode(_verifiers(id)), abi.encode(v1));
    }

    function test_Views() public {
        assertEq(d.quote(_class(_caps()), 3 * EPOCH, 2), _escrow(PRICE, 3 * EPOCH, 2));
        WorkerDispatcher.Requirements memory r = _req(_caps());
        assertTrue(d.classSatisfies(r, EPOCH, PRICE));
        assertFalse(d.classSatisfies(r, EPOCH, PRICE - 1));
        assertGe(d.classPriceCeiling(r.workerClass), PRICE);
        (bool started,,) = d.epochOf(1);
        assertFalse(started);
        uint256 id = _running(3, 1);
        vm.warp(block.timestamp + 2 * EPOCH + 5);
        (bool s, uint256 e,) = d.epochOf(id);
        assertTrue(s);
        assertEq(e, 2);
        assertEq(d.getWorker(stranger).stake, 0);
        assertEq(_agreement(999).client, address(0));
    }
}
