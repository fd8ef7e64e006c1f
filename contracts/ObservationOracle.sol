// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import "./MasternodeRegistry.sol";

/// On-chain oracle of Edgence masternode observations, organised in *feeds*.
///
/// An observation is the EIP-712 struct (type version 2) a gateway signs for every reading
///   Observation(bytes32 feed,bytes32 deviceId,bytes32 sensor,int256 value,int8 exponent,
///               bytes32 unit,uint64 timestamp,uint64 deviceCounter,uint64 gatewaySequence,
///               uint8 transport,uint8 assurance)
/// under the domain {name "Edgence", version "2", chainId, verifyingContract = this contract},
/// with a 65-byte r‖s‖v signature. `assurance` says how the gateway authenticated the device
/// (0 none, 1 by the transport, 2 by the device's own MAC), `transport` which link carried it.
///
/// A feed is what a dApp reads. Whoever creates it first fixes its policy for good: quorum of
/// distinct masternodes, minimum assurance, window, maximum age, whether all reports must be
/// witnesses of the same reading, and optionally the only gateways that may report. A dApp
/// reads `policy(feed)` (creator included) before trusting a feed, or creates its own.
///
/// An observation is accepted for its feed only if
///   - the signature is canonical (v 27/28, low S) and recovers to the claimed gateway,
///   - that gateway is an active masternode in the registry (and allowed by the feed),
///   - its assurance is at least the feed's minimum,
///   - its gateway sequence is above the last one accepted from that gateway *for that feed*
///     (no replays; a third party submitting a gateway's newest observation of one feed early
///     never blocks that gateway's older observations of other feeds),
///   - its timestamp is at most the feed's `maxAge` seconds behind block.timestamp (and at most
///     `maxFuture` ahead of it).
/// The value of a feed is the median over distinct masternodes: of witnesses of the same
/// reading (same device and device counter) when the feed says `sameReading`, otherwise of
/// reports (possibly of independent devices) that arrive within `window` seconds of the first.
/// Values must share exponent and unit. With an even count the lower median is taken (no
/// averaging: the result is always a value some masternode signed).
///
/// Two ways in: `submit` (one observation; it waits in the feed's round until quorum) and
/// `submitBatch` (many observations, grouped by runs of equal feed: one policy check per
/// feed; a group that carries a quorum by itself is decided in memory without touching the
/// round; a bad element is skipped with ObservationRejected, never reverting the batch).
contract ObservationOracle {
    struct Observation {
        bytes32 feed;
        bytes32 deviceId;
        bytes32 sensor;
        int256 value;
        int8 exponent;
        bytes32 unit;
        uint64 timestamp;
        uint64 deviceCounter;
        uint64 gatewaySequence;
        uint8 transport;
        uint8 assurance;
    }

    struct Policy {
        uint32 quorum; // distinct masternodes; 0 = the feed does not exist
        uint8 minAssurance;
        bool sameReading;
        bool restricted; // only `allowedGateway` may report
        uint64 window; // seconds a round stays open
        uint64 maxAge; // seconds an observation may lag block.timestamp
        address creator;
    }

    struct Value {
        int256 value;
        int8 exponent;
        bytes32 unit;
        uint64 observedAt; // the oldest timestamp among the reports the median was taken over
        uint32 reporters;
        uint8 minAssurance; // the lowest assurance among those reports
        uint64 acceptedAt; // block.timestamp of acceptance
        uint64 round;
    }

    struct Report {
        address gateway;
        uint64 timestamp;
        uint8 assurance;
        int256 value;
    }

    struct Round {
        uint64 id;
        uint64 openedAt;
        uint32 count;
        int8 exponent;
        bytes32 unit;
        bytes32 deviceId; // sameReading feeds: the reading this round collects
        uint64 deviceCounter;
        uint64 readingTimestamp;
        mapping(uint256 => Report) reports; // slots reused between rounds (cheaper rewrites)
    }

    /// The reports of one batch group that passed their checks (decided in memory).
    struct Group {
        bytes32 feed;
        uint256 count;
        int256[] values;
        address[] gateways;
        uint256[] index; // position in the batch of each admitted report
        uint64 oldest;
        uint8 minAssurance;
        int8 exponent;
        bytes32 unit;
        bytes32 deviceId;
        uint64 deviceCounter;
    }

    bytes32 public constant DOMAIN_TYPEHASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    );
    bytes32 public constant OBSERVATION_TYPEHASH = keccak256(
        "Observation(bytes32 feed,bytes32 deviceId,bytes32 sensor,int256 value,int8 exponent,"
        "bytes32 unit,uint64 timestamp,uint64 deviceCounter,uint64 gatewaySequence,"
        "uint8 transport,uint8 assurance)"
    );
    uint256 private constant HALF_N =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint8 public constant MAX_ASSURANCE = 2;

    MasternodeRegistry public immutable registry;
    uint64 public immutable maxFuture;
    bytes32 private immutable _domainSeparator;
    uint256 private immutable _chainId;

    mapping(bytes32 => Policy) private _policies;
    mapping(bytes32 => mapping(address => bool)) public allowedGateway;
    /// feed => gateway => the last gateway sequence accepted from that gateway for that feed.
    mapping(bytes32 => mapping(address => uint64)) public lastSequence;
    mapping(bytes32 => Round) private _rounds;
    mapping(bytes32 => Value) private _values;

    event FeedCreated(
        bytes32 indexed feed,
        address indexed creator,
        uint32 quorum,
        uint8 minAssurance,
        bool sameReading,
        uint64 window,
        uint64 maxAge,
        address[] allowedGateways
    );
    event ObservationAccepted(address indexed gateway, bytes32 indexed feed, uint64 gatewaySequence, uint64 round);
    event ObservationRejected(bytes32 indexed feed, address indexed gateway, uint64 gatewaySequence, bytes reason);
    event RoundExpired(bytes32 indexed feed, uint64 round, uint32 reports);
    event ValueAccepted(
        bytes32 indexed feed,
        int256 value,
        int8 exponent,
        bytes32 unit,
        uint64 observedAt,
        uint32 reporters,
        uint8 minAssurance,
        uint64 round
    );

    error BadSignatureLength(uint256 length);
    error BadSignatureV(uint8 v);
    error HighS();
    error BadSignature();
    error SignerMismatch(address claimed, address recovered);
    error NotRegistered(address gateway);
    error Inactive(address gateway);
    error UnknownFeed(bytes32 feed);
    error FeedExists(bytes32 feed);
    error BadPolicy(string why);
    error NotAllowed(address gateway, bytes32 feed);
    error AssuranceTooLow(uint8 assurance, uint8 minAssurance);
    error BadAssurance(uint8 assurance);
    error Replayed(address gateway, bytes32 feed, uint64 gatewaySequence, uint64 lastAccepted);
    error Stale(uint64 timestamp, uint256 blockTimestamp, uint64 maxAge);
    error FromFuture(uint64 timestamp, uint256 blockTimestamp, uint64 maxFuture);
    error RoundMismatch(int8 exponent, bytes32 unit, int8 roundExponent, bytes32 roundUnit);
    error OtherReading(bytes32 deviceId, uint64 deviceCounter, bytes32 roundDeviceId, uint64 roundDeviceCounter);
    error Superseded(uint64 timestamp, uint64 roundReadingTimestamp);
    error DuplicateReporter(address gateway);
    error LengthMismatch();
    error NoValue(bytes32 feed);

    constructor(MasternodeRegistry registry_, uint64 maxFuture_) {
        registry = registry_;
        maxFuture = maxFuture_;
        _chainId = block.chainid;
        _domainSeparator = _buildDomainSeparator();
    }

    // -- feeds ------------------------------------------------------------------------------

    /// Create `feed` with its policy (fixed for good). `allowedGateways` empty = any active
    /// masternode may report.
    function createFeed(
        bytes32 feed,
        uint32 quorum,
        uint8 minAssurance,
        bool sameReading,
        uint64 window,
        uint64 maxAge,
        address[] calldata allowedGateways
    ) external {
        if (_policies[feed].quorum != 0) revert FeedExists(feed);
        if (quorum == 0) revert BadPolicy("quorum must be at least 1");
        if (minAssurance > MAX_ASSURANCE) revert BadPolicy("minAssurance must be 0, 1 or 2");
        if (window == 0 || maxAge == 0) revert BadPolicy("window and maxAge must be positive");
        if (allowedGateways.length != 0 && allowedGateways.length < quorum) {
            revert BadPolicy("fewer allowed gateways than the quorum");
        }
        _policies[feed] = Policy(
            quorum, minAssurance, sameReading, allowedGateways.length != 0, window, maxAge, msg.sender
        );
        for (uint256 i = 0; i < allowedGateways.length; i++) {
            allowedGateway[feed][allowedGateways[i]] = true;
        }
        emit FeedCreated(feed, msg.sender, quorum, minAssurance, sameReading, window, maxAge, allowedGateways);
    }

    function policy(bytes32 feed) external view returns (Policy memory p) {
        p = _policies[feed];
        if (p.quorum == 0) revert UnknownFeed(feed);
    }

    // -- EIP-712 ---------------------------------------------------------------------------

    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _chainId ? _domainSeparator : _buildDomainSeparator();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("Edgence"), keccak256("2"), block.chainid, address(this))
        );
    }

    function hashObservation(Observation calldata o) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                OBSERVATION_TYPEHASH,
                o.feed,
                o.deviceId,
                o.sensor,
                o.value,
                o.exponent,
                o.unit,
                o.timestamp,
                o.deviceCounter,
                o.gatewaySequence,
                o.transport,
                o.assurance
            )
        );
    }

    /// The digest a gateway signs for `o` (keccak256(0x1901 ‖ domainSeparator ‖ hashStruct)).
    function hashTypedData(Observation calldata o) public view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), hashObservation(o)));
    }

    /// The address `signature` recovers to over `o`'s digest (reverts on a non-canonical one).
    function recoverSigner(Observation calldata o, bytes calldata signature) public view returns (address) {
        (address signer, bytes memory err) = _recover(hashTypedData(o), signature);
        if (err.length != 0) _revert(err);
        return signer;
    }

    // -- submission --------------------------------------------------------------------------

    /// Submit one observation signed by `gateway`. Reverts with the reason it is refused.
    /// Returns true when it completed a quorum and a new value was accepted.
    function submit(address gateway, Observation calldata o, bytes calldata signature)
        external
        returns (bool valueAccepted)
    {
        Policy memory p = _policies[o.feed];
        if (p.quorum == 0) revert UnknownFeed(o.feed);
        bytes memory err = _check(p, gateway, o, signature);
        if (err.length == 0) (valueAccepted, err) = _record(p, gateway, o);
        if (err.length != 0) _revert(err);
    }

    /// Submit many observations (several feeds, several gateways each, in any mix). Runs of
    /// consecutive observations of the same feed form a group, checked against the feed's
    /// policy once; a group that holds a quorum of valid reports is decided at once, a smaller
    /// one joins the feed's round. A refused observation does not revert the batch: it is
    /// logged as ObservationRejected with the ABI-encoded error. Returns how many feed values
    /// were accepted.
    function submitBatch(
        address[] calldata gateways,
        Observation[] calldata observations,
        bytes[] calldata signatures
    ) external returns (uint256 valuesAccepted) {
        uint256 n = observations.length;
        if (gateways.length != n || signatures.length != n) revert LengthMismatch();
        uint256 start = 0;
        while (start < n) {
            bytes32 feed = observations[start].feed;
            uint256 end = start + 1;
            while (end < n && observations[end].feed == feed) end++;
            if (_submitGroup(feed, start, end, gateways, observations, signatures)) valuesAccepted++;
            start = end;
        }
    }

    // -- reading -----------------------------------------------------------------------------

    /// The accepted value of `feed`; reverts NoValue if there is none yet.
    function latest(bytes32 feed) external view returns (Value memory v) {
        v = _values[feed];
        if (v.acceptedAt == 0) revert NoValue(feed);
    }

    function currentRound(bytes32 feed) external view returns (uint64 id, uint64 openedAt, uint32 reports) {
        Round storage r = _rounds[feed];
        return (r.id, r.openedAt, r.count);
    }

    /// keccak256(deviceId ‖ sensor): the feed a gateway assigns by default, so that every
    /// gateway derives the same feed for the same device and sensor.
    function defaultFeed(bytes32 deviceId, bytes32 sensor) external pure returns (bytes32) {
        return keccak256(abi.encodePacked(deviceId, sensor));
    }

    // -- internals ---------------------------------------------------------------------------

    function _revert(bytes memory err) private pure {
        assembly {
            revert(add(err, 32), mload(err))
        }
    }

    function _recover(bytes32 digest, bytes calldata sig) private pure returns (address, bytes memory) {
        if (sig.length != 65) return (address(0), abi.encodeWithSelector(BadSignatureLength.selector, sig.length));
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (v != 27 && v != 28) return (address(0), abi.encodeWithSelector(BadSignatureV.selector, v));
        if (uint256(s) > HALF_N) return (address(0), abi.encodeWithSelector(HighS.selector));
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) return (address(0), abi.encodeWithSelector(BadSignature.selector));
        return (signer, "");
    }

    /// Why `o` must be refused for its feed (empty when it may be recorded).
    function _check(Policy memory p, address gateway, Observation calldata o, bytes calldata sig)
        private
        view
        returns (bytes memory)
    {
        (address signer, bytes memory err) = _recover(hashTypedData(o), sig);
        if (err.length != 0) return err;
        if (signer != gateway) return abi.encodeWithSelector(SignerMismatch.selector, gateway, signer);
        if (p.restricted && !allowedGateway[o.feed][gateway]) {
            return abi.encodeWithSelector(NotAllowed.selector, gateway, o.feed);
        }
        if (!registry.isActive(gateway)) {
            if (!registry.isRegistered(gateway)) return abi.encodeWithSelector(NotRegistered.selector, gateway);
            return abi.encodeWithSelector(Inactive.selector, gateway);
        }
        if (o.assurance > MAX_ASSURANCE) return abi.encodeWithSelector(BadAssurance.selector, o.assurance);
        if (o.assurance < p.minAssurance) {
            return abi.encodeWithSelector(AssuranceTooLow.selector, o.assurance, p.minAssurance);
        }
        uint64 last = lastSequence[o.feed][gateway];
        if (o.gatewaySequence <= last) {
            return abi.encodeWithSelector(Replayed.selector, gateway, o.feed, o.gatewaySequence, last);
        }
        if (uint256(o.timestamp) + p.maxAge < block.timestamp) {
            return abi.encodeWithSelector(Stale.selector, o.timestamp, block.timestamp, p.maxAge);
        }
        if (uint256(o.timestamp) > block.timestamp + maxFuture) {
            return abi.encodeWithSelector(FromFuture.selector, o.timestamp, block.timestamp, maxFuture);
        }
        return "";
    }

    function _submitGroup(
        bytes32 feed,
        uint256 start,
        uint256 end,
        address[] calldata gateways,
        Observation[] calldata observations,
        bytes[] calldata signatures
    ) private returns (bool) {
        Policy memory p = _policies[feed];
        Group memory g;
        g.feed = feed;
        g.values = new int256[](end - start);
        g.gateways = new address[](end - start);
        g.index = new uint256[](end - start);
        g.oldest = type(uint64).max;
        g.minAssurance = type(uint8).max;
        for (uint256 i = start; i < end; i++) {
            _admit(g, p, i, gateways[i], observations[i], signatures[i]);
        }
        if (g.count == 0) return false;
        if (g.count >= p.quorum) return _acceptGroup(g, gateways, observations);
        return _recordGroup(g, p, gateways, observations);
    }

    /// Checks observation `i` and adds it to the group, or logs why it is refused.
    function _admit(
        Group memory g,
        Policy memory p,
        uint256 i,
        address gateway,
        Observation calldata o,
        bytes calldata sig
    ) private {
        bytes memory err = p.quorum == 0
            ? abi.encodeWithSelector(UnknownFeed.selector, g.feed)
            : _check(p, gateway, o, sig);
        if (err.length == 0) err = _join(g, p, gateway, o);
        if (err.length != 0) {
            emit ObservationRejected(g.feed, gateway, o.gatewaySequence, err);
        } else {
            g.index[g.count - 1] = i;
        }
    }

    /// A group that holds a quorum by itself: decided in memory, the reports never touch the
    /// round's storage. Reports still waiting in the round are older: they are dropped.
    function _acceptGroup(Group memory g, address[] calldata gateways, Observation[] calldata observations)
        private
        returns (bool)
    {
        Round storage r = _rounds[g.feed];
        if (r.count != 0) {
            emit RoundExpired(g.feed, r.id, r.count);
            r.count = 0;
        }
        uint64 id = ++r.id;
        for (uint256 k = 0; k < g.count; k++) {
            uint256 i = g.index[k];
            lastSequence[g.feed][gateways[i]] = observations[i].gatewaySequence;
            emit ObservationAccepted(gateways[i], g.feed, observations[i].gatewaySequence, id);
        }
        _sortValues(g.values, g.count);
        _store(g.feed, g.values[(g.count - 1) / 2], g.exponent, g.unit, g.oldest, uint32(g.count), g.minAssurance, id);
        return true;
    }

    /// A group below quorum: its reports join the feed's round (which may then reach quorum).
    function _recordGroup(
        Group memory g,
        Policy memory p,
        address[] calldata gateways,
        Observation[] calldata observations
    ) private returns (bool accepted) {
        for (uint256 k = 0; k < g.count; k++) {
            uint256 i = g.index[k];
            (bool done, bytes memory err) = _record(p, gateways[i], observations[i]);
            if (err.length != 0) emit ObservationRejected(g.feed, gateways[i], observations[i].gatewaySequence, err);
            if (done) accepted = true;
        }
    }

    /// Adds a checked report to an in-memory group; the reason it cannot join otherwise.
    function _join(Group memory g, Policy memory p, address gateway, Observation calldata o)
        private
        pure
        returns (bytes memory)
    {
        if (g.count == 0) {
            g.exponent = o.exponent;
            g.unit = o.unit;
            g.deviceId = o.deviceId;
            g.deviceCounter = o.deviceCounter;
        } else {
            if (g.exponent != o.exponent || g.unit != o.unit) {
                return abi.encodeWithSelector(RoundMismatch.selector, o.exponent, o.unit, g.exponent, g.unit);
            }
            if (p.sameReading && (g.deviceId != o.deviceId || g.deviceCounter != o.deviceCounter)) {
                return abi.encodeWithSelector(
                    OtherReading.selector, o.deviceId, o.deviceCounter, g.deviceId, g.deviceCounter
                );
            }
            for (uint256 k = 0; k < g.count; k++) {
                if (g.gateways[k] == gateway) return abi.encodeWithSelector(DuplicateReporter.selector, gateway);
            }
        }
        g.gateways[g.count] = gateway;
        g.values[g.count] = o.value;
        g.count++;
        if (o.timestamp < g.oldest) g.oldest = o.timestamp;
        if (o.assurance < g.minAssurance) g.minAssurance = o.assurance;
        return "";
    }

    function _sortValues(int256[] memory values, uint256 n) private pure {
        for (uint256 i = 1; i < n; i++) {
            int256 x = values[i];
            uint256 j = i;
            while (j > 0 && values[j - 1] > x) {
                values[j] = values[j - 1];
                j--;
            }
            values[j] = x;
        }
    }

    function _store(
        bytes32 feed,
        int256 median,
        int8 exponent,
        bytes32 unit,
        uint64 oldest,
        uint32 reporters,
        uint8 minAssurance,
        uint64 round
    ) private {
        _values[feed] = Value(median, exponent, unit, oldest, reporters, minAssurance, uint64(block.timestamp), round);
        emit ValueAccepted(feed, median, exponent, unit, oldest, reporters, minAssurance, round);
    }

    /// Adds a checked observation to its feed's round; accepts the median at quorum.
    function _record(Policy memory p, address gateway, Observation calldata o) private returns (bool, bytes memory) {
        Round storage r = _rounds[o.feed];
        if (r.count != 0 && block.timestamp > uint256(r.openedAt) + p.window) {
            emit RoundExpired(o.feed, r.id, r.count);
            r.count = 0;
        }
        if (r.count != 0 && p.sameReading && (r.deviceId != o.deviceId || r.deviceCounter != o.deviceCounter)) {
            // Another reading: a newer one starts a new round, an older one is too late.
            if (o.timestamp < r.readingTimestamp) {
                return (false, abi.encodeWithSelector(Superseded.selector, o.timestamp, r.readingTimestamp));
            }
            emit RoundExpired(o.feed, r.id, r.count);
            r.count = 0;
        }
        if (r.count == 0) {
            r.id += 1;
            r.openedAt = uint64(block.timestamp);
            r.exponent = o.exponent;
            r.unit = o.unit;
            if (p.sameReading) {
                r.deviceId = o.deviceId;
                r.deviceCounter = o.deviceCounter;
                r.readingTimestamp = o.timestamp;
            }
        } else if (r.exponent != o.exponent || r.unit != o.unit) {
            return (false, abi.encodeWithSelector(RoundMismatch.selector, o.exponent, o.unit, r.exponent, r.unit));
        }
        lastSequence[o.feed][gateway] = o.gatewaySequence;
        _addReport(r, gateway, o.timestamp, o.assurance, o.value);
        emit ObservationAccepted(gateway, o.feed, o.gatewaySequence, r.id);
        if (r.count >= p.quorum) return (_tryAccept(o.feed, r, p.quorum), "");
        return (false, "");
    }

    function _addReport(Round storage r, address gateway, uint64 timestamp, uint8 assurance, int256 value) private {
        uint32 n = r.count;
        uint256 slot = n;
        for (uint256 i = 0; i < n; i++) {
            if (r.reports[i].gateway == gateway) {
                slot = i; // a newer report of the same masternode replaces its older one
                break;
            }
        }
        r.reports[slot] = Report(gateway, timestamp, assurance, value);
        if (slot == n) r.count = n + 1;
    }

    /// Median over the round's reporters that are still active; accepted once they are quorum.
    function _tryAccept(bytes32 feed, Round storage r, uint32 quorum) private returns (bool) {
        uint256 n = r.count;
        int256[] memory values = new int256[](n);
        uint64 oldest = type(uint64).max;
        uint8 minAssurance = type(uint8).max;
        uint256 live = 0;
        for (uint256 i = 0; i < n; i++) {
            Report storage rep = r.reports[i];
            if (!registry.isActive(rep.gateway)) continue;
            values[live++] = rep.value;
            if (rep.timestamp < oldest) oldest = rep.timestamp;
            if (rep.assurance < minAssurance) minAssurance = rep.assurance;
        }
        if (live < quorum) return false;
        _sortValues(values, live);
        _store(feed, values[(live - 1) / 2], r.exponent, r.unit, oldest, uint32(live), minAssurance, r.id);
        r.count = 0;
        return true;
    }
}
