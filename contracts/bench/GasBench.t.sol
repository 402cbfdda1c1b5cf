// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {console} from "forge-std/console.sol";
import {DispatcherFixture} from "../test/utils/DispatcherFixture.sol";
import {WorkerDispatcher} from "../src/WorkerDispatcher.sol";

/// @dev The thesis's WorkAgreement as its own contract, to price the alternative design: the
/// same stored fields, created as an EIP-1167 clone that holds its escrow.
contract AgreementContract {
    address public client;
    uint8 public state;
    uint8 public verifierCount;
    uint32 public epochs;
    uint40 public createdAt;
    address public worker;
    uint80 public pricePerSecond;
    bytes32 public termsHash;

    function initialize(address c, address w, uint80 p, uint32 e, uint8 v, bytes32 h)
        external
        payable
    {
        require(client == address(0));
        (client, state, verifierCount, epochs, createdAt) = (c, 1, v, e, uint40(block.timestamp));
        (worker, pricePerSecond, termsHash) = (w, p, h);
    }
}

/// @dev The same fields as a record in a mapping, for the comparison.
contract AgreementRecords {
    struct Rec {
        address client;
        uint8 state;
        uint8 verifierCount;
        uint32 epochs;
        uint40 createdAt;
        address worker;
        uint80 pricePerSecond;
        bytes32 termsHash;
    }

    mapping(uint256 => Rec) public recs;
    uint256 public next = 1;

    function open(address c, address w, uint80 p, uint32 e, uint8 v, bytes32 h)
        external
        payable
        returns (uint256 id)
    {
        id = next++;
        recs[id] = Rec(c, 1, v, e, uint40(block.timestamp), w, p, h);
    }
}

/// @dev Gas figures printed by bench.sh. Each measured call runs with the dispatcher's storage
/// cooled first (vm.cool), so it pays cold-access costs like a transaction of its own; figures
/// are the call's execution gas (`vm.lastCallGas().gasTotalUsed`), without the 21,000 intrinsic
/// gas and calldata of a transaction.
contract GasBench is DispatcherFixture {
    uint256 internal constant BUY_SAMPLES = 8;

    function _gas() internal view returns (uint256) {
        return vm.lastCallGas().gasTotalUsed;
    }

    function _registerFast(uint256 n, uint160 base) internal {
        WorkerDispatcher.Capabilities memory c = _caps();
        vm.pauseGasMetering();
        for (uint256 i; i < n; ++i) {
            address w = address(base + uint160(i));
            vm.deal(w, MIN_STAKE);
            vm.prank(w);
            d.registerWorker{value: MIN_STAKE}(c);
        }
        vm.resumeGasMetering();
    }

    /// @dev The largest execution gas of BUY_SAMPLES buys (2 verifiers, 3 epochs) from a fresh
    /// dispatcher with `n` one-slot workers, each buy taking a worker out of its pool.
    function _buyGas(uint256 n) internal returns (uint256 worst) {
        d = new WorkerDispatcher(_params());
        _registerFast(n, 0x100000);
        require(d.activeWorkerCount() == n && d.poolSize(_class(_caps())) == n, "market size");
        WorkerDispatcher.Requirements memory r = _req(_caps());
        WorkerDispatcher.WorkCommitment memory w = _work();
        uint256 value = _escrow(PRICE, 3 * EPOCH, 2);
        for (uint256 i; i < BUY_SAMPLES; ++i) {
            vm.prevrandao(keccak256(abi.encode("bench", i)));
            vm.cool(address(d));
            vm.prank(client);
            d.buyContract{value: value}(r, 3 * EPOCH, PRICE, 2, w);
            uint256 g = _gas();
            if (g > worst) worst = g;
        }
    }

    function test_Bench() public {
        uint256 small = _buyGas(10);
        uint256 large = _buyGas(10_000);
        console.log("gas buyContract workers=10 verifiers=2: %d", small);
        console.log("gas buyContract workers=10000 verifiers=2: %d", large);

        // A standard lifecycle on a fresh market of 10 workers.
        d = new WorkerDispatcher(_params());
        _registerFast(9, 0x200000);
        address newcomer = makeAddr("newcomer");
        vm.deal(newcomer, MIN_STAKE);
        vm.cool(address(d));
        vm.prank(newcomer);
        d.registerWorker{value: MIN_STAKE}(_caps());
        console.log("gas registerWorker: %d", _gas());

        uint256 total;
        vm.cool(address(d));
        uint256 id = _buy(client, 3, 2);
        total += _gas();
        address worker = _agreement(id).worker;
        address[] memory vs = _verifiers(id);

        vm.cool(address(d));
        vm.prank(worker);
        d.acceptAgreement(id);
        console.log("gas acceptAgreement: %d", _gas());
        total += _gas();

        vm.cool(address(d));
        vm.prank(worker);
        d.declareReady(id);
        console.log("gas declareReady: %d", _gas());
        total += _gas();

        vm.cool(address(d));
        vm.prank(client);
        d.sendMessage(id, worker, new bytes(200));
        console.log("gas sendMessage (200-byte ciphertext): %d", _gas());

        uint256 start = block.timestamp;
        uint256 firstReport;
        uint256 laterReport;
        for (uint256 e; e < 3; ++e) {
            vm.warp(start + e * EPOCH + 60);
            for (uint256 i; i < 2; ++i) {
                vm.cool(address(d));
                vm.prank(vs[i]);
                d.provideVerification(id, e, true);
                total += _gas();
                if (e == 0 && i == 0) firstReport = _gas();
                if (e == 1 && i == 0) laterReport = _gas();
            }
        }
        console.log("gas provideVerification: %d", firstReport);
        console.log(
            "gas provideVerification (later epochs sharing the 16-epoch word): %d", laterReport
        );

        vm.warp(start + 3 * EPOCH + GRACE);
        vm.cool(address(d));
        d.redeemPayment(id);
        console.log("gas redeemPayment: %d", _gas());
        total += _gas();

        address[3] memory payees = [worker, vs[0], vs[1]];
        for (uint256 i; i < 3; ++i) {
            vm.deal(payees[i], 0.1 ether); // a sender always holds ETH for gas: not an empty account
            vm.cool(address(d));
            vm.prank(payees[i]);
            d.withdraw();
            if (i == 0) console.log("gas withdraw: %d", _gas());
            total += _gas();
        }

        _otherSteps();

        console.log(
            "gas standard lifecycle (buy, accept, ready, 3 epochs x 2 verifiers, redeem, withdraws): %d",
            total
        );
        _cloneComparison();

        console.log(
            "goal buyContract <= 200000 gas (10 and 10000 workers): %s",
            large <= 200_000 && small <= 200_000 ? "met" : "NOT met"
        );
        uint256 diff = large > small ? large - small : small - large;
        console.log(
            "goal buyContract at 10000 workers within 5%% of 10 workers: %s (difference %d gas)",
            diff * 100 <= small * 5 ? "met" : "NOT met",
            diff
        );
    }

    /// @dev redeemPayment of an agreement of `epochs` epochs and `verifiers` verifiers in which
    /// every verifier reported on every epoch and one verifier per epoch (a different one each
    /// time) lied, outvoted: every report word is full and every epoch pays some verifiers, the
    /// settlement's worst case. The dispatcher allows `epochs` epochs (the deploy script's
    /// default maxEpochs is 720) and the worker's class covers the duration.
    function _redeemGas(uint256 epochs, uint256 verifiers) internal returns (uint256) {
        vm.pauseGasMetering();
        WorkerDispatcher.Params memory p = _params();
        p.maxEpochs = uint32(epochs);
        d = new WorkerDispatcher(p);
        WorkerDispatcher.Capabilities memory c = _caps();
        c.maxDuration = type(uint32).max;
        for (uint256 i; i <= verifiers; ++i) {
            address w = address(uint160(0x400000 + i));
            vm.deal(w, MIN_STAKE);
            vm.prank(w);
            d.registerWorker{value: MIN_STAKE}(c);
        }
        uint256 duration = epochs * EPOCH;
        WorkerDispatcher.Requirements memory r = _req(c);
        vm.prank(client);
        uint256 id = d.buyContract{value: _escrow(PRICE, duration, verifiers)}(
            r, duration, PRICE, verifiers, _work()
        );
        _accept(id);
        _ready(id);
        address[] memory vs = _verifiers(id);
        uint256 start = block.timestamp;
        for (uint256 e; e < epochs; ++e) {
            vm.warp(start + e * EPOCH);
            for (uint256 i; i < verifiers; ++i) {
                vm.prank(vs[i]);
                d.provideVerification(id, e, i != e % verifiers);
            }
        }
        require(_agreement(id).servedEpochs == epochs, "every epoch served");
        vm.warp(start + duration + GRACE);
        vm.resumeGasMetering();
        vm.cool(address(d));
        d.redeemPayment(id);
        uint256 g = _gas();
        require(d.credits(vs[0]) == (epochs - (epochs + verifiers - 1) / verifiers) * VERIFIER_FEE);
        return g;
    }

    /// @dev Settlement reads every 16-epoch report word: its gas grows with the agreement's
    /// length and, less, with its verifiers.
    function test_BenchRedeemLong() public {
        uint256[2][5] memory cases = [
            [uint256(16), 3],
            [uint256(720), 3],
            [uint256(720), 8],
            [uint256(8640), 3],
            [uint256(8640), 8]
        ];
        for (uint256 k; k < cases.length; ++k) {
            uint256 g = _redeemGas(cases[k][0], cases[k][1]);
            console.log(
                "gas redeemPayment epochs=%d verifiers=%d (all reported, one liar per epoch): %d",
                cases[k][0],
                cases[k][1],
                g
            );
        }
    }

    /// @dev The other exits of the lifecycle.
    function _otherSteps() internal {
        uint256 id = _buy(client, 3, 2);
        vm.cool(address(d));
        vm.prank(_agreement(id).worker);
        d.declineAgreement(id);
        console.log("gas declineAgreement: %d", _gas());

        id = _buy(client, 3, 2);
        vm.warp(block.timestamp + ACCEPT_WINDOW);
        vm.cool(address(d));
        vm.prank(client);
        d.cancelAgreement(id);
        console.log("gas cancelAgreement: %d", _gas());

        id = _buy(client, 3, 2);
        _accept(id);
        vm.warp(block.timestamp + READY_WINDOW);
        vm.cool(address(d));
        vm.prank(client);
        d.abortAgreement(id);
        console.log("gas abortAgreement: %d", _gas());

        id = _buy(client, 6, 2);
        _accept(id);
        _ready(id);
        for (uint256 e; e < 3; ++e) {
            _reportAll(id, e, false);
        }
        vm.warp(uint256(_agreement(id).startedAt) + 3 * EPOCH + GRACE);
        vm.cool(address(d));
        vm.prank(client);
        d.terminateAgreement(id, 0);
        console.log("gas terminateAgreement: %d", _gas());

        address w = address(uint160(0x200000));
        while (d.getWorker(w).running != 0) {
            w = address(uint160(w) + 1); // a worker with no open agreement, so it can leave
        }
        vm.cool(address(d));
        vm.prank(w);
        d.pauseWorker();
        console.log("gas pauseWorker: %d", _gas());
        vm.cool(address(d));
        vm.prank(w);
        d.requestLeave();
        console.log("gas requestLeave: %d", _gas());
        vm.warp(block.timestamp + UNBONDING);
        vm.cool(address(d));
        vm.prank(w);
        d.withdrawStake();
        console.log("gas withdrawStake: %d", _gas());
    }

    /// @dev Prices a per-agreement contract against the record this design stores.
    function _cloneComparison() internal {
        AgreementContract impl = new AgreementContract();
        bytes memory code = abi.encodePacked(
            hex"3d602d80600a3d3981f3363d3d373d3d3d363d73",
            address(impl),
            hex"5af43d82803e903d91602b57fd5bf3"
        );
        uint256 before = gasleft();
        address clone;
        assembly {
            clone := create(0, add(code, 0x20), mload(code))
        }
        AgreementContract(clone).initialize{value: 1 ether}(
            client, address(1), PRICE, 3, 2, keccak256("terms")
        );
        uint256 used = before - gasleft();
        AgreementRecords recs = new AgreementRecords();
        recs.open{value: 1 ether}(client, address(1), PRICE, 3, 2, keccak256("terms"));
        before = gasleft();
        recs.open{value: 1 ether}(client, address(1), PRICE, 3, 2, keccak256("terms"));
        uint256 recordUsed = before - gasleft();
        console.log("gas WorkAgreement as a clone (create + initialize, escrow sent): %d", used);
        console.log("gas WorkAgreement as a record (same fields, escrow sent): %d", recordUsed);
    }
}
