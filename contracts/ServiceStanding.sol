// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// What ServiceStanding reads from the ElectionBoard: its epochs and each epoch's committee.
interface IElectionCommittee {
    function epochAt(uint64 b) external view returns (bool ok, uint64 round, uint64 offset);
    function rankOf(uint64 round, address node) external view returns (uint32);
    function committeeSize(uint64 round) external view returns (uint32);
    function disputed(uint64 round) external view returns (bool);
}

/// Proof of service: per epoch, each member of that epoch's elected committee submits a verdict
/// (passed or failed) for the masternodes it probed. An epoch is *failed* for a masternode once
/// a majority of the committee said failed, *passed* once a majority said passed. After
/// `failEpochs` failed epochs in a row the masternode is out of service (the registry then
/// counts it inactive: no rewards, not a candidate, no votes) until an epoch it passes.
///
/// The committee is the ElectionBoard's, with no admin: epochs are the board's (epoch e is
/// blocks (boundary(e+1), boundary(e+2)], served by the nodes elected in round e, as posted
/// with `postCommittee`); the majority is of the posted committee's distinct members. An epoch
/// whose committee was never posted, or was disputed (two different committees posted), takes
/// no verdicts: nobody's standing changes in it. Verdicts for epoch e are taken from its first
/// block (a whole round after its committee could be posted, time for honest agents to dispute
/// a wrong post) and during the next epoch; nobody rewrites older history. Committees of more
/// than 128 distinct members take no verdicts (one storage word records who voted).
contract ServiceStanding {
    struct Tally {
        uint16 passes;
        uint16 fails;
        bool decided;
        uint128 voted; // bit i: the committee member of rank i + 1 voted
    }

    struct Standing {
        uint64 streak; // failed epochs in a row
        uint64 lastFailed; // the last failed epoch (valid while streak > 0)
        bool out;
    }

    uint256 public constant MAX_COMMITTEE = 128;

    IElectionCommittee public immutable board;
    uint64 public immutable failEpochs;

    mapping(uint256 => mapping(address => Tally)) private _tally;
    mapping(address => Standing) private _standing;

    event Verdict(uint256 indexed epoch, address indexed masternode, address indexed member, bool passed);
    event EpochFailed(uint256 indexed epoch, address indexed masternode, uint64 streak);
    event EpochPassed(uint256 indexed epoch, address indexed masternode);
    event OutOfService(address indexed masternode, uint256 epoch);
    event Restored(address indexed masternode, uint256 epoch);

    error NotCommittee(address caller, uint256 epoch);
    error WrongEpoch(uint256 epoch, uint256 current);
    error LengthMismatch();
    error CommitteeNotPosted(uint256 epoch);
    error CommitteeDisputed(uint256 epoch);
    error CommitteeTooLarge(uint256 epoch, uint256 size);

    constructor(address board_, uint64 failEpochs_) {
        require(board_.code.length != 0, "board must be a contract");
        require(failEpochs_ > 0, "failEpochs must be positive");
        board = IElectionCommittee(board_);
        failEpochs = failEpochs_;
    }

    // -- verdicts -----------------------------------------------------------------------------

    /// One committee member's verdicts for `epoch`; a second verdict by the same member for the
    /// same masternode and epoch is ignored.
    function submitVerdicts(uint256 epoch, address[] calldata masternodes, bool[] calldata passed) external {
        if (masternodes.length != passed.length) revert LengthMismatch();
        (uint128 bit, uint256 majority) = _member(epoch);
        for (uint256 i = 0; i < masternodes.length; i++) {
            _record(epoch, masternodes[i], passed[i], bit, majority);
        }
    }

    // -- views ----------------------------------------------------------------------------

    /// The board's epoch now (0 also before the first epoch).
    function currentEpoch() public view returns (uint256) {
        (, uint256 e) = _currentEpoch();
        return e;
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

    /// Whether `who` may submit verdicts for `epoch`: a member of its posted, undisputed
    /// committee (of at most MAX_COMMITTEE members, `who` among the first MAX_COMMITTEE).
    function isCommittee(uint256 epoch, address who) external view returns (bool) {
        uint64 round = uint64(epoch);
        uint256 size = board.committeeSize(round);
        uint32 rank = board.rankOf(round, who);
        return size != 0 && size <= MAX_COMMITTEE && rank != 0 && rank <= MAX_COMMITTEE
            && !board.disputed(round);
    }

    // -- internals ------------------------------------------------------------------------

    /// The sender's bit in the tally and the majority of `epoch`'s committee; reverts unless
    /// the sender is a member and the epoch takes verdicts now.
    function _member(uint256 epoch) private view returns (uint128 bit, uint256 majority) {
        (bool ok, uint256 current) = _currentEpoch();
        if (!ok || epoch > current || epoch + 1 < current) revert WrongEpoch(epoch, current);
        uint64 round = uint64(epoch);
        uint256 size = board.committeeSize(round);
        if (size == 0) revert CommitteeNotPosted(epoch);
        if (size > MAX_COMMITTEE) revert CommitteeTooLarge(epoch, size);
        if (board.disputed(round)) revert CommitteeDisputed(epoch);
        uint32 rank = board.rankOf(round, msg.sender);
        if (rank == 0 || rank > MAX_COMMITTEE) revert NotCommittee(msg.sender, epoch);
        return (uint128(1) << (rank - 1), size / 2 + 1);
    }

    function _record(uint256 epoch, address mn, bool pass, uint128 bit, uint256 majority) private {
        Tally storage t = _tally[epoch][mn];
        if (t.voted & bit != 0) return;
        t.voted |= bit;
        emit Verdict(epoch, mn, msg.sender, pass);
        if (pass) t.passes++;
        else t.fails++;
        if (t.decided) return;
        if (t.fails >= majority) {
            t.decided = true;
            _failed(mn, epoch);
        } else if (t.passes >= majority) {
            t.decided = true;
            _passed(mn, epoch);
        }
    }

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

    function _currentEpoch() private view returns (bool ok, uint256 epoch) {
        (bool inEpoch, uint64 round,) = board.epochAt(uint64(block.number));
        return (inEpoch, round);
    }
}
