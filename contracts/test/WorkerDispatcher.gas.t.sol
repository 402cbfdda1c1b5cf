// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {DispatcherFixture} from "./utils/DispatcherFixture.sol";
import {WorkerDispatcher} from "../src/WorkerDispatcher.sol";

/// @dev buyContract's gas does not grow with the market (bench.sh prints the 10,000-worker
/// figure; this keeps the property under test at a size the suite can afford).
contract WorkerDispatcherGasTest is DispatcherFixture {
    function _worstBuy(uint256 n) internal returns (uint256 worst) {
        d = new WorkerDispatcher(_params());
        WorkerDispatcher.Capabilities memory c = _caps();
        for (uint256 i; i < n; ++i) {
            address w = address(uint160(0x300000 + i));
            vm.deal(w, MIN_STAKE);
            vm.prank(w);
            d.registerWorker{value: MIN_STAKE}(c);
        }
        assertEq(d.activeWorkerCount(), n);
        for (uint256 i; i < 4; ++i) {
            vm.prevrandao(keccak256(abi.encode(i)));
            vm.cool(address(d));
            _buy(client, 3, 2);
            uint256 g = vm.lastCallGas().gasTotalUsed;
            if (g > worst) worst = g;
        }
    }

    function test_BuyContract_GasIndependentOfMarketSize() public {
        uint256 small = _worstBuy(10);
        uint256 large = _worstBuy(1000);
        assertLe(small, 200_000);
        assertLe(large, 200_000);
        assertApproxEqRel(large, small, 0.05e18);
    }
}
