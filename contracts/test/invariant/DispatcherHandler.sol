// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {WorkerDispatcher} from "../../src/WorkerDispatcher.sol";
import {WorkAgreement} from "../../src/WorkAgreement.sol";
import {WorkerClass} from "../../src/WorkerClass.sol";

/// @dev Drives the dispatcher through random sequences of every user action, with ghost
/// variables for what must never happen. Failed actions are fine (they are random); wrong
/// successes and wrong amounts set a flag the invariants check.
contract DispatcherHandler is Test {
    WorkerDispatcher public immutable d;
    uint256 internal immutable epochLength;
    uint256 internal immutable grace;
    uint256 internal immutable fee;
    uint256 internal immutable minStake;

    address[] public actors; // workers first, then clients
    uint256 internal constant WORKERS = 8;
    uint80 internal constant PRICE = 15 << 26;

    uint256[] public ids;
    mapping(uint256 id => WorkAgreement.State) public closedAs; // terminal state at closure

    // ghosts
    uint256 public ghostIn; // stakes and escrows paid in
    uint256 public ghostOut; // withdrawn
    uint256 public violations;
    string public lastViolation;
    mapping(bytes32 => uint256) public calls;

    constructor(WorkerDispatcher d_) {
        d = d_;
        WorkerDispatcher.Params memory p = d_.params();
        epochLength = p.epochLength;
        grace = p.reportGrace;
        fee = p.verifierFee;
        minStake = p.minStake;
        for (uint256 i; i < WORKERS; ++i) {
            address w = makeAddr(string.concat("inv-worker", vm.toString(i)));
            actors.push(w);
            vm.deal(w, 100 ether);
            vm.prank(w);
            d.registerWorker{value: minStake}(_caps(2, i));
            ghostIn += minStake;
        }
        for (uint256 i; i < 2; ++i) {
            address c = makeAddr(string.concat("inv-client", vm.toString(i)));
            actors.push(c);
            vm.deal(c, 1_000_000 ether);
        }
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    function idCount() external view returns (uint256) {
        return ids.length;
    }

    /// @dev Worker `i` asks a little less than the class ceiling (same class for every i < 8),
    /// so settlements also refund the ceiling's excess.
    function _caps(uint8 slots, uint256 i)
        internal
        pure
        returns (WorkerDispatcher.Capabilities memory c)
    {
        c.arch = 2;
        c.cpuMillis = 4000;
        c.memoryMiB = 4096;
        c.diskMiB = 32_768;
        c.pricePerSecond = uint80(PRICE - (i % 8) * 1000);
        c.maxDuration = 30 days;
        c.slots = slots;
        c.encryptionKey = keccak256("k");
    }

    function _violation(string memory what) internal {
        violations += 1;
        lastViolation = what;
    }

    function _hit(string memory action) internal {
        calls[keccak256(bytes(action))] += 1;
    }

    function _actor(uint256 seed) internal view returns (address) {
        return actors[seed % actors.length];
    }

    function _worker(uint256 seed) internal view returns (address) {
        return actors[seed % WORKERS];
    }

    function _id(uint256 seed) internal view returns (uint256) {
        if (ids.length == 0) return 0;
        return ids[seed % ids.length];
    }

    /// @dev An agreement in state `want`, scanning from a random offset (0 if none), so that
    /// the random walk spends its calls on actions that can succeed.
    function _idIn(uint256 seed, WorkAgreement.State want) internal view returns (uint256) {
        uint256 n = ids.length;
        for (uint256 k; k < n; ++k) {
            uint256 id = ids[(seed % n + k) % n];
            if (d.getAgreement(id).state == want) return id;
        }
        return _id(seed);
    }

    function _state(uint256 id) internal view returns (WorkAgreement.State) {
        return d.getAgreement(id).state;
    }

    function _escrow(WorkAgreement.Record memory a) internal view returns (uint256) {
        return WorkerClass.priceCeiling(a.priceCode) * a.epochs * epochLength
            + uint256(a.verifierCount) * a.epochs * fee;
    }

    function _creditsOfParties(uint256 id) internal view returns (uint256 total) {
        WorkAgreement.Record memory a = d.getAgreement(id);
        total = d.credits(a.client) + d.credits(a.worker);
        (address[] memory vs,) = d.verifiersOf(id);
        for (uint256 i; i < vs.length; ++i) {
            if (vs[i] != a.client && vs[i] != a.worker) total += d.credits(vs[i]);
        }
    }

    /// @dev Closing an agreement must credit exactly its escrow plus what the worker's stake
    /// lost, and may happen once.
    function _closed(uint256 id, uint256 creditsBefore, uint256 stakeBefore) internal {
        WorkAgreement.Record memory a = d.getAgreement(id);
        if (closedAs[id] != WorkAgreement.State.None) _violation("closed twice");
        closedAs[id] = a.state;
        uint256 stakeAfter = d.getWorker(a.worker).stake;
        if (stakeAfter > stakeBefore) _violation("stake grew on settlement");
        uint256 credited = _creditsOfParties(id) - creditsBefore;
        if (credited != _escrow(a) + (stakeBefore - stakeAfter)) _violation("settlement leak");
    }

    /*////////////////////////////////////////////////////////////// actions */

    function buy(uint256 clientSeed, uint256 epochs, uint256 verifiers, uint256 rand) external {
        address c = actors[WORKERS + clientSeed % 2];
        epochs = bound(epochs, 1, 6);
        verifiers = bound(verifiers, 1, 3);
        vm.prevrandao(rand);
        WorkerDispatcher.Capabilities memory caps = _caps(2, 0);
        WorkerDispatcher.Requirements memory r = WorkerDispatcher.Requirements({
            workerClass: WorkerClass.classOf(
                caps.arch, caps.cpuMillis, caps.memoryMiB, caps.diskMiB, caps.maxDuration, PRICE
            ),
            arch: 2,
            cpuMillis: 1000,
            memoryMiB: 1000,
            diskMiB: 1000
        });
        uint256 duration = epochs * epochLength;
        uint256 value = d.quote(r.workerClass, duration, verifiers);
        WorkerDispatcher.WorkCommitment memory w;
        vm.prank(c);
        try d.buyContract{value: value}(r, duration, PRICE, verifiers, w) returns (uint256 id) {
            ids.push(id);
            ghostIn += value;
            _hit("buy");
        } catch {}
    }

    function accept(uint256 seed) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Created);
        vm.prank(d.getAgreement(id).worker);
        try d.acceptAgreement(id) {
            _hit("accept");
        } catch {}
    }

    function ready(uint256 seed) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Accepted);
        vm.prank(d.getAgreement(id).worker);
        try d.declareReady(id) {
            _hit("ready");
        } catch {}
    }

    function decline(uint256 seed) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Created);
        WorkAgreement.Record memory a = d.getAgreement(id);
        uint256 cb = _creditsOfParties(id);
        uint256 sb = d.getWorker(a.worker).stake;
        vm.prank(a.worker);
        try d.declineAgreement(id) {
            _closed(id, cb, sb);
            _hit("decline");
        } catch {}
    }

    function cancel(uint256 seed) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Created);
        WorkAgreement.Record memory a = d.getAgreement(id);
        uint256 cb = _creditsOfParties(id);
        uint256 sb = d.getWorker(a.worker).stake;
        vm.prank(a.client);
        try d.cancelAgreement(id) {
            _closed(id, cb, sb);
            _hit("cancel");
        } catch {}
    }

    function abort(uint256 seed, bool byWorker) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Accepted);
        WorkAgreement.Record memory a = d.getAgreement(id);
        uint256 cb = _creditsOfParties(id);
        uint256 sb = d.getWorker(a.worker).stake;
        vm.prank(byWorker ? a.worker : a.client);
        try d.abortAgreement(id) {
            _closed(id, cb, sb);
            _hit("abort");
        } catch {}
    }

    function verify(uint256 seed, uint256 who, uint256 epoch, bool ok) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Running);
        address caller = _actor(who);
        (address[] memory vs,) = d.verifiersOf(id);
        // mostly a real verifier, sometimes anyone
        if (vs.length != 0 && who % 4 != 0) caller = vs[(who / 4) % vs.length];
        // mostly the current epoch (reports on time), sometimes any epoch
        (bool started, uint256 current,) = d.epochOf(id);
        epoch = started && epoch % 4 != 0 ? current : bound(epoch, 0, 6);
        vm.prank(caller);
        try d.provideVerification(id, epoch, ok && (who % 3 != 0)) {
            bool isVerifier;
            for (uint256 i; i < vs.length; ++i) {
                if (vs[i] == caller) isVerifier = true;
            }
            if (!isVerifier) _violation("non-verifier verified");
            _hit("verify");
        } catch {}
    }

    /// @dev Someone who is not among the agreement's verifiers (its client, its worker, another
    /// worker) tries to report on the current epoch; it must never succeed.
    function verifyAsOutsider(uint256 seed, uint256 who, bool ok) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Running);
        (address[] memory vs,) = d.verifiersOf(id);
        (, uint256 current,) = d.epochOf(id);
        for (uint256 k; k < actors.length; ++k) {
            address caller = actors[(who % actors.length + k) % actors.length];
            bool isVerifier;
            for (uint256 i; i < vs.length; ++i) {
                if (vs[i] == caller) isVerifier = true;
            }
            if (isVerifier) continue;
            vm.prank(caller);
            try d.provideVerification(id, current, ok) {
                _violation("non-verifier verified");
            } catch {}
            return;
        }
    }

    /// @dev The worker is down for an epoch: every verifier reports a failure on the current
    /// epoch, then time moves one epoch on.
    function outage(uint256 seed) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Running);
        (address[] memory vs,) = d.verifiersOf(id);
        (bool started, uint256 current,) = d.epochOf(id);
        if (!started) return;
        for (uint256 i; i < vs.length; ++i) {
            vm.prank(vs[i]);
            try d.provideVerification(id, current, false) {
                _hit("verify");
            } catch {}
        }
        vm.warp(block.timestamp + epochLength);
    }

    /// @dev The verifiers disagree on an epoch: every verifier reports on the current epoch,
    /// verifier i saying ok iff bit i of `mask` is set (a liar outvoted, a tie, or liars
    /// forming the majority), then time moves one epoch on.
    function dissent(uint256 seed, uint8 mask) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Running);
        (address[] memory vs,) = d.verifiersOf(id);
        (bool started, uint256 current,) = d.epochOf(id);
        if (!started) return;
        bool any;
        for (uint256 i; i < vs.length; ++i) {
            vm.prank(vs[i]);
            try d.provideVerification(id, current, (mask >> i) & 1 == 1) {
                any = true;
                _hit("verify");
            } catch {}
        }
        if (any) _hit("dissent");
        vm.warp(block.timestamp + epochLength);
    }

    function terminate(uint256 seed) external {
        uint256 id = _idIn(seed, WorkAgreement.State.Running);
        WorkAgreement.Record memory a = d.getAgreement(id);
        // find a run of failed epochs, if any
        uint256 first;
        uint256 run;
        for (uint256 e; e < a.endEpoch && run < 3; ++e) {
            (,, uint8 outcome) = d.reportsOf(id, e);
            if (outcome == WorkAgreement.FAILED) {
                if (run == 0) first = e;
                ++run;
            } else {
                run = 0;
            }
        }
        vm.prank(seed % 2 == 0 ? a.client : a.worker);
        try d.terminateAgreement(id, first) {
            _hit("terminate");
        } catch {}
    }

    /// @dev The model of verifier pay: per verifier, its reports on epochs before `endEpoch`
    /// that agreed with the epoch's majority, counted one epoch and one verifier at a time.
    function _agreedReports(uint256 id, WorkAgreement.Record memory a)
        internal
        view
        returns (uint256[] memory agreed)
    {
        uint256 count = a.verifierCount;
        agreed = new uint256[](count);
        for (uint256 e; e < a.endEpoch; ++e) {
            (uint8 reported, uint8 ok,) = d.reportsOf(id, e);
            uint256 oks;
            uint256 fails;
            for (uint256 i; i < count; ++i) {
                if ((reported >> i) & 1 == 0) continue;
                if ((ok >> i) & 1 == 1) ++oks;
                else ++fails;
            }
            if (oks == fails) continue; // a tie or no report: nobody is paid
            for (uint256 i; i < count; ++i) {
                if ((reported >> i) & 1 == 1 && (((ok >> i) & 1 == 1) == (oks > fails))) {
                    ++agreed[i];
                }
            }
        }
    }

    /// @dev After a settlement: each verifier was credited exactly `fee` per agreeing report,
    /// the worker exactly its served epochs.
    function _checkShares(
        uint256 id,
        WorkAgreement.Record memory a,
        uint256[] memory agreed,
        uint256[] memory before,
        uint256 workerBefore
    ) internal {
        (address[] memory vs,) = d.verifiersOf(id);
        for (uint256 i; i < vs.length; ++i) {
            if (d.credits(vs[i]) - before[i] != agreed[i] * fee) _violation("verifier pay");
        }
        a = d.getAgreement(id);
        if (
            d.credits(a.worker) - workerBefore
                != uint256(a.servedEpochs) * epochLength * a.pricePerSecond
        ) {
            _violation("worker pay");
        }
    }

    function redeem(uint256 seed, uint256 who) external {
        uint256 id = _idIn(
            seed, seed % 2 == 0 ? WorkAgreement.State.Running : WorkAgreement.State.Terminated
        );
        WorkAgreement.Record memory a = d.getAgreement(id);
        uint256 cb = _creditsOfParties(id);
        uint256 sb = d.getWorker(a.worker).stake;
        uint256[] memory agreed = _agreedReports(id, a);
        (address[] memory vs,) = d.verifiersOf(id);
        uint256[] memory vb = new uint256[](vs.length);
        for (uint256 i; i < vs.length; ++i) {
            vb[i] = d.credits(vs[i]);
        }
        uint256 wb = d.credits(a.worker);
        bool due =
            (a.state == WorkAgreement.State.Running || a.state == WorkAgreement.State.Terminated)
                && block.timestamp
                    >= uint256(a.startedAt) + uint256(a.endEpoch) * epochLength + grace;
        vm.prank(_actor(who));
        try d.redeemPayment(id) {
            _closed(id, cb, sb);
            _checkShares(id, a, agreed, vb, wb);
            _hit("redeem");
        } catch {
            // settlement can never be blocked once due (e.g. by an exhausted stake)
            if (due) _violation("redeem blocked");
        }
    }

    function withdraw(uint256 who) external {
        address a = _actor(who);
        uint256 owed = d.credits(a);
        uint256 before = a.balance;
        vm.prank(a);
        try d.withdraw() {
            if (a.balance - before != owed) _violation("withdraw amount");
            if (d.credits(a) != 0) _violation("credit left after withdraw");
            ghostOut += owed;
            _hit("withdraw");
        } catch {}
    }

    function pauseOrResume(uint256 who) external {
        address w = _worker(who);
        vm.startPrank(w);
        try d.pauseWorker() {
            _hit("pause");
        } catch {
            try d.resumeWorker() {
                _hit("resume");
            } catch {}
        }
        vm.stopPrank();
    }

    function addStake(uint256 who, uint256 amount) external {
        address w = _worker(who);
        amount = bound(amount, 1, 1 ether);
        vm.prank(w);
        try d.addStake{value: amount}() {
            ghostIn += amount;
            _hit("addStake");
        } catch {}
    }

    function leaveOrRejoin(uint256 who) external {
        address w = _worker(who);
        WorkerDispatcher.Status s = d.getWorker(w).status;
        vm.startPrank(w);
        if (s == WorkerDispatcher.Status.Leaving) {
            uint256 stake = d.getWorker(w).stake;
            try d.withdrawStake() {
                _hit("withdrawStake");
                if (d.credits(w) < stake) _violation("stake not credited");
            } catch {}
        } else if (s == WorkerDispatcher.Status.None) {
            try d.registerWorker{value: minStake}(_caps(2, who)) {
                ghostIn += minStake;
                _hit("register");
            } catch {}
        } else {
            try d.requestLeave() {
                _hit("leave");
            } catch {}
        }
        vm.stopPrank();
    }

    function warp(uint256 secs) external {
        secs = bound(secs, 1, 2 * epochLength);
        vm.warp(block.timestamp + secs);
    }

    /// @dev Past any unbonding delay, accept or ready window.
    function warpLong(uint256 secs) external {
        secs = bound(secs, 1 hours, 2 days);
        vm.warp(block.timestamp + secs);
    }
}
