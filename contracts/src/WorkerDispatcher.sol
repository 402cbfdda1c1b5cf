// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {WorkAgreement} from "./WorkAgreement.sol";
import {WorkerClass} from "./WorkerClass.sol";

/// @title WorkerDispatcher
/// @notice Zeppelin's entry point: the worker registry with stakes, matchmaking of clients with
/// workers and verifiers, the agreements' escrow and arbitration, the encrypted message relay,
/// and pull payments.
/// @dev Design notes (selection, fairness, randomness, threats, payment formula) are in
/// contracts/README.md. Invariant: `address(this).balance` equals the sum of all stakes, the
/// escrow of every open agreement, and all credits.
contract WorkerDispatcher {
    /*//////////////////////////////////////////////////////////////
                                 TYPES
    //////////////////////////////////////////////////////////////*/

    /// @notice Registration state of a worker.
    enum Status {
        None,
        Active,
        Paused,
        Leaving
    }

    /// @notice What a worker offers. Architecture codes: 1 amd64, 2 arm64, 3 armhf (arm/v7),
    /// 4 armel (arm/v6), 5 riscv64; other non-zero codes are accepted for the future.
    struct Capabilities {
        uint8 arch;
        uint32 cpuMillis;
        uint32 memoryMiB;
        uint32 diskMiB;
        uint80 pricePerSecond;
        uint32 maxDuration;
        uint8 slots;
        bytes32 encryptionKey;
    }

    /// @notice A worker's record.
    struct Worker {
        // slot 0
        uint96 stake;
        uint64 class;
        uint32 poolIndex; // 1-based position in _pools[class]; 0 = not offered for work
        uint32 activeIndex; // 1-based position in _active; 0 = not drawable as verifier
        uint16 running; // agreements not yet closed
        uint8 slots;
        Status status;
        // slot 1
        uint80 pricePerSecond;
        uint32 cpuMillis;
        uint32 memoryMiB;
        uint32 diskMiB;
        uint32 maxDuration;
        uint8 arch;
        uint40 unbondAt;
        // slot 2
        bytes32 encryptionKey;
    }

    /// @notice What a client asks for. `workerClass` names the capability class to draw the
    /// worker from; it must dominate the other fields (see `WorkerClass.satisfies`).
    struct Requirements {
        uint64 workerClass;
        uint8 arch;
        uint32 cpuMillis;
        uint32 memoryMiB;
        uint32 diskMiB;
    }

    /// @notice The client's commitment to the work: the image manifest digest and the hash of
    /// the probe specification the verifiers will receive over the private channel.
    struct WorkCommitment {
        bytes32 imageDigest;
        bytes32 probeSpecHash;
    }

    /// @notice Protocol parameters, fixed at deployment.
    struct Params {
        uint96 minStake;
        uint96 verifierFee; // per report that agreed with its epoch's outcome
        uint96 acceptPenalty; // from stake to client when an agreement is declined or not accepted
        uint96 slashPerFailedEpoch; // from stake to client per failed epoch
        uint32 acceptWindow;
        uint32 readyWindow;
        uint32 epochLength;
        uint32 reportGrace;
        uint32 maxEpochs;
        uint32 unbondingDelay;
        uint8 maxConsecutiveFailures;
    }

    /*//////////////////////////////////////////////////////////////
                                CONSTANTS
    //////////////////////////////////////////////////////////////*/

    /// @notice Most verifiers per agreement (reports are bytes of bit masks).
    uint256 public constant MAX_VERIFIERS = 8;
    /// @notice Largest ciphertext `sendMessage` relays.
    uint256 public constant MAX_MESSAGE_BYTES = 4096;

    uint256 internal immutable MIN_STAKE;
    uint256 internal immutable VERIFIER_FEE;
    uint256 internal immutable ACCEPT_PENALTY;
    uint256 internal immutable SLASH_PER_FAILED_EPOCH;
    uint256 internal immutable ACCEPT_WINDOW;
    uint256 internal immutable READY_WINDOW;
    uint256 internal immutable EPOCH_LENGTH;
    uint256 internal immutable REPORT_GRACE;
    uint256 internal immutable MAX_EPOCHS;
    uint256 internal immutable UNBONDING_DELAY;
    uint256 internal immutable MAX_CONSECUTIVE_FAILURES;

    /*//////////////////////////////////////////////////////////////
                                 STORAGE
    //////////////////////////////////////////////////////////////*/

    /// @notice Wei each account can `withdraw()`.
    mapping(address account => uint256) public credits;

    mapping(address => Worker) internal _workers;
    // slither-disable-next-line uninitialized-state (written through storage pointers: push/pop)
    mapping(uint64 class => address[]) internal _pools;
    address[] internal _active;
    uint256 internal _nextId = 1;
    mapping(uint256 id => WorkAgreement.Record) internal _agreements;
    mapping(uint256 id => mapping(uint256 index => WorkAgreement.Verifier)) internal _verifiers;
    mapping(uint256 id => mapping(uint256 word => uint256)) internal _reports;

    /*//////////////////////////////////////////////////////////////
                                 EVENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice A worker registered with `stake`.
    event WorkerRegistered(
        address indexed worker, uint64 indexed workerClass, uint256 stake, Capabilities caps
    );
    /// @notice A worker changed its capabilities.
    event WorkerUpdated(address indexed worker, uint64 indexed workerClass, Capabilities caps);
    /// @notice A worker stopped taking new work.
    event WorkerPaused(address indexed worker);
    /// @notice A paused worker takes new work again.
    event WorkerResumed(address indexed worker);
    /// @notice A worker added to its stake.
    event StakeAdded(address indexed worker, uint256 amount, uint256 stake);
    /// @notice A worker asked to leave; its stake can be withdrawn from `unbondAt`.
    event LeaveRequested(address indexed worker, uint256 unbondAt);
    /// @notice A worker left: its stake was credited to it.
    event StakeWithdrawn(address indexed worker, uint256 amount);
    /// @notice Part of a worker's stake went to `beneficiary` (the agreement's client).
    event StakeSlashed(
        address indexed worker, uint256 indexed id, address indexed beneficiary, uint256 amount
    );
    /// @notice A client bought an agreement; `escrow` is held until it closes.
    event AgreementCreated(
        uint256 indexed id,
        address indexed client,
        address indexed worker,
        Requirements requirements,
        WorkCommitment work,
        uint256 pricePerSecond,
        uint256 duration,
        uint256 escrow,
        uint256 acceptDeadline
    );
    /// @notice `verifier` was drawn as the agreement's verifier number `index`.
    event VerifierAssigned(
        uint256 indexed id, address indexed verifier, address indexed worker, uint256 index
    );
    /// @notice The worker accepted; it must declare the work ready before `readyDeadline`.
    event AgreementAccepted(
        uint256 indexed id, address indexed client, address indexed worker, uint256 readyDeadline
    );
    /// @notice The agreement was declined by the worker or cancelled by the client after the
    /// accept window; the client got `refund` back.
    event AgreementCancelled(
        uint256 indexed id, address indexed client, address indexed worker, uint256 refund
    );
    /// @notice The work was not ready in time and a party aborted: the worker got
    /// `workerCompensation`, the client `clientRefund`.
    event AgreementAborted(
        uint256 indexed id,
        address indexed client,
        address indexed worker,
        uint256 workerCompensation,
        uint256 clientRefund
    );
    /// @notice The worker declared the work ready: epochs run from `startedAt`.
    event AgreementStarted(
        uint256 indexed id,
        address indexed client,
        address indexed worker,
        uint256 startedAt,
        uint256 epochs
    );
    /// @notice The agreement `verifier` verifies started: epoch e runs from
    /// `startedAt + e * epochLength`, for `epochs` epochs.
    event VerificationScheduled(
        uint256 indexed id,
        address indexed verifier,
        address indexed worker,
        uint256 startedAt,
        uint256 epochs
    );
    /// @notice A verifier reported on an epoch.
    event VerificationProvided(
        uint256 indexed id, address indexed verifier, address indexed worker, uint256 epoch, bool ok
    );
    /// @notice The agreement was cut short after consecutive failed epochs; epochs from
    /// `endEpoch` on are refunded.
    event AgreementTerminated(
        uint256 indexed id, address indexed client, address indexed worker, uint256 endEpoch
    );
    /// @notice The agreement was settled.
    event PaymentRedeemed(
        uint256 indexed id,
        address indexed client,
        address indexed worker,
        uint256 workerPay,
        uint256 clientRefund,
        uint256 servedEpochs,
        uint256 failedEpochs
    );
    /// @notice Settlement of an agreement `verifier` reported on (one per verifier with at least
    /// one on-time report): `reports` is how many of its reports agreed with their epoch's
    /// outcome (ok on a served epoch, failed on a failed one), the only ones paid; `fee` is
    /// `reports * verifierFee`, credited to it. Both are 0 for a verifier none of whose reports
    /// agreed (a liar, or reports on tied epochs only).
    event VerifierPaid(uint256 indexed id, address indexed verifier, uint256 reports, uint256 fee);
    /// @notice An encrypted message between two parties of an agreement.
    event MessageSent(
        uint256 indexed id, address indexed from, address indexed to, bytes ciphertext
    );
    /// @notice `account` withdrew its credits.
    event Withdrawn(address indexed account, uint256 amount);

    /*//////////////////////////////////////////////////////////////
                                 ERRORS
    //////////////////////////////////////////////////////////////*/

    error InvalidParams();
    error AlreadyRegistered();
    error NotRegistered();
    error InvalidCapabilities();
    error StakeTooLow(uint256 stake, uint256 minStake);
    error WrongWorkerStatus(Status status);
    error UnbondingNotOver(uint256 unbondAt);
    error AgreementsRunning(uint256 running);
    error InvalidDuration();
    error InvalidVerifierCount();
    error ClassDoesNotSatisfy();
    error NoEligibleWorker();
    error NotEnoughVerifiers(uint256 available, uint256 requested);
    error WrongPayment(uint256 expected);
    error WrongState(WorkAgreement.State state);
    error NotClient();
    error NotWorker();
    error NotVerifier();
    error NotParty();
    error NotClientOrWorker();
    error DeadlinePassed(uint256 deadline);
    error DeadlineNotReached(uint256 deadline);
    error EpochOutOfRange();
    error OutsideReportingWindow(uint256 opensAt, uint256 closesAt);
    error AlreadyReported();
    error NotConsecutiveFailures();
    error MessageTooLong();
    error NothingToWithdraw();
    error TransferFailed();

    /*//////////////////////////////////////////////////////////////
                               CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    /// @param p Protocol parameters; all windows, the epoch length, the longest agreement and
    /// the minimum stake must be non-zero, and the accept penalty at most the minimum stake.
    constructor(Params memory p) {
        if (
            p.minStake == 0 || p.acceptWindow == 0 || p.readyWindow == 0 || p.epochLength == 0
                || p.maxEpochs == 0 || p.maxConsecutiveFailures == 0 || p.acceptPenalty > p.minStake
                || uint256(p.maxEpochs) * p.epochLength > type(uint32).max
        ) revert InvalidParams();
        MIN_STAKE = p.minStake;
        VERIFIER_FEE = p.verifierFee;
        ACCEPT_PENALTY = p.acceptPenalty;
        SLASH_PER_FAILED_EPOCH = p.slashPerFailedEpoch;
        ACCEPT_WINDOW = p.acceptWindow;
        READY_WINDOW = p.readyWindow;
        EPOCH_LENGTH = p.epochLength;
        REPORT_GRACE = p.reportGrace;
        MAX_EPOCHS = p.maxEpochs;
        UNBONDING_DELAY = p.unbondingDelay;
        MAX_CONSECUTIVE_FAILURES = p.maxConsecutiveFailures;
    }

    /*//////////////////////////////////////////////////////////////
                                REGISTRY
    //////////////////////////////////////////////////////////////*/

    /// @notice Register the caller as a worker, staking `msg.value` (at least the minimum stake).
    /// @param caps Capabilities, price, longest duration, concurrent slots and X25519 public key.
    function registerWorker(Capabilities calldata caps) external payable {
        Worker storage w = _workers[msg.sender];
        if (w.status != Status.None) revert AlreadyRegistered();
        if (msg.value < MIN_STAKE) revert StakeTooLow(msg.value, MIN_STAKE);
        _setCapabilities(w, caps);
        w.stake = uint96(msg.value);
        w.status = Status.Active;
        _sync(msg.sender, w);
        emit WorkerRegistered(msg.sender, w.class, msg.value, caps);
    }

    /// @notice Change the caller's capabilities, price or key. Running agreements keep their
    /// terms; the worker moves to its new class for new work.
    /// @param caps The new capabilities.
    function updateWorker(Capabilities calldata caps) external {
        Worker storage w = _workers[msg.sender];
        Status s = w.status;
        if (s == Status.None) revert NotRegistered();
        if (s == Status.Leaving) revert WrongWorkerStatus(s);
        _delist(w);
        _setCapabilities(w, caps);
        _sync(msg.sender, w);
        emit WorkerUpdated(msg.sender, w.class, caps);
    }

    /// @notice Add `msg.value` to the caller's stake (for example after a slash).
    function addStake() external payable {
        Worker storage w = _workers[msg.sender];
        Status s = w.status;
        if (s == Status.None) revert NotRegistered();
        if (s == Status.Leaving) revert WrongWorkerStatus(s);
        uint256 stake = w.stake + msg.value;
        w.stake = uint96(stake);
        _sync(msg.sender, w);
        emit StakeAdded(msg.sender, msg.value, stake);
    }

    /// @notice Stop being drawn as worker or verifier. Running agreements continue.
    function pauseWorker() external {
        Worker storage w = _workers[msg.sender];
        if (w.status != Status.Active) revert WrongWorkerStatus(w.status);
        w.status = Status.Paused;
        _sync(msg.sender, w);
        emit WorkerPaused(msg.sender);
    }

    /// @notice Be drawn again after `pauseWorker`. Needs at least the minimum stake.
    function resumeWorker() external {
        Worker storage w = _workers[msg.sender];
        if (w.status != Status.Paused) revert WrongWorkerStatus(w.status);
        if (w.stake < MIN_STAKE) revert StakeTooLow(w.stake, MIN_STAKE);
        w.status = Status.Active;
        _sync(msg.sender, w);
        emit WorkerResumed(msg.sender);
    }

    /// @notice Leave the market: no new work from now, stake withdrawable after the unbonding
    /// delay once every agreement of the worker is closed.
    function requestLeave() external {
        Worker storage w = _workers[msg.sender];
        Status s = w.status;
        if (s != Status.Active && s != Status.Paused) revert WrongWorkerStatus(s);
        w.status = Status.Leaving;
        uint256 unbondAt = block.timestamp + UNBONDING_DELAY;
        w.unbondAt = uint40(unbondAt);
        _sync(msg.sender, w);
        emit LeaveRequested(msg.sender, unbondAt);
    }

    /// @notice Complete leaving: the whole remaining stake is credited to the caller (take it
    /// with `withdraw()`) and the registration is deleted.
    function withdrawStake() external {
        Worker storage w = _workers[msg.sender];
        if (w.status != Status.Leaving) revert WrongWorkerStatus(w.status);
        if (block.timestamp < w.unbondAt) revert UnbondingNotOver(w.unbondAt);
        if (w.running != 0) revert AgreementsRunning(w.running);
        uint256 stake = w.stake;
        delete _workers[msg.sender];
        credits[msg.sender] += stake;
        emit StakeWithdrawn(msg.sender, stake);
    }

    /*//////////////////////////////////////////////////////////////
                                 BUYING
    //////////////////////////////////////////////////////////////*/

    /// @notice Buy an agreement: draws a worker uniformly from `req.workerClass` and
    /// `verifierCount` distinct verifiers uniformly from all active workers (neither the worker
    /// nor the caller), and escrows the pay plus the verifiers' fees. `msg.value` must equal
    /// `quote(req.workerClass, duration, verifierCount)`: the class's price ceiling per second
    /// times `duration`, plus `verifierCount * epochs * verifierFee`.
    /// @param req Requirements and the class to draw from (must dominate them).
    /// @param duration Seconds; a positive multiple of the epoch length, at most maxEpochs epochs.
    /// @param maxPricePerSecond Highest acceptable price; the class's ceiling must not exceed it.
    /// @param verifierCount 1 to MAX_VERIFIERS.
    /// @param work The image manifest digest and the probe specification hash.
    /// @return id The new agreement's id.
    function buyContract(
        Requirements calldata req,
        uint256 duration,
        uint256 maxPricePerSecond,
        uint256 verifierCount,
        WorkCommitment calldata work
    ) external payable returns (uint256 id) {
        uint256 epochs = _checkTerms(req, duration, maxPricePerSecond, verifierCount);
        id = _nextId;
        _nextId = id + 1;
        WorkAgreement.Record storage a = _agreements[id];
        address worker = _drawWorker(a, id, req.workerClass);
        {
            // The worker is drawn here, so the client cannot know its exact price: it escrows the
            // class's price ceiling, and gets the difference back at settlement.
            uint256 escrow = WorkerClass.priceCeiling(uint16(req.workerClass)) * duration
                + verifierCount * epochs * VERIFIER_FEE;
            if (msg.value != escrow) revert WrongPayment(escrow);
        }
        a.priceCode = uint16(req.workerClass);
        a.client = msg.sender;
        a.state = WorkAgreement.State.Created;
        a.verifierCount = uint8(verifierCount);
        a.epochs = uint32(epochs);
        a.createdAt = uint40(block.timestamp);
        a.termsHash = keccak256(abi.encode(req, work));
        _announce(id, a, req, work, duration);
        _drawVerifiers(id, verifierCount, worker);
    }

    /// @dev Emits AgreementCreated (its own frame keeps buyContract's stack shallow).
    function _announce(
        uint256 id,
        WorkAgreement.Record storage a,
        Requirements calldata req,
        WorkCommitment calldata work,
        uint256 duration
    ) internal {
        emit AgreementCreated(
            id,
            msg.sender,
            a.worker,
            req,
            work,
            a.pricePerSecond,
            duration,
            msg.value,
            block.timestamp + ACCEPT_WINDOW
        );
    }

    /// @dev The selection seed of agreement `id` (README: "Randomness and its bias"). The caller's
    /// address is deliberately left out: with it, a client could grind fresh addresses off chain
    /// until the draw named the verifiers it wanted, at no cost.
    function _seed(uint256 id) internal view returns (uint256) {
        return uint256(keccak256(abi.encode(block.prevrandao, id)));
    }

    /// @dev Validates the terms of a buy; returns the number of epochs.
    function _checkTerms(
        Requirements calldata req,
        uint256 duration,
        uint256 maxPricePerSecond,
        uint256 verifierCount
    ) internal view returns (uint256 epochs) {
        epochs = duration / EPOCH_LENGTH;
        if (epochs == 0 || epochs > MAX_EPOCHS || duration % EPOCH_LENGTH != 0) {
            revert InvalidDuration();
        }
        if (verifierCount == 0 || verifierCount > MAX_VERIFIERS) revert InvalidVerifierCount();
        if (!WorkerClass.satisfies(
                req.workerClass,
                req.arch,
                req.cpuMillis,
                req.memoryMiB,
                req.diskMiB,
                duration,
                maxPricePerSecond
            )) revert ClassDoesNotSatisfy();
    }

    /// @dev Draws the worker uniformly from the class's pool, which lists only active, staked
    /// workers with a free slot. The client itself is skipped (its successor takes the draw).
    /// Takes one of the worker's slots; a full worker leaves its pool until a slot frees up.
    function _drawWorker(WorkAgreement.Record storage a, uint256 id, uint64 workerClass)
        internal
        returns (address worker)
    {
        address[] storage pool = _pools[workerClass];
        uint256 n = pool.length;
        if (n == 0) revert NoEligibleWorker();
        uint256 idx = _seed(id) % n;
        worker = pool[idx];
        if (worker == msg.sender) {
            if (n == 1) revert NoEligibleWorker();
            worker = pool[idx + 1 == n ? 0 : idx + 1];
        }
        Worker storage w = _workers[worker];
        a.worker = worker;
        a.pricePerSecond = w.pricePerSecond;
        w.running += 1;
        _sync(worker, w);
    }

    /// @dev Draws `count` distinct verifiers from `_active`, skipping the worker and the client
    /// by linear probing (each skip moves the draw to the next listed worker).
    function _drawVerifiers(uint256 id, uint256 count, address worker) internal {
        uint256 seed = _seed(id);
        uint256 m = _active.length;
        uint256 excluded = (_workers[worker].activeIndex != 0 ? 1 : 0)
            + (_workers[msg.sender].activeIndex != 0 ? 1 : 0);
        if (m < excluded + count) revert NotEnoughVerifiers(m - excluded, count);
        // slither-disable-next-line uninitialized-local (zero-initialised on purpose)
        address[MAX_VERIFIERS] memory chosen;
        for (uint256 i; i < count; ++i) {
            seed = uint256(keccak256(abi.encode(seed)));
            uint256 j = seed % m;
            address v;
            while (true) {
                v = _active[j];
                bool taken = v == worker || v == msg.sender;
                for (uint256 k; k < i && !taken; ++k) {
                    taken = chosen[k] == v;
                }
                if (!taken) break;
                j = j + 1 == m ? 0 : j + 1;
            }
            chosen[i] = v;
            _verifiers[id][i].account = v;
            emit VerifierAssigned(id, v, worker, i);
        }
    }

    /*//////////////////////////////////////////////////////////////
                                LIFECYCLE
    //////////////////////////////////////////////////////////////*/

    /// @notice The worker accepts the agreement, within the accept window.
    /// @param id The agreement.
    function acceptAgreement(uint256 id) external {
        WorkAgreement.Record storage a = _agreements[id];
        _requireState(a, WorkAgreement.State.Created);
        if (msg.sender != a.worker) revert NotWorker();
        uint256 deadline = a.createdAt + ACCEPT_WINDOW;
        if (block.timestamp >= deadline) revert DeadlinePassed(deadline);
        a.state = WorkAgreement.State.Accepted;
        a.acceptedAt = uint40(block.timestamp);
        emit AgreementAccepted(id, a.client, msg.sender, block.timestamp + READY_WINDOW);
    }

    /// @notice The worker declines the agreement: the client gets everything back and the
    /// worker's stake pays the accept penalty, as if it had let the window pass.
    /// @param id The agreement.
    function declineAgreement(uint256 id) external {
        WorkAgreement.Record storage a = _agreements[id];
        _requireState(a, WorkAgreement.State.Created);
        if (msg.sender != a.worker) revert NotWorker();
        _cancel(id, a);
    }

    /// @notice The client cancels an agreement the worker did not accept within the accept
    /// window: full refund, plus the accept penalty from the worker's stake.
    /// @param id The agreement.
    function cancelAgreement(uint256 id) external {
        WorkAgreement.Record storage a = _agreements[id];
        _requireState(a, WorkAgreement.State.Created);
        if (msg.sender != a.client) revert NotClient();
        uint256 deadline = a.createdAt + ACCEPT_WINDOW;
        if (block.timestamp < deadline) revert DeadlineNotReached(deadline);
        _cancel(id, a);
    }

    /// @notice The worker declares the work deployed and reachable, within the ready window
    /// after accepting. Epochs start now. Emits AgreementStarted, then VerificationScheduled
    /// once per verifier.
    /// @param id The agreement.
    function declareReady(uint256 id) external {
        WorkAgreement.Record storage a = _agreements[id];
        _requireState(a, WorkAgreement.State.Accepted);
        if (msg.sender != a.worker) revert NotWorker();
        uint256 deadline = a.acceptedAt + READY_WINDOW;
        if (block.timestamp >= deadline) revert DeadlinePassed(deadline);
        a.state = WorkAgreement.State.Running;
        a.startedAt = uint40(block.timestamp);
        a.endEpoch = a.epochs;
        emit AgreementStarted(id, a.client, msg.sender, block.timestamp, a.epochs);
        // One log per verifier, so a verifier's daemon learns when to probe from logs that name
        // its own address.
        uint256 count = a.verifierCount;
        for (uint256 i; i < count; ++i) {
            emit VerificationScheduled(
                id, _verifiers[id][i].account, msg.sender, block.timestamp, a.epochs
            );
        }
    }

    /// @notice Either party closes an accepted agreement whose work was not declared ready
    /// within the ready window. Nobody can prove on chain whether the client failed to deliver
    /// the image or the worker failed to run it, so the cost of the held slot is split: the
    /// worker gets the pay for half the ready window (capped at the full pay), the client the
    /// rest and all verifier fees. A worker that stalls on purpose earns less than working.
    /// @param id The agreement.
    function abortAgreement(uint256 id) external {
        WorkAgreement.Record storage a = _agreements[id];
        _requireState(a, WorkAgreement.State.Accepted);
        address client = a.client;
        address worker = a.worker;
        if (msg.sender != client && msg.sender != worker) revert NotClientOrWorker();
        uint256 deadline = a.acceptedAt + READY_WINDOW;
        if (block.timestamp < deadline) revert DeadlineNotReached(deadline);
        a.state = WorkAgreement.State.Aborted;
        uint256 pay = uint256(a.pricePerSecond) * a.epochs * EPOCH_LENGTH;
        uint256 compensation = uint256(a.pricePerSecond) * READY_WINDOW / 2;
        if (compensation > pay) compensation = pay;
        uint256 refund = _escrowOf(a) - compensation;
        credits[worker] += compensation;
        credits[client] += refund;
        Worker storage w = _workers[worker];
        w.running -= 1;
        _sync(worker, w);
        emit AgreementAborted(id, client, worker, compensation, refund);
    }

    /*//////////////////////////////////////////////////////////////
                              VERIFICATION
    //////////////////////////////////////////////////////////////*/

    /// @notice A verifier of the agreement reports whether `epoch` was served. Once per
    /// verifier and epoch, between the epoch's start and its end plus the report grace.
    /// @param id The agreement.
    /// @param epoch Zero-based epoch index.
    /// @param ok Whether the probe succeeded.
    function provideVerification(uint256 id, uint256 epoch, bool ok) external {
        WorkAgreement.Record storage a = _agreements[id];
        WorkAgreement.State s = a.state;
        if (s != WorkAgreement.State.Running && s != WorkAgreement.State.Terminated) {
            revert WrongState(s);
        }
        uint256 i = _verifierIndex(id, a.verifierCount);
        if (epoch >= a.endEpoch) revert EpochOutOfRange();
        {
            uint256 opensAt = a.startedAt + epoch * EPOCH_LENGTH;
            uint256 closesAt = opensAt + EPOCH_LENGTH + REPORT_GRACE;
            if (block.timestamp < opensAt || block.timestamp >= closesAt) {
                revert OutsideReportingWindow(opensAt, closesAt);
            }
        }
        (uint8 was, uint8 now_) = _mark(id, epoch, i, ok);
        _verifiers[id][i].reports += 1;
        if (was != now_) {
            if (was == WorkAgreement.SERVED) a.servedEpochs -= 1;
            else if (was == WorkAgreement.FAILED) a.failedEpochs -= 1;
            if (now_ == WorkAgreement.SERVED) a.servedEpochs += 1;
            else if (now_ == WorkAgreement.FAILED) a.failedEpochs += 1;
        }
        emit VerificationProvided(id, msg.sender, a.worker, epoch, ok);
    }

    /// @dev The caller's index among the agreement's verifiers.
    function _verifierIndex(uint256 id, uint256 count) internal view returns (uint256 i) {
        while (i < count && _verifiers[id][i].account != msg.sender) ++i;
        if (i == count) revert NotVerifier();
    }

    /// @dev Records verifier `i`'s report on `epoch`; returns the epoch's outcome before and after.
    function _mark(uint256 id, uint256 epoch, uint256 i, bool ok)
        internal
        returns (uint8 was, uint8 now_)
    {
        uint256 wordIndex = epoch / WorkAgreement.EPOCHS_PER_WORD;
        uint256 word = _reports[id][wordIndex];
        uint256 shift = (epoch % WorkAgreement.EPOCHS_PER_WORD) * 16;
        uint256 bit = uint256(1) << i;
        uint256 before = (word >> shift) & 0xffff;
        if (before & bit != 0) revert AlreadyReported();
        uint256 afterLane = before | bit | (ok ? bit << 8 : 0);
        _reports[id][wordIndex] = word | (afterLane << shift);
        return (WorkAgreement.outcome(before), WorkAgreement.outcome(afterLane));
    }

    /// @notice The client or the worker ends a running agreement early after
    /// `maxConsecutiveFailures` epochs in a row, starting at `firstFailedEpoch`, were judged
    /// failed and their reporting windows have closed. The current epoch is still paid if
    /// served; later epochs are refunded to the client.
    /// @param id The agreement.
    /// @param firstFailedEpoch The first epoch of the failed run.
    function terminateAgreement(uint256 id, uint256 firstFailedEpoch) external {
        WorkAgreement.Record storage a = _agreements[id];
        _requireState(a, WorkAgreement.State.Running);
        if (msg.sender != a.client && msg.sender != a.worker) revert NotClientOrWorker();
        uint256 last = firstFailedEpoch + MAX_CONSECUTIVE_FAILURES; // one past the run
        if (last > a.endEpoch) revert EpochOutOfRange();
        uint256 start = a.startedAt;
        uint256 finalAt = start + last * EPOCH_LENGTH + REPORT_GRACE;
        if (block.timestamp < finalAt) revert DeadlineNotReached(finalAt);
        for (uint256 e = firstFailedEpoch; e < last; ++e) {
            uint256 word = _reports[id][e / WorkAgreement.EPOCHS_PER_WORD];
            if (WorkAgreement.outcome(WorkAgreement.lane(word, e)) != WorkAgreement.FAILED) {
                revert NotConsecutiveFailures();
            }
        }
        uint256 endEpoch = (block.timestamp - start) / EPOCH_LENGTH + 1;
        if (endEpoch > a.endEpoch) endEpoch = a.endEpoch;
        a.state = WorkAgreement.State.Terminated;
        a.endEpoch = uint32(endEpoch);
        emit AgreementTerminated(id, a.client, a.worker, endEpoch);
    }

    /// @notice Settle a running or terminated agreement once the reporting window of its last
    /// epoch has closed. Anyone may call it; each party is credited only its own share:
    /// the worker `servedEpochs * epochLength * price`; each verifier `verifierFee` per report
    /// that agreed with its epoch's outcome (ok on a served epoch, failed on a failed one;
    /// nothing for a report on an unjudged epoch, a tie, or for a silent epoch); the client the
    /// rest of the escrow plus the slash of `min(stake, failedEpochs * slashPerFailedEpoch)` from
    /// the worker's stake.
    /// @dev Reads every report word of the agreement once: O(endEpoch / 16 + verifiers) storage
    /// reads and word operations, whatever the verifier count (contracts/README.md, "Gas").
    /// @param id The agreement.
    function redeemPayment(uint256 id) external {
        WorkAgreement.Record storage a = _agreements[id];
        WorkAgreement.State s = a.state;
        if (s != WorkAgreement.State.Running && s != WorkAgreement.State.Terminated) {
            revert WrongState(s);
        }
        uint256 closesAt = a.startedAt + uint256(a.endEpoch) * EPOCH_LENGTH + REPORT_GRACE;
        if (block.timestamp < closesAt) revert DeadlineNotReached(closesAt);
        a.state = WorkAgreement.State.Finished;

        address client = a.client;
        address worker = a.worker;
        uint256 served = a.servedEpochs;
        uint256 failed = a.failedEpochs;
        uint256 workerPay = served * EPOCH_LENGTH * a.pricePerSecond;
        uint256 clientShare = _escrowOf(a) - workerPay - _payVerifiers(id, a);

        Worker storage w = _workers[worker];
        w.running -= 1;
        uint256 slash = failed * SLASH_PER_FAILED_EPOCH;
        if (slash > w.stake) slash = w.stake;
        if (slash != 0) w.stake -= uint96(slash);
        _sync(worker, w);

        credits[worker] += workerPay;
        credits[client] += clientShare + slash;
        if (slash != 0) emit StakeSlashed(worker, id, client, slash);
        emit PaymentRedeemed(id, client, worker, workerPay, clientShare + slash, served, failed);
    }

    /// @dev Credits each verifier `verifierFee` per report that agreed with its epoch's outcome
    /// and emits VerifierPaid for each verifier that reported at all (so its daemon learns the
    /// agreement is settled even when nothing is paid); returns the total credited.
    function _payVerifiers(uint256 id, WorkAgreement.Record storage a)
        internal
        returns (uint256 total)
    {
        uint256 count = a.verifierCount;
        uint256 agreed = _agreedReports(id, a.endEpoch);
        for (uint256 i; i < count; ++i) {
            WorkAgreement.Verifier storage v = _verifiers[id][i];
            if (v.reports != 0) {
                uint256 reports = (agreed >> (32 * i)) & 0xffffffff;
                uint256 fee = reports * VERIFIER_FEE;
                if (fee != 0) {
                    total += fee;
                    credits[v.account] += fee;
                }
                emit VerifierPaid(id, v.account, reports, fee);
            }
        }
    }

    /// @dev How many reports of each verifier agreed with their epoch's outcome, over epochs
    /// `0..endEpoch-1`, packed 32 bits per verifier (verifier i at bit 32 * i). Reads each
    /// 16-epoch report word once and counts its 16 lanes for all eight verifier bits with bit
    /// operations (`WorkAgreement.agreeing`, `countPerVerifier`). Lanes at or past `endEpoch`
    /// in the last word are empty (no report can be made there), so they count nothing.
    function _agreedReports(uint256 id, uint256 endEpoch) internal view returns (uint256 agreed) {
        mapping(uint256 word => uint256) storage reports = _reports[id];
        uint256 words =
            (endEpoch + WorkAgreement.EPOCHS_PER_WORD - 1) / WorkAgreement.EPOCHS_PER_WORD;
        // unchecked: a count is at most endEpoch < 2^32, so no field overflows into the next
        unchecked {
            for (uint256 w; w < words; ++w) {
                uint256 agree = WorkAgreement.agreeing(reports[w]);
                if (agree != 0) agreed += WorkAgreement.countPerVerifier(agree);
            }
        }
    }

    /*//////////////////////////////////////////////////////////////
                             PRIVATE CHANNEL
    //////////////////////////////////////////////////////////////*/

    /// @notice Relay a message between two parties (client, worker, verifiers) of an open
    /// agreement. Nothing is stored. `ciphertext` must be encrypted to the recipient's
    /// registered X25519 key (clients put their key inside their first message to the worker),
    /// with (chain id, this contract, id, from, to, a per-sender counter) bound as associated
    /// data so a copied ciphertext cannot be replayed in another context.
    /// @param id The agreement.
    /// @param to The recipient, another party of the agreement.
    /// @param ciphertext At most MAX_MESSAGE_BYTES bytes.
    function sendMessage(uint256 id, address to, bytes calldata ciphertext) external {
        WorkAgreement.Record storage a = _agreements[id];
        WorkAgreement.State s = a.state;
        if (s == WorkAgreement.State.None || uint8(s) > uint8(WorkAgreement.State.Terminated)) {
            revert WrongState(s);
        }
        if (ciphertext.length > MAX_MESSAGE_BYTES) revert MessageTooLong();
        if (to == msg.sender || !_isParty(id, a, msg.sender) || !_isParty(id, a, to)) {
            revert NotParty();
        }
        emit MessageSent(id, msg.sender, to, ciphertext);
    }

    /*//////////////////////////////////////////////////////////////
                                PAYMENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice Send the caller all its credits.
    /// @dev Checks-effects-interactions: the credit is zeroed and the event emitted before the
    /// only external call, and nothing is read or written after it, so a re-entered `withdraw`
    /// finds nothing to withdraw and any other re-entered function sees consistent state. No
    /// lock is needed (an earlier version had a transient one; it protected nothing).
    function withdraw() external {
        uint256 amount = credits[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        credits[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    /*//////////////////////////////////////////////////////////////
                                  VIEWS
    //////////////////////////////////////////////////////////////*/

    /// @notice The protocol parameters.
    function params() external view returns (Params memory p) {
        p.minStake = uint96(MIN_STAKE);
        p.verifierFee = uint96(VERIFIER_FEE);
        p.acceptPenalty = uint96(ACCEPT_PENALTY);
        p.slashPerFailedEpoch = uint96(SLASH_PER_FAILED_EPOCH);
        p.acceptWindow = uint32(ACCEPT_WINDOW);
        p.readyWindow = uint32(READY_WINDOW);
        p.epochLength = uint32(EPOCH_LENGTH);
        p.reportGrace = uint32(REPORT_GRACE);
        p.maxEpochs = uint32(MAX_EPOCHS);
        p.unbondingDelay = uint32(UNBONDING_DELAY);
        p.maxConsecutiveFailures = uint8(MAX_CONSECUTIVE_FAILURES);
    }

    /// @notice A worker's record (all zero if not registered).
    /// @param worker The worker's address.
    function getWorker(address worker) external view returns (Worker memory) {
        return _workers[worker];
    }

    /// @notice An agreement's record (all zero if unknown).
    /// @param id The agreement.
    function getAgreement(uint256 id) external view returns (WorkAgreement.Record memory) {
        return _agreements[id];
    }

    /// @notice The verifiers of an agreement and their on-time report counts: every report
    /// made in its window, whatever it said. Settlement pays only those that agreed with their
    /// epoch's outcome (see `redeemPayment`, and `VerifierPaid` for the paid count).
    /// @param id The agreement.
    function verifiersOf(uint256 id)
        external
        view
        returns (address[] memory accounts, uint256[] memory reports)
    {
        uint256 count = _agreements[id].verifierCount;
        accounts = new address[](count);
        reports = new uint256[](count);
        for (uint256 i; i < count; ++i) {
            WorkAgreement.Verifier storage v = _verifiers[id][i];
            (accounts[i], reports[i]) = (v.account, v.reports);
        }
    }

    /// @notice The current epoch of a running agreement and when its reporting window closes.
    /// `started` is false before `declareReady`; `epoch` may be past the last epoch.
    /// @param id The agreement.
    function epochOf(uint256 id)
        external
        view
        returns (bool started, uint256 epoch, uint256 reportDeadline)
    {
        uint256 start = _agreements[id].startedAt;
        // slither-disable-next-line incorrect-equality (0 is the "not started" sentinel)
        if (start == 0) return (false, 0, 0);
        epoch = (block.timestamp - start) / EPOCH_LENGTH;
        reportDeadline = start + (epoch + 1) * EPOCH_LENGTH + REPORT_GRACE;
        started = true;
    }

    /// @notice The reports on one epoch: bit i of `reported` (`ok`) is set if verifier i
    /// reported (reported ok).
    /// @param id The agreement.
    /// @param epoch The epoch.
    function reportsOf(uint256 id, uint256 epoch)
        external
        view
        returns (uint8 reported, uint8 ok, uint8 outcome)
    {
        uint256 l = WorkAgreement.lane(_reports[id][epoch / WorkAgreement.EPOCHS_PER_WORD], epoch);
        return (uint8(l), uint8(l >> 8), WorkAgreement.outcome(l));
    }

    /// @notice The exact `msg.value` `buyContract` takes: the class's price ceiling times
    /// `duration`, plus `verifierCount` fees per epoch. What the drawn worker does not earn
    /// (its price below the ceiling, unserved epochs, fees of reports not made or not agreeing
    /// with their epoch's outcome) comes back at settlement.
    /// @param workerClass The class drawn from.
    /// @param duration Seconds.
    /// @param verifierCount Verifiers.
    function quote(uint64 workerClass, uint256 duration, uint256 verifierCount)
        external
        view
        returns (uint256)
    {
        uint256 epochs = duration / EPOCH_LENGTH; // whole epochs, as buyContract counts them
        // slither-disable-next-line divide-before-multiply (the rounding is the point)
        return WorkerClass.priceCeiling(uint16(workerClass)) * duration + verifierCount * epochs
            * VERIFIER_FEE;
    }

    /// @notice The class key a worker with these capabilities is listed under.
    /// @param caps The capabilities.
    function classOf(Capabilities calldata caps) external pure returns (uint64) {
        return WorkerClass.classOf(
            caps.arch,
            caps.cpuMillis,
            caps.memoryMiB,
            caps.diskMiB,
            caps.maxDuration,
            caps.pricePerSecond
        );
    }

    /// @notice Whether class `workerClass` can serve these requirements.
    /// @param req The requirements (its workerClass field is the class checked).
    /// @param duration Seconds.
    /// @param maxPricePerSecond Highest acceptable price.
    function classSatisfies(Requirements calldata req, uint256 duration, uint256 maxPricePerSecond)
        external
        pure
        returns (bool)
    {
        return WorkerClass.satisfies(
            req.workerClass,
            req.arch,
            req.cpuMillis,
            req.memoryMiB,
            req.diskMiB,
            duration,
            maxPricePerSecond
        );
    }

    /// @notice The highest price per second a worker of class `workerClass` may ask.
    /// @param workerClass The class.
    function classPriceCeiling(uint64 workerClass) external pure returns (uint256) {
        return WorkerClass.priceCeiling(uint16(workerClass));
    }

    /// @notice How many workers can currently be drawn from class `workerClass`.
    /// @param workerClass The class.
    function poolSize(uint64 workerClass) external view returns (uint256) {
        return _pools[workerClass].length;
    }

    /// @notice How many workers can currently be drawn as verifiers.
    function activeWorkerCount() external view returns (uint256) {
        return _active.length;
    }

    /// @notice The id the next agreement will get.
    function nextAgreementId() external view returns (uint256) {
        return _nextId;
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNALS
    //////////////////////////////////////////////////////////////*/

    function _requireState(WorkAgreement.Record storage a, WorkAgreement.State want) internal view {
        if (a.state != want) revert WrongState(a.state);
    }

    function _escrowOf(WorkAgreement.Record storage a) internal view returns (uint256) {
        uint256 epochs = a.epochs;
        return WorkerClass.priceCeiling(a.priceCode) * epochs * EPOCH_LENGTH
            + uint256(a.verifierCount) * epochs * VERIFIER_FEE;
    }

    function _isParty(uint256 id, WorkAgreement.Record storage a, address who)
        internal
        view
        returns (bool)
    {
        if (who == a.client || who == a.worker) return true;
        uint256 count = a.verifierCount;
        for (uint256 i; i < count; ++i) {
            if (_verifiers[id][i].account == who) return true;
        }
        return false;
    }

    /// @dev Cancellation before acceptance: full refund plus the accept penalty.
    function _cancel(uint256 id, WorkAgreement.Record storage a) internal {
        a.state = WorkAgreement.State.Cancelled;
        address client = a.client;
        address worker = a.worker;
        uint256 refund = _escrowOf(a);
        Worker storage w = _workers[worker];
        uint256 penalty = ACCEPT_PENALTY;
        if (penalty > w.stake) penalty = w.stake;
        w.stake -= uint96(penalty);
        w.running -= 1;
        _sync(worker, w);
        credits[client] += refund + penalty;
        if (penalty != 0) emit StakeSlashed(worker, id, client, penalty);
        emit AgreementCancelled(id, client, worker, refund);
    }

    function _setCapabilities(Worker storage w, Capabilities calldata caps) internal {
        if (
            caps.arch == 0 || caps.cpuMillis == 0 || caps.memoryMiB == 0 || caps.diskMiB == 0
                || caps.maxDuration == 0 || caps.slots == 0 || caps.encryptionKey == bytes32(0)
        ) revert InvalidCapabilities();
        w.arch = caps.arch;
        w.cpuMillis = caps.cpuMillis;
        w.memoryMiB = caps.memoryMiB;
        w.diskMiB = caps.diskMiB;
        w.pricePerSecond = caps.pricePerSecond;
        w.maxDuration = caps.maxDuration;
        w.slots = caps.slots;
        w.encryptionKey = caps.encryptionKey;
        w.class = WorkerClass.classOf(
            caps.arch,
            caps.cpuMillis,
            caps.memoryMiB,
            caps.diskMiB,
            caps.maxDuration,
            caps.pricePerSecond
        );
    }

    /// @dev Brings the worker's pool and verifier-set membership in line with its state:
    /// listed in its class pool iff active, staked and with a free slot; drawable as a verifier
    /// iff active and staked. O(1): swap-and-pop.
    function _sync(address who, Worker storage w) internal {
        bool eligible = w.status == Status.Active && w.stake >= MIN_STAKE;
        bool pooled = eligible && w.running < w.slots;
        if (pooled && w.poolIndex == 0) {
            address[] storage pool = _pools[w.class];
            pool.push(who);
            w.poolIndex = uint32(pool.length);
        } else if (!pooled && w.poolIndex != 0) {
            _delist(w);
        }
        if (eligible && w.activeIndex == 0) {
            _active.push(who);
            w.activeIndex = uint32(_active.length);
        } else if (!eligible && w.activeIndex != 0) {
            uint256 i = w.activeIndex - 1;
            uint256 lastIndex = _active.length - 1;
            if (i != lastIndex) {
                address moved = _active[lastIndex];
                _active[i] = moved;
                _workers[moved].activeIndex = uint32(i + 1);
            }
            _active.pop();
            w.activeIndex = 0;
        }
    }

    /// @dev Removes the worker from its class pool if listed.
    function _delist(Worker storage w) internal {
        uint256 pos = w.poolIndex;
        if (pos == 0) return;
        address[] storage pool = _pools[w.class];
        uint256 lastIndex = pool.length - 1;
        if (pos - 1 != lastIndex) {
            address moved = pool[lastIndex];
            pool[pos - 1] = moved;
            _workers[moved].poolIndex = uint32(pos);
        }
        pool.pop();
        w.poolIndex = 0;
    }
}
