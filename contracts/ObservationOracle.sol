// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import "./MasternodeRegistry.sol";

/// On-chain oracle of Edgence masternode observations.
///
/// An observation is the EIP-712 struct a gateway signs for every reading
///   Observation(bytes32 deviceId,bytes32 sensor,int256 value,int8 exponent,bytes32 unit,
///               uint64 timestamp,uint64 deviceCounter,uint64 gatewaySequence)
/// under the domain {name "Edgence", version "1", chainId, verifyingContract = this contract},
/// with a 65-byte r‖s‖v signature. `submit` accepts it only if
///   - the signature is canonical (v 27/28, low S) and recovers to the claimed gateway,
///   - that gateway is an active masternode in the registry,
///   - its gateway sequence is above the last one accepted from that gateway (no replays),
///   - its timestamp is at most `maxAge` seconds behind block.timestamp (and at most
///     `maxFuture` ahead of it).
/// Accepted observations of one (device, sensor) gather in a round; once `quorum` distinct
/// masternodes that are still active have reported within `window` seconds of the round's
/// first report, the median value becomes the accepted value (`latest`). Values in one round
/// must share exponent and unit. With an even count the lower median is taken (no averaging:
/// the result is always a value some masternode signed).
contract ObservationOracle {
    struct Observation {
        bytes32 deviceId;
        bytes32 sensor;
        int256 value;
        int8 exponent;
        bytes32 unit;
        uint64 timestamp;
        uint64 deviceCounter;
        uint64 gatewaySequence;
    }

    struct Value {
        int256 value;
        int8 exponent;
        bytes32 unit;
        uint64 observedAt; // the oldest timestamp among the reports the median was taken over
        uint64 acceptedAt; // block.timestamp of acceptance
        uint32 reporters;
        uint64 round;
    }

    struct Report {
        address gateway;
        uint64 timestamp;
        int256 value;
    }

    struct Round {
        uint64 id;
        uint64 openedAt;
        uint32 count;
        int8 exponent;
        bytes32 unit;
        mapping(uint256 => Report) reports; // slots reused between rounds (cheaper rewrites)
    }

    bytes32 public constant DOMAIN_TYPEHASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    );
    bytes32 public constant OBSERVATION_TYPEHASH = keccak256(
        "Observation(bytes32 deviceId,bytes32 sensor,int256 value,int8 exponent,bytes32 unit,"
        "uint64 timestamp,uint64 deviceCounter,uint64 gatewaySequence)"
    );
    uint256 private constant HALF_N =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    MasternodeRegistry public immutable registry;
    uint32 public immutable quorum;
    uint64 public immutable maxAge;
    uint64 public immutable maxFuture;
    uint64 public immutable window;

    mapping(address => uint64) public lastSequence;
    mapping(bytes32 => Round) private _rounds;
    mapping(bytes32 => Value) private _values;

    event ObservationAccepted(
        address indexed gateway,
        bytes32 indexed deviceId,
        bytes32 indexed sensor,
        uint64 gatewaySequence,
        int256 value,
        uint64 round
    );
    event ObservationRejected(uint256 index, address indexed gateway, uint64 gatewaySequence, bytes reason);
    event RoundExpired(bytes32 indexed deviceId, bytes32 indexed sensor, uint64 round, uint32 reports);
    event ValueAccepted(
        bytes32 indexed deviceId,
        bytes32 indexed sensor,
        int256 value,
        int8 exponent,
        bytes32 unit,
        uint64 observedAt,
        uint32 reporters,
        uint64 round
    );

    error BadSignatureLength(uint256 length);
    error BadSignatureV(uint8 v);
    error HighS();
    error BadSignature();
    error SignerMismatch(address claimed, address recovered);
    error NotRegistered(address gateway);
    error Inactive(address gateway);
    error Replayed(address gateway, uint64 gatewaySequence, uint64 lastAccepted);
    error Stale(uint64 timestamp, uint256 blockTimestamp, uint64 maxAge);
    error FromFuture(uint64 timestamp, uint256 blockTimestamp, uint64 maxFuture);
    error RoundMismatch(int8 exponent, bytes32 unit, int8 roundExponent, bytes32 roundUnit);
    error LengthMismatch();
    error NoValue(bytes32 deviceId, bytes32 sensor);

    constructor(
        MasternodeRegistry registry_,
        uint32 quorum_,
        uint64 maxAge_,
        uint64 maxFuture_,
        uint64 window_
    ) {
        require(quorum_ > 0, "quorum must be at least 1");
        require(maxAge_ > 0 && window_ > 0, "maxAge and window must be positive");
        registry = registry_;
        quorum = quorum_;
        maxAge = maxAge_;
        maxFuture = maxFuture_;
        window = window_;
    }

    // -- EIP-712 ---------------------------------------------------------------------------

    function domainSeparator() public view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("Edgence"), keccak256("1"), block.chainid, address(this))
        );
    }

    function hashObservation(Observation calldata o) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                OBSERVATION_TYPEHASH,
                o.deviceId,
                o.sensor,
                o.value,
                o.exponent,
                o.unit,
                o.timestamp,
                o.deviceCounter,
                o.gatewaySequence
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
        bytes memory err;
        (valueAccepted, err) = _submit(gateway, o, signature);
        if (err.length != 0) _revert(err);
    }

    /// Submit many (from one or several gateways, in any mix). A refused one does not revert the
    /// batch: it is logged as ObservationRejected with the ABI-encoded error. Returns how many
    /// were accepted.
    function submitBatch(
        address[] calldata gateways,
        Observation[] calldata observations,
        bytes[] calldata signatures
    ) external returns (uint256 accepted) {
        if (gateways.length != observations.length || signatures.length != observations.length) {
            revert LengthMismatch();
        }
        for (uint256 i = 0; i < observations.length; i++) {
            (, bytes memory err) = _submit(gateways[i], observations[i], signatures[i]);
            if (err.length == 0) {
                accepted++;
            } else {
                emit ObservationRejected(i, gateways[i], observations[i].gatewaySequence, err);
            }
        }
    }

    // -- reading -----------------------------------------------------------------------------

    /// The accepted value of (deviceId, sensor); reverts NoValue if there is none yet.
    function latest(bytes32 deviceId, bytes32 sensor) external view returns (Value memory v) {
        v = _values[_key(deviceId, sensor)];
        if (v.acceptedAt == 0) revert NoValue(deviceId, sensor);
    }

    function currentRound(bytes32 deviceId, bytes32 sensor)
        external
        view
        returns (uint64 id, uint64 openedAt, uint32 reports)
    {
        Round storage r = _rounds[_key(deviceId, sensor)];
        return (r.id, r.openedAt, r.count);
    }

    // -- internals ---------------------------------------------------------------------------

    function _key(bytes32 deviceId, bytes32 sensor) private pure returns (bytes32) {
        return keccak256(abi.encode(deviceId, sensor));
    }

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

    function _submit(address gateway, Observation calldata o, bytes calldata sig)
        private
        returns (bool, bytes memory)
    {
        bytes memory err = _check(gateway, o, sig);
        if (err.length != 0) return (false, err);
        return _record(gateway, o);
    }

    /// Why `o` must be refused (empty when it may be recorded).
    function _check(address gateway, Observation calldata o, bytes calldata sig) private view returns (bytes memory) {
        (address signer, bytes memory err) = _recover(hashTypedData(o), sig);
        if (err.length != 0) return err;
        if (signer != gateway) return abi.encodeWithSelector(SignerMismatch.selector, gateway, signer);
        if (!registry.isActive(gateway)) {
            if (!registry.isRegistered(gateway)) return abi.encodeWithSelector(NotRegistered.selector, gateway);
            return abi.encodeWithSelector(Inactive.selector, gateway);
        }
        uint64 last = lastSequence[gateway];
        if (o.gatewaySequence <= last) {
            return abi.encodeWithSelector(Replayed.selector, gateway, o.gatewaySequence, last);
        }
        if (uint256(o.timestamp) + maxAge < block.timestamp) {
            return abi.encodeWithSelector(Stale.selector, o.timestamp, block.timestamp, maxAge);
        }
        if (uint256(o.timestamp) > block.timestamp + maxFuture) {
            return abi.encodeWithSelector(FromFuture.selector, o.timestamp, block.timestamp, maxFuture);
        }
        return "";
    }

    /// Adds a checked observation to its (device, sensor) round; accepts the median at quorum.
    function _record(address gateway, Observation calldata o) private returns (bool, bytes memory) {
        bytes32 key = _key(o.deviceId, o.sensor);
        Round storage r = _rounds[key];
        if (r.count != 0 && block.timestamp > uint256(r.openedAt) + window) {
            emit RoundExpired(o.deviceId, o.sensor, r.id, r.count);
            r.count = 0;
        }
        if (r.count == 0) {
            r.id += 1;
            r.openedAt = uint64(block.timestamp);
            r.exponent = o.exponent;
            r.unit = o.unit;
        } else if (r.exponent != o.exponent || r.unit != o.unit) {
            return (false, abi.encodeWithSelector(RoundMismatch.selector, o.exponent, o.unit, r.exponent, r.unit));
        }
        lastSequence[gateway] = o.gatewaySequence;
        _addReport(r, gateway, o.timestamp, o.value);
        emit ObservationAccepted(gateway, o.deviceId, o.sensor, o.gatewaySequence, o.value, r.id);
        if (r.count >= quorum) return (_tryAccept(key, r, o.deviceId, o.sensor), "");
        return (false, "");
    }

    function _addReport(Round storage r, address gateway, uint64 timestamp, int256 value) private {
        uint32 n = r.count;
        uint256 slot = n;
        for (uint256 i = 0; i < n; i++) {
            if (r.reports[i].gateway == gateway) {
                slot = i; // a newer report of the same masternode replaces its older one
                break;
            }
        }
        r.reports[slot] = Report(gateway, timestamp, value);
        if (slot == n) r.count = n + 1;
    }

    /// Median over the round's reporters that are still active; accepted once they are quorum.
    function _tryAccept(bytes32 key, Round storage r, bytes32 deviceId, bytes32 sensor) private returns (bool) {
        (int256 median, uint64 oldest, uint256 live) = _median(r);
        if (live < quorum) return false;
        Value storage v = _values[key];
        v.value = median;
        v.exponent = r.exponent;
        v.unit = r.unit;
        v.observedAt = oldest;
        v.acceptedAt = uint64(block.timestamp);
        v.reporters = uint32(live);
        v.round = r.id;
        emit ValueAccepted(deviceId, sensor, median, v.exponent, v.unit, oldest, v.reporters, v.round);
        r.count = 0;
        return true;
    }

    function _median(Round storage r) private view returns (int256, uint64 oldest, uint256 live) {
        uint256 n = r.count;
        int256[] memory values = new int256[](n);
        oldest = type(uint64).max;
        for (uint256 i = 0; i < n; i++) {
            Report storage rep = r.reports[i];
            if (!registry.isActive(rep.gateway)) continue;
            int256 x = rep.value;
            uint256 j = live++;
            while (j > 0 && values[j - 1] > x) {
                values[j] = values[j - 1];
                j--;
            }
            values[j] = x;
            if (rep.timestamp < oldest) oldest = rep.timestamp;
        }
        if (live == 0) return (0, 0, 0);
        return (values[(live - 1) / 2], oldest, live);
    }
}
