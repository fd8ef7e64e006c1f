// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import "./MasternodeRegistry.sol";

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
    /// The committee (the elected nodes of round e) serves epoch e, blocks
    /// (boundary(e+1), boundary(e+2)]: there, the node of rank i (0 = leader) may report from
    /// offset i * leaderTimeout, any active masternode from offset fallbackTimeout.
    uint64 public immutable leaderTimeout;
    uint64 public immutable fallbackTimeout;

    mapping(uint64 => mapping(address => uint32)) public submissions; // round -> node -> count
    mapping(uint64 => bytes32) public definiteHashOf; // round -> its definite hash (paper)
    mapping(bytes32 => bool) public usedDefiniteHash;
    mapping(uint64 => bytes32) public committeeHash; // round -> keccak256(abi.encodePacked(elected))
    mapping(uint64 => bool) public disputed; // two different committees posted for the round
    mapping(uint64 => mapping(address => uint32)) public rankOf; // round -> node -> rank + 1
    mapping(uint64 => uint32) public committeeSize; // round -> distinct members posted

    /// payload: the 64-byte signature (paper) or the 81-byte proof (vrf), as sent.
    /// definiteHash: what the node claimed (paper), zero in vrf mode. count: 1 for the first.
    event Submitted(
        uint64 indexed round, address indexed node, bytes32 definiteHash, bytes payload, uint32 count
    );
    event Disqualified(uint64 indexed round, address indexed node);
    /// Indexed by hash too: "was h used before block b" is a log query, no historical state.
    event DefiniteHashUsed(uint64 indexed round, bytes32 indexed definiteHash, uint32 rehashes);
    event CommitteePosted(uint64 indexed round, address indexed by, address[] elected);
    event CommitteeDisputed(uint64 indexed round, address indexed by, address[] elected);

    error NotActive(address node);
    error WrongMode(uint8 mode);
    error OutsideWindow(uint64 round, uint64 opensAfter, uint64 closesAt, uint64 blockNumber);
    error BadSchedule();
    error NotDecided(uint64 round, uint64 cutoff);

    constructor(
        uint8 mode_,
        address registry_,
        uint64 startBlock_,
        uint64 roundLength_,
        uint64 window_,
        uint64 leaderTimeout_,
        uint64 fallbackTimeout_
    ) {
        // blockhash() reaches back 256 blocks: the window must end before the boundary's hash
        // is gone, and a window longer than the round would overlap the next one.
        if (mode_ > MODE_VRF || roundLength_ == 0 || window_ == 0 || window_ > roundLength_) {
            revert BadSchedule();
        }
        if (window_ > 255 || registry_.code.length == 0) revert BadSchedule();
        if (leaderTimeout_ == 0 || fallbackTimeout_ < leaderTimeout_) revert BadSchedule();
        mode = mode_;
        registry = registry_;
        startBlock = startBlock_;
        roundLength = roundLength_;
        window = window_;
        leaderTimeout = leaderTimeout_;
        fallbackTimeout = fallbackTimeout_;
    }

    /// Post round `round`'s committee (its elected nodes, best first) as every agent decided it
    /// off-chain; any active masternode may, once the round's cutoff has passed. The first post
    /// stands; a different one later marks the round disputed (its epoch then takes reports
    /// from every active masternode: nobody can capture an epoch by posting first, only open it).
    function postCommittee(uint64 round, address[] calldata elected) external {
        if (!MasternodeRegistry(registry).isActive(msg.sender)) revert NotActive(msg.sender);
        uint64 c = cutoff(round);
        if (block.number <= c) revert NotDecided(round, c);
        bytes32 h = keccak256(abi.encodePacked(elected));
        bytes32 have = committeeHash[round];
        if (have == bytes32(0)) {
            committeeHash[round] = h;
            uint32 size = 0;
            for (uint256 i = 0; i < elected.length; i++) {
                if (rankOf[round][elected[i]] == 0) {
                    rankOf[round][elected[i]] = uint32(i + 1);
                    size++;
                }
            }
            committeeSize[round] = size;
            emit CommitteePosted(round, msg.sender, elected);
        } else if (have != h && !disputed[round]) {
            disputed[round] = true;
            emit CommitteeDisputed(round, msg.sender, elected);
        }
    }

    /// The round whose committee serves block `b`, and b's offset in that epoch (0-based);
    /// ok = false before the first epoch (blocks up to boundary(1)).
    function epochAt(uint64 b) public view returns (bool ok, uint64 round, uint64 offset) {
        uint64 first = startBlock + roundLength; // boundary(1): epoch 0 starts after it
        if (b <= first) return (false, 0, 0);
        round = (b - first - 1) / roundLength;
        offset = (b - first - 1) % roundLength;
        ok = true;
    }

    /// May `node` report (to an oracle that asks) in block `b`? An active masternode only; in
    /// an epoch whose committee is posted and undisputed, rank i from offset i * leaderTimeout;
    /// in a disputed epoch anyone active; everyone active from offset fallbackTimeout, and
    /// before the first epoch.
    function mayReport(address node, uint64 b) public view returns (bool) {
        if (!MasternodeRegistry(registry).isActive(node)) return false;
        (bool ok, uint64 round, uint64 offset) = epochAt(b);
        if (!ok || offset >= fallbackTimeout || disputed[round]) return true;
        uint32 rank = rankOf[round][node];
        return rank != 0 && offset >= uint64(rank - 1) * leaderTimeout;
    }

    /// mayReport for the sender in the current block (what an oracle calls).
    function mayReportNow(address node) external view returns (bool) {
        return mayReport(node, uint64(block.number));
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
        if (!MasternodeRegistry(registry).isActive(msg.sender)) revert NotActive(msg.sender);
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
