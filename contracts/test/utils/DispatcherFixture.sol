// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {WorkerDispatcher} from "../../src/WorkerDispatcher.sol";
import {WorkAgreement} from "../../src/WorkAgreement.sol";
import {WorkerClass} from "../../src/WorkerClass.sol";

/// @dev Shared deployment, parameters and helpers for the dispatcher's tests.
abstract contract DispatcherFixture is Test {
    WorkerDispatcher internal d;

    uint96 internal constant MIN_STAKE = 1 ether;
    uint96 internal constant VERIFIER_FEE = 0.001 ether;
    uint96 internal constant ACCEPT_PENALTY = 0.1 ether;
    uint96 internal constant SLASH = 0.05 ether;
    uint32 internal constant ACCEPT_WINDOW = 1800;
    uint32 internal constant READY_WINDOW = 3600;
    uint32 internal constant EPOCH = 600;
    uint32 internal constant GRACE = 300;
    uint32 internal constant MAX_EPOCHS = 1000;
    uint32 internal constant UNBONDING = 1 days;
    uint8 internal constant MAX_FAILS = 3;

    uint8 internal constant ARM64 = 2;
    /// @dev About 1 gwei per second, exactly on the class price grid (15 << 26).
    uint80 internal constant PRICE = 15 << 26;

    address internal client = makeAddr("client");
    address internal stranger = makeAddr("stranger");

    function _params() internal pure returns (WorkerDispatcher.Params memory p) {
        p.minStake = MIN_STAKE;
        p.verifierFee = VERIFIER_FEE;
        p.acceptPenalty = ACCEPT_PENALTY;
        p.slashPerFailedEpoch = SLASH;
        p.acceptWindow = ACCEPT_WINDOW;
        p.readyWindow = READY_WINDOW;
        p.epochLength = EPOCH;
        p.reportGrace = GRACE;
        p.maxEpochs = MAX_EPOCHS;
        p.unbondingDelay = UNBONDING;
        p.maxConsecutiveFailures = MAX_FAILS;
    }

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        d = new WorkerDispatcher(_params());
        vm.deal(client, 1_000_000 ether);
    }

    /// @dev A Raspberry Pi 4 class machine: arm64, 4 cores, 4 GiB, 32 GiB disk, 1 gwei/s.
    function _caps() internal pure returns (WorkerDispatcher.Capabilities memory c) {
        c.arch = ARM64;
        c.cpuMillis = 4000;
        c.memoryMiB = 4096;
        c.diskMiB = 32_768;
        c.pricePerSecond = PRICE;
        c.maxDuration = 30 days;
        c.slots = 1;
        c.encryptionKey = keccak256("x25519");
    }

    function _register(address who, WorkerDispatcher.Capabilities memory c) internal {
        vm.deal(who, who.balance + MIN_STAKE);
        vm.prank(who);
        d.registerWorker{value: MIN_STAKE}(c);
    }

    function _registerMany(string memory prefix, uint256 n, WorkerDispatcher.Capabilities memory c)
        internal
        returns (address[] memory ws)
    {
        ws = new address[](n);
        for (uint256 i; i < n; ++i) {
            ws[i] = makeAddr(string.concat(prefix, vm.toString(i)));
            _register(ws[i], c);
        }
    }

    /// @dev The class key of `c`, computed without a call (so it can sit between a prank or an
    /// expectRevert and the call it is meant for).
    function _class(WorkerDispatcher.Capabilities memory c) internal pure returns (uint64) {
        return WorkerClass.classOf(
            c.arch, c.cpuMillis, c.memoryMiB, c.diskMiB, c.maxDuration, c.pricePerSecond
        );
    }

    function _req(WorkerDispatcher.Capabilities memory c)
        internal
        pure
        returns (WorkerDispatcher.Requirements memory r)
    {
        r.workerClass = _class(c);
        r.arch = c.arch;
        r.cpuMillis = 1000;
        r.memoryMiB = 1024;
        r.diskMiB = 1024;
    }

    function _work() internal pure returns (WorkerDispatcher.WorkCommitment memory w) {
        w.imageDigest = keccak256("image");
        w.probeSpecHash = keccak256("probe");
    }

    function _escrow(uint256 price, uint256 duration, uint256 verifiers)
        internal
        pure
        returns (uint256)
    {
        return price * duration + verifiers * (duration / EPOCH) * VERIFIER_FEE;
    }

    /// @dev Buys `epochs` epochs with `verifiers` verifiers from the standard class at PRICE.
    function _buy(address who, uint256 epochs, uint256 verifiers) internal returns (uint256 id) {
        uint256 duration = epochs * EPOCH;
        WorkerDispatcher.Requirements memory r = _req(_caps());
        vm.prank(who);
        id = d.buyContract{value: _escrow(PRICE, duration, verifiers)}(
            r, duration, PRICE, verifiers, _work()
        );
    }

    function _agreement(uint256 id) internal view returns (WorkAgreement.Record memory) {
        return d.getAgreement(id);
    }

    function _accept(uint256 id) internal {
        vm.prank(_agreement(id).worker);
        d.acceptAgreement(id);
    }

    function _ready(uint256 id) internal {
        vm.prank(_agreement(id).worker);
        d.declareReady(id);
    }

    function _verifiers(uint256 id) internal view returns (address[] memory vs) {
        (vs,) = d.verifiersOf(id);
    }

    /// @dev Every verifier reports `ok` on `epoch`, at the start of the epoch.
    function _reportAll(uint256 id, uint256 epoch, bool ok) internal {
        WorkAgreement.Record memory a = _agreement(id);
        vm.warp(uint256(a.startedAt) + epoch * EPOCH);
        address[] memory vs = _verifiers(id);
        for (uint256 i; i < vs.length; ++i) {
            vm.prank(vs[i]);
            d.provideVerification(id, epoch, ok);
        }
    }

    /// @dev The sum of every stake, open escrow and credit the dispatcher owes to `accounts` for
    /// agreements 1..nextAgreementId-1.
    function _owed(address[] memory accounts) internal view returns (uint256 total) {
        for (uint256 i; i < accounts.length; ++i) {
            total += d.getWorker(accounts[i]).stake + d.credits(accounts[i]);
        }
        uint256 next = d.nextAgreementId();
        for (uint256 id = 1; id < next; ++id) {
            WorkAgreement.Record memory a = d.getAgreement(id);
            if (
                a.state != WorkAgreement.State.Finished && a.state != WorkAgreement.State.Cancelled
                    && a.state != WorkAgreement.State.Aborted
            ) {
                total += WorkerClass.priceCeiling(a.priceCode) * a.epochs * EPOCH
                + uint256(a.verifierCount) * a.epochs * VERIFIER_FEE;
            }
        }
    }
}
