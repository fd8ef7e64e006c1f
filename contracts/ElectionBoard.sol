// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// The election board: masternodes register their keys, then send one node-selection
/// submission per round (paper mode: definite hash + 64-byte signature; vrf mode: an 81-byte
/// ECVRF proof). The board enforces only what a contract can check cheaply and objectively:
///
/// - who: the sender is a registered masternode (msg.sender is the node id, so nobody can
///   submit under another node's id);
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
/// Everything else (a wrong definite hash, a malformed or bad or high-S signature, an invalid
/// VRF proof) is judged by the agents from the logged submissions: those submissions must be
/// visible on chain, or the "more than one" rule could not count them.
contract ElectionBoard {
    uint8 public constant MODE_PAPER = 0;
    uint8 public constant MODE_VRF = 1;

    uint8 public immutable mode;
    uint64 public immutable startBlock; // boundary of round 0
    uint64 public immutable roundLength; // blocks between two boundaries
    uint64 public immutable window; // blocks after the boundary that take submissions

    struct Node {
        uint64 registeredAt; // block number; 0 = not registered
        bytes publicKey; // 64-byte uncompressed secp256k1 key (x || y) of the node's address
        bytes vrfKey; // 64-byte uncompressed secp256k1 ECVRF public key
    }

    mapping(address => Node) private nodes;
    mapping(bytes32 => address) public vrfKeyOwner; // keccak256(vrfKey) -> node
    mapping(uint64 => mapping(address => uint32)) public submissions; // round -> node -> count
    mapping(uint64 => bytes32) public definiteHashOf; // round -> its definite hash (paper)
    mapping(bytes32 => bool) public usedDefiniteHash;

    event Registered(address indexed node, bytes publicKey, bytes vrfKey);
    /// payload: the 64-byte signature (paper) or the 81-byte proof (vrf), as sent.
    /// definiteHash: what the node claimed (paper), zero in vrf mode. count: 1 for the first.
    event Submitted(
        uint64 indexed round, address indexed node, bytes32 definiteHash, bytes payload, uint32 count
    );
    event Disqualified(uint64 indexed round, address indexed node);
    /// Indexed by hash too: "was h used before block b" is a log query, no historical state.
    event DefiniteHashUsed(uint64 indexed round, bytes32 indexed definiteHash, uint32 rehashes);

    error NotRegistered(address node);
    error AlreadyRegistered(address node);
    error BadPublicKey();
    error BadVrfKey();
    error VrfKeyTaken(address owner);
    error BadVrfKeyProof();
    error WrongMode(uint8 mode);
    error OutsideWindow(uint64 round, uint64 opensAfter, uint64 closesAt, uint64 blockNumber);
    error BadSchedule();

    constructor(uint8 mode_, uint64 startBlock_, uint64 roundLength_, uint64 window_) {
        // blockhash() reaches back 256 blocks: the window must end before the boundary's hash
        // is gone, and a window longer than the round would overlap the next one.
        if (mode_ > MODE_VRF || roundLength_ == 0 || window_ == 0 || window_ > roundLength_) {
            revert BadSchedule();
        }
        if (window_ > 255) revert BadSchedule();
        mode = mode_;
        startBlock = startBlock_;
        roundLength = roundLength_;
        window = window_;
    }

    /// Register the sender: its own public key (must hash to msg.sender) and an ECVRF public
    /// key, with an ECDSA signature by that VRF key over keccak256("edgence/election/vrf-key" ||
    /// chainid || this board || sender) as r || s || v (proof of possession: nobody can claim
    /// another node's VRF key). Once only; the block number is what vrf mode's "registered
    /// before the seed" rule reads.
    function register(bytes calldata publicKey, bytes calldata vrfKey, bytes calldata vrfKeyProof)
        external
    {
        if (nodes[msg.sender].registeredAt != 0) revert AlreadyRegistered(msg.sender);
        if (publicKey.length != 64 || address(uint160(uint256(keccak256(publicKey)))) != msg.sender)
        {
            revert BadPublicKey();
        }
        if (vrfKey.length != 64) revert BadVrfKey();
        bytes32 vrfId = keccak256(vrfKey);
        if (vrfKeyOwner[vrfId] != address(0)) revert VrfKeyTaken(vrfKeyOwner[vrfId]);
        if (vrfKeyProof.length != 65) revert BadVrfKeyProof();
        bytes32 digest = keccak256(
            abi.encodePacked("edgence/election/vrf-key", block.chainid, address(this), msg.sender)
        );
        bytes32 r = bytes32(vrfKeyProof[0:32]);
        bytes32 s = bytes32(vrfKeyProof[32:64]);
        uint8 v = uint8(vrfKeyProof[64]);
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0) || signer != address(uint160(uint256(vrfId)))) {
            revert BadVrfKeyProof();
        }
        vrfKeyOwner[vrfId] = msg.sender;
        nodes[msg.sender] = Node(uint64(block.number), publicKey, vrfKey);
        emit Registered(msg.sender, publicKey, vrfKey);
    }

    function nodeOf(address node)
        external
        view
        returns (uint64 registeredAt, bytes memory publicKey, bytes memory vrfKey)
    {
        Node storage n = nodes[node];
        return (n.registeredAt, n.publicKey, n.vrfKey);
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

    /// Vrf mode: the ECVRF proof over the round's alpha (verified by the agents: a contract
    /// would pay for several scalar multiplications per proof).
    function submitProof(uint64 round, bytes calldata proof) external {
        if (mode != MODE_VRF) revert WrongMode(mode);
        _admit(round);
        _count(round, bytes32(0), proof);
    }

    function _admit(uint64 round) private view {
        if (nodes[msg.sender].registeredAt == 0) revert NotRegistered(msg.sender);
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
