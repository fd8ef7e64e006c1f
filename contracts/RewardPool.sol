// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import "./MasternodeRegistry.sol";

/// The masternode reward: `rewardPerEpoch` wei per epoch of `epochBlocks` blocks, split equally
/// among the masternodes in service in that epoch. Anyone funds the pool (dApp fees, a
/// foundation) by sending it native tokens.
///
/// No transaction loops over the masternodes. During an epoch each masternode that the registry
/// counts active (collateral posted, heartbeats on time, in service) checks in once, which
/// raises that epoch's count; a masternode that is not active cannot check in and gets nothing
/// for the epoch. Once the epoch is over its count is final and each masternode that checked
/// in pulls `rewardPerEpoch / count` for it with `claim`, which walks this masternode's own
/// epochs since its last claim (bounded by the caller with `uptoEpoch`).
/// Standing is read at check-in: a masternode put out of service later in the same epoch keeps
/// that epoch's share and loses the following ones.
contract RewardPool {
    struct Claimant {
        uint64 next; // first epoch not yet claimed
        bool seen; // checked in at least once
    }

    MasternodeRegistry public immutable registry;
    uint256 public immutable rewardPerEpoch;
    uint64 public immutable epochBlocks;
    uint64 public immutable firstBlock;

    mapping(uint256 => uint256) public inServiceCount; // epoch => masternodes checked in
    mapping(uint256 => mapping(address => bool)) public checkedIn;
    mapping(address => Claimant) private _claimants;

    event Funded(address indexed from, uint256 amount);
    event CheckedIn(uint256 indexed epoch, address indexed masternode, uint256 count);
    event Claimed(address indexed masternode, uint256 fromEpoch, uint256 toEpoch, uint256 amount);

    error NotInService(address masternode);
    error AlreadyCheckedIn(uint256 epoch, address masternode);
    error NothingToClaim(address masternode);
    error Underfunded(uint256 amount, uint256 balance);
    error TransferFailed();

    constructor(address registry_, uint256 rewardPerEpoch_, uint64 epochBlocks_, uint64 firstBlock_) {
        require(registry_ != address(0), "registry must be set");
        require(epochBlocks_ > 0, "epoch length must be positive");
        require(firstBlock_ <= block.number, "first block must not be in the future");
        registry = MasternodeRegistry(registry_);
        rewardPerEpoch = rewardPerEpoch_;
        epochBlocks = epochBlocks_;
        firstBlock = firstBlock_;
    }

    receive() external payable {
        emit Funded(msg.sender, msg.value);
    }

    function fund() external payable {
        emit Funded(msg.sender, msg.value);
    }

    /// Count the caller in for the current epoch (it must be active in the registry now).
    function checkIn() external {
        uint256 epoch = currentEpoch();
        if (!registry.isActive(msg.sender)) revert NotInService(msg.sender);
        if (checkedIn[epoch][msg.sender]) revert AlreadyCheckedIn(epoch, msg.sender);
        checkedIn[epoch][msg.sender] = true;
        uint256 count = ++inServiceCount[epoch];
        Claimant storage c = _claimants[msg.sender];
        if (!c.seen) {
            c.seen = true;
            c.next = uint64(epoch);
        }
        emit CheckedIn(epoch, msg.sender, count);
    }

    /// Pay the caller's share of every finished epoch from its last claim up to (excluding)
    /// `uptoEpoch` (capped at the current epoch).
    function claim(uint256 uptoEpoch) external returns (uint256 amount) {
        uint256 from;
        uint256 to;
        (amount, from, to) = claimable(msg.sender, uptoEpoch);
        if (to <= from) revert NothingToClaim(msg.sender);
        _claimants[msg.sender].next = uint64(to);
        if (amount == 0) {
            emit Claimed(msg.sender, from, to, 0);
            return 0;
        }
        if (amount > address(this).balance) revert Underfunded(amount, address(this).balance);
        emit Claimed(msg.sender, from, to, amount);
        (bool ok, ) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    // -- views ----------------------------------------------------------------------------

    function currentEpoch() public view returns (uint256) {
        return (block.number - firstBlock) / epochBlocks;
    }

    /// What `masternode` would get by `claim(uptoEpoch)`: the amount and the epoch range
    /// [fromEpoch, toEpoch) it covers.
    function claimable(address masternode, uint256 uptoEpoch)
        public
        view
        returns (uint256 amount, uint256 fromEpoch, uint256 toEpoch)
    {
        Claimant storage c = _claimants[masternode];
        if (!c.seen) return (0, 0, 0);
        fromEpoch = c.next;
        toEpoch = uptoEpoch < currentEpoch() ? uptoEpoch : currentEpoch();
        for (uint256 e = fromEpoch; e < toEpoch; e++) {
            if (checkedIn[e][masternode]) amount += rewardPerEpoch / inServiceCount[e];
        }
        if (toEpoch < fromEpoch) toEpoch = fromEpoch;
    }

    /// The share of one epoch's reward for each masternode counted in it (0 while nobody is).
    function share(uint256 epoch) external view returns (uint256) {
        uint256 n = inServiceCount[epoch];
        return n == 0 ? 0 : rewardPerEpoch / n;
    }
}
