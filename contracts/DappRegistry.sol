// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import "./MasternodeRegistry.sol";

/// dApps approved by masternode vote. A dApp proposes its contract addresses; each active
/// masternode holds one stance per proposal (approve or revoke) and may change it. When more
/// than half of the masternodes active at that moment approve, the proposal is approved;
/// when more than half stand for revoking, it is revoked (and may be approved again later).
/// Agents admit state-changing transactions only to approved proposals' contracts.
///
/// A stance counts from the block it is cast by an active masternode; it is not withdrawn
/// when that masternode later goes inactive (the count is re-checked against the number of
/// active masternodes at every vote). `activeCount` walks the registry's list, so a vote
/// costs gas in proportion to the number of registered masternodes (see docs/masternodes.md).
contract DappRegistry {
    enum Stance {
        None,
        Approve,
        Revoke
    }

    struct Proposal {
        address proposer;
        string name;
        address[] contracts;
        uint32 approvals;
        uint32 revocations;
        bool approved;
    }

    MasternodeRegistry public immutable registry;
    Proposal[] private _proposals;
    mapping(uint256 => mapping(address => Stance)) public stanceOf;

    event Proposed(uint256 indexed id, address indexed proposer, string name, address[] contracts);
    event Voted(uint256 indexed id, address indexed masternode, bool approve);
    event Approved(uint256 indexed id, address[] contracts);
    event Revoked(uint256 indexed id, address[] contracts);

    error NotActive(address masternode);
    error NoSuchProposal(uint256 id);
    error NoContracts();

    constructor(address registry_) {
        require(registry_ != address(0), "registry must be set");
        registry = MasternodeRegistry(registry_);
    }

    function propose(string calldata name, address[] calldata contracts) external returns (uint256 id) {
        if (contracts.length == 0 || contracts.length > 32) revert NoContracts();
        id = _proposals.length;
        Proposal storage p = _proposals.push();
        p.proposer = msg.sender;
        p.name = name;
        p.contracts = contracts;
        emit Proposed(id, msg.sender, name, contracts);
    }

    /// The caller's stance on proposal `id`: approve (true) or revoke (false).
    function vote(uint256 id, bool approve) external {
        if (id >= _proposals.length) revert NoSuchProposal(id);
        if (!registry.isActive(msg.sender)) revert NotActive(msg.sender);
        Proposal storage p = _proposals[id];
        Stance old = stanceOf[id][msg.sender];
        Stance now_ = approve ? Stance.Approve : Stance.Revoke;
        if (old == Stance.Approve) p.approvals--;
        else if (old == Stance.Revoke) p.revocations--;
        if (approve) p.approvals++;
        else p.revocations++;
        stanceOf[id][msg.sender] = now_;
        emit Voted(id, msg.sender, approve);
        uint256 active = registry.activeCount();
        if (!p.approved && uint256(p.approvals) * 2 > active) {
            p.approved = true;
            emit Approved(id, p.contracts);
        } else if (p.approved && uint256(p.revocations) * 2 > active) {
            p.approved = false;
            emit Revoked(id, p.contracts);
        }
    }

    // -- views ----------------------------------------------------------------------------

    function proposalCount() external view returns (uint256) {
        return _proposals.length;
    }

    function proposal(uint256 id)
        external
        view
        returns (
            address proposer,
            string memory name,
            address[] memory contracts,
            uint32 approvals,
            uint32 revocations,
            bool approved
        )
    {
        if (id >= _proposals.length) revert NoSuchProposal(id);
        Proposal storage p = _proposals[id];
        return (p.proposer, p.name, p.contracts, p.approvals, p.revocations, p.approved);
    }
}
