// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Script} from "forge-std/Script.sol";
import {WorkerDispatcher} from "../src/WorkerDispatcher.sol";

/// @title Deploy
/// @notice Deploys WorkerDispatcher on any EVM chain and writes a deployment file.
/// @dev Parameters come from environment variables, each with a default:
///   ZEPPELIN_MIN_STAKE (wei, 0.1 ether)            ZEPPELIN_VERIFIER_FEE (wei, 0.0001 ether)
///   ZEPPELIN_ACCEPT_PENALTY (wei, 0.01 ether)      ZEPPELIN_SLASH_PER_FAILED_EPOCH (wei, 0.005 ether)
///   ZEPPELIN_ACCEPT_WINDOW (s, 900)                ZEPPELIN_READY_WINDOW (s, 3600)
///   ZEPPELIN_EPOCH_LENGTH (s, 3600)                ZEPPELIN_REPORT_GRACE (s, 600)
///   ZEPPELIN_MAX_EPOCHS (720: 30 days of epochs)   ZEPPELIN_UNBONDING_DELAY (s, 86400)
///   ZEPPELIN_MAX_CONSECUTIVE_FAILURES (3)
/// The file goes to ZEPPELIN_DEPLOYMENT_FILE (default `deployments/<chainid>.json`, relative to
/// contracts/); foundry.toml allows writing under contracts/deployments and ../.dev only.
/// Usage: forge script script/Deploy.s.sol --rpc-url <url> --broadcast --private-key <key>
contract Deploy is Script {
    function params() public view returns (WorkerDispatcher.Params memory p) {
        p.minStake = uint96(vm.envOr("ZEPPELIN_MIN_STAKE", uint256(0.1 ether)));
        p.verifierFee = uint96(vm.envOr("ZEPPELIN_VERIFIER_FEE", uint256(0.0001 ether)));
        p.acceptPenalty = uint96(vm.envOr("ZEPPELIN_ACCEPT_PENALTY", uint256(0.01 ether)));
        p.slashPerFailedEpoch =
            uint96(vm.envOr("ZEPPELIN_SLASH_PER_FAILED_EPOCH", uint256(0.005 ether)));
        p.acceptWindow = uint32(vm.envOr("ZEPPELIN_ACCEPT_WINDOW", uint256(900)));
        p.readyWindow = uint32(vm.envOr("ZEPPELIN_READY_WINDOW", uint256(3600)));
        p.epochLength = uint32(vm.envOr("ZEPPELIN_EPOCH_LENGTH", uint256(3600)));
        p.reportGrace = uint32(vm.envOr("ZEPPELIN_REPORT_GRACE", uint256(600)));
        p.maxEpochs = uint32(vm.envOr("ZEPPELIN_MAX_EPOCHS", uint256(720)));
        p.unbondingDelay = uint32(vm.envOr("ZEPPELIN_UNBONDING_DELAY", uint256(86_400)));
        p.maxConsecutiveFailures = uint8(vm.envOr("ZEPPELIN_MAX_CONSECUTIVE_FAILURES", uint256(3)));
    }

    function deploymentFile() public view returns (string memory) {
        return vm.envOr(
            "ZEPPELIN_DEPLOYMENT_FILE",
            string.concat("deployments/", vm.toString(block.chainid), ".json")
        );
    }

    function run() external returns (WorkerDispatcher dispatcher) {
        WorkerDispatcher.Params memory p = params();
        // Logs are scanned from here: the deployment lands in this block or a later one.
        uint256 fromBlock = block.number;
        vm.startBroadcast();
        dispatcher = new WorkerDispatcher(p);
        vm.stopBroadcast();
        write(address(dispatcher), fromBlock, p, deploymentFile());
    }

    /// @notice Writes the deployment file. Wei amounts are decimal strings (they overflow
    /// JSON-safe integers), durations and counts are numbers.
    function write(
        address dispatcher,
        uint256 fromBlock,
        WorkerDispatcher.Params memory p,
        string memory path
    ) public {
        string memory o = "params";
        vm.serializeString(o, "minStake", vm.toString(uint256(p.minStake)));
        vm.serializeString(o, "verifierFee", vm.toString(uint256(p.verifierFee)));
        vm.serializeString(o, "acceptPenalty", vm.toString(uint256(p.acceptPenalty)));
        vm.serializeString(o, "slashPerFailedEpoch", vm.toString(uint256(p.slashPerFailedEpoch)));
        vm.serializeUint(o, "acceptWindow", p.acceptWindow);
        vm.serializeUint(o, "readyWindow", p.readyWindow);
        vm.serializeUint(o, "epochLength", p.epochLength);
        vm.serializeUint(o, "reportGrace", p.reportGrace);
        vm.serializeUint(o, "maxEpochs", p.maxEpochs);
        vm.serializeUint(o, "unbondingDelay", p.unbondingDelay);
        string memory paramsJson =
            vm.serializeUint(o, "maxConsecutiveFailures", p.maxConsecutiveFailures);

        string memory root = "deployment";
        vm.serializeUint(root, "version", 1);
        vm.serializeUint(root, "chainId", block.chainid);
        vm.serializeAddress(root, "dispatcher", dispatcher);
        vm.serializeUint(root, "deployBlock", fromBlock);
        string memory json = vm.serializeString(root, "params", paramsJson);
        vm.writeJson(json, path);
    }
}
