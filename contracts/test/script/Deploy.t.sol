// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {stdJson} from "forge-std/StdJson.sol";
import {Deploy} from "../../script/Deploy.s.sol";
import {WorkerDispatcher} from "../../src/WorkerDispatcher.sol";

/// @dev One test function on purpose: environment variables are process-wide and tests run in
/// parallel, so every scenario that sets them runs here, in order.
contract DeployTest is Test {
    using stdJson for string;

    string internal constant FILE = "deployments/forge-test-deploy.json";

    function test_Deploy_FromEnvironment() public {
        Deploy script = new Deploy();

        // defaults
        WorkerDispatcher.Params memory p = script.params();
        assertEq(p.minStake, 0.1 ether);
        assertEq(p.epochLength, 3600);
        assertEq(
            script.deploymentFile(),
            string.concat("deployments/", vm.toString(block.chainid), ".json")
        );

        // overrides, deployment and file
        vm.setEnv("ZEPPELIN_DEPLOYMENT_FILE", FILE);
        vm.setEnv("ZEPPELIN_MIN_STAKE", "1000000000000000000000"); // 1000 ether: a string in JSON
        vm.setEnv("ZEPPELIN_EPOCH_LENGTH", "60");
        vm.setEnv("ZEPPELIN_MAX_CONSECUTIVE_FAILURES", "2");
        vm.roll(42);
        WorkerDispatcher d = script.run();
        p = d.params();
        assertEq(p.minStake, 1000 ether);
        assertEq(p.epochLength, 60);
        assertEq(p.maxConsecutiveFailures, 2);
        assertEq(p.readyWindow, 3600, "default kept");

        string memory json = vm.readFile(FILE);
        assertEq(json.readUint(".version"), 1);
        assertEq(json.readUint(".chainId"), block.chainid);
        assertEq(json.readAddress(".dispatcher"), address(d));
        assertEq(json.readUint(".deployBlock"), 42);
        assertEq(json.readString(".params.minStake"), "1000000000000000000000");
        assertEq(json.readString(".params.verifierFee"), vm.toString(uint256(0.0001 ether)));
        assertEq(json.readUint(".params.epochLength"), 60);
        assertEq(json.readUint(".params.maxConsecutiveFailures"), 2);
        vm.removeFile(FILE);

        // invalid parameters are refused by the constructor
        vm.setEnv("ZEPPELIN_EPOCH_LENGTH", "0");
        vm.expectRevert(WorkerDispatcher.InvalidParams.selector);
        script.run();

        // leave the environment as found for the rest of the process
        vm.setEnv("ZEPPELIN_MIN_STAKE", "100000000000000000");
        vm.setEnv("ZEPPELIN_EPOCH_LENGTH", "3600");
        vm.setEnv("ZEPPELIN_MAX_CONSECUTIVE_FAILURES", "3");
        vm.setEnv("ZEPPELIN_DEPLOYMENT_FILE", "deployments/31337.json");
    }
}
