// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import "./ObservationOracle.sol";

/// An example dApp that reads the oracle: a frost guard for one temperature sensor. `refresh()`
/// takes the oracle's accepted value (the median of several masternodes), refuses one older
/// than `maxAge` seconds, converts it to milli-units and raises or clears the frost alarm.
/// Anyone may call refresh(); it only ever reads what the masternodes signed.
contract ConsumerExample {
    ObservationOracle public immutable oracle;
    bytes32 public immutable deviceId;
    bytes32 public immutable sensor;
    bytes32 public immutable unit;
    uint64 public immutable maxAge;
    int256 public immutable frostBelowMilli;

    int256 public lastMilli; // the last value read, in thousandths of `unit`
    uint64 public lastObservedAt;
    uint64 public lastRound;
    bool public frost;

    event Reading(int256 milli, uint64 observedAt, uint32 reporters, uint64 round);
    event FrostAlarm(bool on, int256 milli);

    error TooOld(uint64 observedAt, uint256 nowTs);
    error WrongUnit(bytes32 got, bytes32 want);
    error ExponentOutOfRange(int8 exponent);

    constructor(
        ObservationOracle oracle_,
        bytes32 deviceId_,
        bytes32 sensor_,
        bytes32 unit_,
        uint64 maxAge_,
        int256 frostBelowMilli_
    ) {
        oracle = oracle_;
        deviceId = deviceId_;
        sensor = sensor_;
        unit = unit_;
        maxAge = maxAge_;
        frostBelowMilli = frostBelowMilli_;
    }

    function refresh() external returns (int256 milli) {
        ObservationOracle.Value memory v = oracle.latest(deviceId, sensor);
        if (uint256(v.observedAt) + maxAge < block.timestamp) revert TooOld(v.observedAt, block.timestamp);
        if (v.unit != unit) revert WrongUnit(v.unit, unit);
        milli = toMilli(v.value, v.exponent);
        lastMilli = milli;
        lastObservedAt = v.observedAt;
        lastRound = v.round;
        emit Reading(milli, v.observedAt, v.reporters, v.round);
        bool now_ = milli < frostBelowMilli;
        if (now_ != frost) {
            frost = now_;
            emit FrostAlarm(now_, milli);
        }
    }

    /// value·10^exponent in thousandths (truncated toward zero).
    function toMilli(int256 value, int8 exponent) public pure returns (int256) {
        int256 e = int256(exponent) + 3;
        if (e < -76 || e > 76) revert ExponentOutOfRange(exponent);
        if (e >= 0) return value * int256(10 ** uint256(e));
        return value / int256(10 ** uint256(-e));
    }
}
