// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// Edgence masternodes: a gateway signing address that locked the fixed native-token
/// collateral, with its VRF public key (for the hardened validator election) and a heartbeat.
///
/// The paper's rules, as this contract applies them:
/// - a masternode is its gateway signing address: the key that signs observations is the one
///   that registers (msg.sender), so nobody can bind another gateway's key to their collateral;
/// - it is *active* while it is registered and its last heartbeat is at most
///   `heartbeatWindow` blocks old; missing heartbeats make it inactive (no transaction is
///   needed for that: `isActive` is computed from block numbers), a heartbeat resumes it;
/// - withdrawing the collateral removes it from the list at once.
/// - once a ServiceStanding contract is attached (by the deployer, once), a masternode that
///   contract puts out of service is not active either, until it passes the probes again.
/// Every change emits an event. Anyone may call `reportInactive` to log the Inactive event
/// for a masternode whose heartbeats stopped (it changes nothing but the event record).
interface IServiceStanding {
    function inService(address masternode) external view returns (bool);
}

contract MasternodeRegistry {
    struct Masternode {
        bytes vrfPublicKey; // 33-byte compressed secp256k1 point (ECVRF, RFC 9381 form)
        uint256 collateral;
        uint64 registeredAt; // block number
        uint64 lastHeartbeat; // block number
        uint32 index; // position in `_list` plus one; 0 = not registered
        bool inactiveReported;
    }

    uint256 public immutable collateral;
    uint64 public immutable heartbeatWindow;
    address public immutable deployer;
    /// Proof-of-service verdicts (0: none attached, service is not checked).
    IServiceStanding public serviceStanding;

    mapping(address => Masternode) private _nodes;
    address[] private _list;

    event Registered(address indexed masternode, bytes vrfPublicKey, uint256 collateral, uint64 atBlock);
    event Heartbeat(address indexed masternode, uint64 atBlock);
    event Inactive(address indexed masternode, uint64 lastHeartbeat, uint64 atBlock);
    event Resumed(address indexed masternode, uint64 lastHeartbeat, uint64 atBlock);
    event VrfKeyChanged(address indexed masternode, bytes vrfPublicKey);
    event Withdrawn(address indexed masternode, uint256 collateral, uint64 atBlock);
    event ServiceStandingAttached(address standing);

    error WrongCollateral(uint256 sent, uint256 required);
    error AlreadyRegistered(address masternode);
    error NotRegistered(address masternode);
    error BadVrfPublicKey();
    error StillActive(address masternode, uint64 inactiveAfterBlock);
    error TransferFailed();
    error NotDeployer(address caller);
    error StandingAlreadyAttached(address standing);

    constructor(uint256 collateral_, uint64 heartbeatWindow_) {
        require(collateral_ > 0, "collateral must be positive");
        require(heartbeatWindow_ > 0, "heartbeat window must be positive");
        collateral = collateral_;
        heartbeatWindow = heartbeatWindow_;
        deployer = msg.sender;
    }

    // -- changes --------------------------------------------------------------------------

    function register(bytes calldata vrfPublicKey_) external payable {
        if (msg.value != collateral) revert WrongCollateral(msg.value, collateral);
        Masternode storage n = _nodes[msg.sender];
        if (n.index != 0) revert AlreadyRegistered(msg.sender);
        _checkVrfKey(vrfPublicKey_);
        _list.push(msg.sender);
        uint64 nowBlock = uint64(block.number);
        n.vrfPublicKey = vrfPublicKey_;
        n.collateral = msg.value;
        n.registeredAt = nowBlock;
        n.lastHeartbeat = nowBlock;
        n.index = uint32(_list.length);
        n.inactiveReported = false;
        emit Registered(msg.sender, vrfPublicKey_, msg.value, nowBlock);
    }

    function heartbeat() external {
        Masternode storage n = _registered(msg.sender);
        uint64 last = n.lastHeartbeat;
        uint64 nowBlock = uint64(block.number);
        if (uint256(nowBlock) > uint256(last) + heartbeatWindow) {
            n.inactiveReported = false;
            emit Resumed(msg.sender, last, nowBlock);
        }
        n.lastHeartbeat = nowBlock;
        emit Heartbeat(msg.sender, nowBlock);
    }

    function setVrfPublicKey(bytes calldata vrfPublicKey_) external {
        Masternode storage n = _registered(msg.sender);
        _checkVrfKey(vrfPublicKey_);
        n.vrfPublicKey = vrfPublicKey_;
        emit VrfKeyChanged(msg.sender, vrfPublicKey_);
    }

    /// Withdraw the collateral: the masternode leaves the list in the same transaction.
    function withdraw() external {
        Masternode storage n = _registered(msg.sender);
        uint256 amount = n.collateral;
        uint256 i = n.index - 1;
        address last = _list[_list.length - 1];
        _list[i] = last;
        _nodes[last].index = uint32(i + 1);
        _list.pop();
        delete _nodes[msg.sender];
        emit Withdrawn(msg.sender, amount, uint64(block.number));
        (bool ok, ) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    /// Log that `masternode` missed its heartbeats (once per lapse). Reverts while it is active.
    function reportInactive(address masternode) external {
        Masternode storage n = _registered(masternode);
        uint256 deadline = uint256(n.lastHeartbeat) + heartbeatWindow;
        if (block.number <= deadline) revert StillActive(masternode, uint64(deadline));
        if (!n.inactiveReported) {
            n.inactiveReported = true;
            emit Inactive(masternode, n.lastHeartbeat, uint64(block.number));
        }
    }

    /// Attach the ServiceStanding contract whose verdicts `isActive` follows. Once, by the
    /// deployer: after that nobody can detach or replace it.
    function attachServiceStanding(address standing) external {
        if (msg.sender != deployer) revert NotDeployer(msg.sender);
        if (address(serviceStanding) != address(0)) revert StandingAlreadyAttached(address(serviceStanding));
        require(standing.code.length != 0, "standing must be a contract");
        serviceStanding = IServiceStanding(standing);
        emit ServiceStandingAttached(standing);
    }

    // -- views ----------------------------------------------------------------------------

    function isRegistered(address masternode) public view returns (bool) {
        return _nodes[masternode].index != 0;
    }

    /// Registered, heartbeats on time, and in service (when a ServiceStanding is attached).
    function isActive(address masternode) public view returns (bool) {
        Masternode storage n = _nodes[masternode];
        if (n.index == 0 || block.number > uint256(n.lastHeartbeat) + heartbeatWindow) return false;
        IServiceStanding s = serviceStanding;
        return address(s) == address(0) || s.inService(masternode);
    }

    function vrfPublicKey(address masternode) external view returns (bytes memory) {
        return _nodes[masternode].vrfPublicKey;
    }

    /// The block in which `masternode` registered (0 if it is not registered).
    function registeredAt(address masternode) external view returns (uint64) {
        return _nodes[masternode].registeredAt;
    }

    function info(address masternode)
        external
        view
        returns (
            bool registered,
            bool active,
            bytes memory vrfKey,
            uint256 locked,
            uint64 registeredAtBlock,
            uint64 lastHeartbeatBlock
        )
    {
        Masternode storage n = _nodes[masternode];
        return (
            n.index != 0,
            isActive(masternode),
            n.vrfPublicKey,
            n.collateral,
            n.registeredAt,
            n.lastHeartbeat
        );
    }

    function count() external view returns (uint256) {
        return _list.length;
    }

    function masternodeAt(uint256 i) external view returns (address) {
        return _list[i];
    }

    function activeCount() external view returns (uint256 active) {
        for (uint256 i = 0; i < _list.length; i++) {
            if (isActive(_list[i])) active++;
        }
    }

    // -- internals ------------------------------------------------------------------------

    function _registered(address masternode) private view returns (Masternode storage n) {
        n = _nodes[masternode];
        if (n.index == 0) revert NotRegistered(masternode);
    }

    function _checkVrfKey(bytes calldata key) private pure {
        if (key.length != 33 || (key[0] != 0x02 && key[0] != 0x03)) revert BadVrfPublicKey();
    }
}
