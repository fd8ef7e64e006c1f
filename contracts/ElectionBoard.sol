// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

interface IMasternodeRegistry {
    function isActive(address masternode) external view returns (bool);
}

/// The election board: active masternodes send one node-selection submission per round (paper
/// mode: definite hash + 64-byte signature; vrf mode: an 81-byte ECVRF proof). Candidates are
/// the MasternodeRegistry's: there is no registration here (one registration, with collateral,
/// in the registry; the VRF key is the one in the registry entry). The board enforces only what
/// a contract can check cheaply and objectively:
///
/// - who: the sender is an active masternode of `registry` (collateral posted, heartbeats in
///   time) when it submits; msg.sender is the node id, so nobody submits under another's id;
/// - when: round r takes submissions only in blocks (boundary(r), boundary(r) + window], so the
///   cutoff is a block height and the set of submissions is fixed once that block is final;
/// - how many: only a node's first submission in a round counts; a second one is still
///   accepted and logged, and it DISQUALIFIES the node for that round (the paper: every
///   transaction of a node that sent more than one is discarded). `counted(round, node)` is
///   then false, and the agents drop all of that node's submissions;
/// - the definite hash of a round (paper mode): blockhash(boundary), re-hashed with keccak-256
///   while it is in the record of used definite hashes; fixed and recorded at the round's
///   first submission.
///
/// Everything else (a wrong definite hash, a bad or high-S signature, an invalid VRF proof, a
/// node that withdrew or fell out of service before the cutoff, the chained vrf seed) is judged
/// by the agents from the logged submissions and the registry's events.
contract ElectionBoard {
    uint8 public constant MODE_PAPER = 0;
    uint8 public constant MODE_VRF = 1;

    uint8 public immutable mode;
    address public immutable registry; // the MasternodeRegistry whose active nodes stand
    uint64 public immutable startBlock; // boundary of round 0
    uint64 public immutable roundLength; // blocks between two boundaries
    uint64 public immutable window; // blocks after the boundary that take submissions

    mapping(uint64 => mapping(address => uint32)) public submissions; // round -> node -> count
    mapping(uint64 => bytes32) public definiteHashOf; // round -> its definite hash (paper)
    mapping(bytes32 => bool) public usedDefiniteHash;

    /// payload: the 64-byte signature (paper) or the 81-byte proof (vrf), as sent.
    /// definiteHash: what the node claimed (paper), zero in vrf mode. count: 1 for the first.
    event Submitted(
        uint64 indexed round, address indexed node, bytes32 definiteHash, bytes payload, uint32 count
    );
    event Disqualified(uint64 indexed round, address indexed node);
    /// Indexed by hash too: "was h used before block b" is a log query, no historical state.
    event DefiniteHashUsed(uint64 indexed round, bytes32 indexed definiteHash, uint32 rehashes);

    error NotActive(address node);
    error WrongMode(uint8 mode);
    error OutsideWindow(uint64 round, uint64 opensAfter, uint64 closesAt, uint64 blockNumber);
    error BadSchedule();

    constructor(
        uint8 mode_,
        address registry_,
        uint64 startBlock_,
        uint64 roundLength_,
        uint64 window_
    ) {
        // blockhash() reaches back 256 blocks: the window must end before the boundary's hash
        // is gone, and a window longer than the round would overlap the next one.
        if (mode_ > MODE_VRF || roundLength_ == 0 || window_ == 0 || window_ > roundLength_) {
            revert BadSchedule();
        }
        if (window_ > 255 || registry_.code.length == 0) revert BadSchedule();
        mode = mode_;
        registry = registry_;
        startBlock = startBlock_;
        roundLength = roundLength_;
        window = window_;
    }

    function boundary(uint64 round) public view returns (uint64) {
        return startBlock + round * roundLength;
    }

    /// The last block that takes submissions for `round`.
    function cutoff(uint64 round) public view returns (uint64) {
        return boundary(round) + window;
    }

    /// True while the node's submissions for the round count: it sent exactly one.
    function counted(uint64 round, address node) external view returns (bool) {
        return submissions[round][node] == 1;
    }

    /// Paper mode: the node-selection-signature transaction.
    function submitSelection(uint64 round, bytes32 definiteHash, bytes calldata signature)
        external
    {
        if (mode != MODE_PAPER) revert WrongMode(mode);
        _admit(round);
        if (definiteHashOf[round] == bytes32(0)) _fixDefiniteHash(round);
        _count(round, definiteHash, signature);
    }

    /// Vrf mode: the ECVRF proof over the node's alpha for the round (verified by the agents: a
    /// contract would pay for several scalar multiplications per proof).
    function submitProof(uint64 round, bytes calldata proof) external {
        if (mode != MODE_VRF) revert WrongMode(mode);
        _admit(round);
        _count(round, bytes32(0), proof);
    }

    function _admit(uint64 round) private view {
        if (!IMasternodeRegistry(registry).isActive(msg.sender)) revert NotActive(msg.sender);
        uint64 b = boundary(round);
        uint64 c = b + window;
        if (block.number <= b || block.number > c) {
            revert OutsideWindow(round, b, c, uint64(block.number));
        }
    }

    function _count(uint64 round, bytes32 definiteHash, bytes calldata payload) private {
        uint32 n = submissions[round][msg.sender] + 1;
        submissions[round][msg.sender] = n;
        emit Submitted(round, msg.sender, definiteHash, payload, n);
        if (n == 2) emit Disqualified(round, msg.sender);
    }

    function _fixDefiniteHash(uint64 round) private {
        bytes32 h = blockhash(boundary(round));
        uint32 rehashes = 0;
        while (usedDefiniteHash[h]) {
            h = keccak256(abi.encodePacked(h));
            rehashes++;
        }
        usedDefiniteHash[h] = true;
        definiteHashOf[round] = h;
        emit DefiniteHashUsed(round, h, rehashes);
    }
}
