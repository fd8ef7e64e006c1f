// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// Proof of service: per epoch, each member of the probing committee submits a verdict (passed
/// or failed) for the masternodes it probed. An epoch is *failed* for a masternode once a
/// majority of the committee said failed, *passed* once a majority said passed. After
/// `failEpochs` failed epochs in a row the masternode is out of service (the registry then
/// counts it inactive: no rewards, not a candidate, no votes) until an epoch it passes.
///
/// Who is on the committee is what `admin` last set with `setCommittee` (at most 128
/// members). The majority is taken of the committee's size when the verdict lands, so a
/// committee change mid-epoch applies from the next verdict on. Verdicts are accepted for the
/// current epoch and the one before it only: nobody rewrites older history.
contract ServiceStanding {
    struct Tally {
        uint16 passes;
        uint16 fails;
        bool decided;
        uint128 voted; // bit i: committee member i voted
    }

    struct Standing {
        uint64 streak; // failed epochs in a row
        uint64 lastFailed; // the last failed epoch (valid while streak > 0)
        bool out;
    }

    uint64 public immutable epochBlocks;
    uint64 public immutable firstBlock;
    uint64 public immutable failEpochs;
    address public admin;

    address[] private _committee;
    mapping(address => uint8) private _memberIndex; // index + 1; 0 = not a member
    mapping(uint256 => mapping(address => Tally)) private _tally;
    mapping(address => Standing) private _standing;

    event CommitteeSet(address[] members, uint64 atEpoch);
    event AdminChanged(address admin);
    event Verdict(uint256 indexed epoch, address indexed masternode, address indexed member, bool passed);
    event EpochFailed(uint256 indexed epoch, address indexed masternode, uint64 streak);
    event EpochPassed(uint256 indexed epoch, address indexed masternode);
    event OutOfService(address indexed masternode, uint256 epoch);
    event Restored(address indexed masternode, uint256 epoch);

    error NotAdmin(address caller);
    error NotCommittee(address caller);
    error WrongEpoch(uint256 epoch, uint256 current);
    error LengthMismatch();
    error BadCommittee();

    constructor(uint64 epochBlocks_, uint64 firstBlock_, uint64 failEpochs_, address[] memory committee_) {
        require(epochBlocks_ > 0, "epoch length must be positive");
        require(failEpochs_ > 0, "failEpochs must be positive");
        require(firstBlock_ <= block.number, "first block must not be in the future");
        epochBlocks = epochBlocks_;
        firstBlock = firstBlock_;
        failEpochs = failEpochs_;
        admin = msg.sender;
        _setCommittee(committee_);
    }

    // -- administration (the lead wires this to the elected committee) ----------------------

    function setCommittee(address[] calldata members) external {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _setCommittee(members);
    }

    function setAdmin(address admin_) external {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        admin = admin_;
        emit AdminChanged(admin_);
    }

    // -- verdicts -----------------------------------------------------------------------------

    /// One committee member's verdicts for `epoch`; a second verdict by the same member for the
    /// same masternode and epoch is ignored.
    function submitVerdicts(uint256 epoch, address[] calldata masternodes, bool[] calldata passed) external {
        uint8 idx = _memberIndex[msg.sender];
        if (idx == 0) revert NotCommittee(msg.sender);
        if (masternodes.length != passed.length) revert LengthMismatch();
        uint256 current = currentEpoch();
        if (epoch > current || epoch + 1 < current) revert WrongEpoch(epoch, current);
        uint128 bit = uint128(1) << (idx - 1);
        uint256 majority = _committee.length / 2 + 1;
        for (uint256 i = 0; i < masternodes.length; i++) {
            address mn = masternodes[i];
            Tally storage t = _tally[epoch][mn];
            if (t.voted & bit != 0) continue;
            t.voted |= bit;
            emit Verdict(epoch, mn, msg.sender, passed[i]);
            if (passed[i]) t.passes++;
            else t.fails++;
            if (t.decided) continue;
            if (t.fails >= majority) {
                t.decided = true;
                _failed(mn, epoch);
            } else if (t.passes >= majority) {
                t.decided = true;
                _passed(mn, epoch);
            }
        }
    }

    // -- views ----------------------------------------------------------------------------

    function currentEpoch() public view returns (uint256) {
        return (block.number - firstBlock) / epochBlocks;
    }

    function inService(address masternode) external view returns (bool) {
        return !_standing[masternode].out;
    }

    function standing(address masternode) external view returns (bool out, uint64 streak, uint64 lastFailed) {
        Standing storage s = _standing[masternode];
        return (s.out, s.streak, s.lastFailed);
    }

    function tally(uint256 epoch, address masternode) external view returns (uint16 passes, uint16 fails, bool decided) {
        Tally storage t = _tally[epoch][masternode];
        return (t.passes, t.fails, t.decided);
    }

    function committee() external view returns (address[] memory) {
        return _committee;
    }

    function isCommittee(address who) external view returns (bool) {
        return _memberIndex[who] != 0;
    }

    // -- internals ------------------------------------------------------------------------

    function _failed(address mn, uint256 epoch) private {
        Standing storage s = _standing[mn];
        if (s.streak > 0 && uint256(s.lastFailed) + 1 == epoch) s.streak++;
        else s.streak = 1;
        s.lastFailed = uint64(epoch);
        emit EpochFailed(epoch, mn, s.streak);
        if (!s.out && s.streak >= failEpochs) {
            s.out = true;
            emit OutOfService(mn, epoch);
        }
    }

    function _passed(address mn, uint256 epoch) private {
        Standing storage s = _standing[mn];
        s.streak = 0;
        emit EpochPassed(epoch, mn);
        if (s.out) {
            s.out = false;
            emit Restored(mn, epoch);
        }
    }

    function _setCommittee(address[] memory members) private {
        if (members.length == 0 || members.length > 128) revert BadCommittee();
        for (uint256 i = 0; i < _committee.length; i++) delete _memberIndex[_committee[i]];
        delete _committee;
        for (uint256 i = 0; i < members.length; i++) {
            if (members[i] == address(0) || _memberIndex[members[i]] != 0) revert BadCommittee();
            _committee.push(members[i]);
            _memberIndex[members[i]] = uint8(i + 1);
        }
        emit CommitteeSet(members, uint64(currentEpoch()));
    }
}
