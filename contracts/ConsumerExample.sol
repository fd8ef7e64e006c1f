// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import "./ObservationOracle.sol";

/// An example dApp that reads the oracle: a frost guard for one temperature feed. `refresh()`
/// takes the feed's accepted value (the median of several masternodes), refuses one older than
/// `maxAge` seconds, with fewer than `minReporters` masternodes behind it or below
/// `minAssurance` (how the devices were authenticated), converts it to milli-units and raises
/// or clears the frost alarm. Anyone may call refresh(); it only reads what masternodes signed.
contract ConsumerExample {
    ObservationOracle public immutable oracle;
    bytes32 public immutable feed;
    bytes32 public immutable unit;
    uint64 public immutable maxAge;
    uint32 public immutable minReporters;
    uint8 public immutable minAssurance;
    int256 public immutable frostBelowMilli;

    int256 public lastMilli; // the last value read, in thousandths of `unit`
    uint64 public lastObservedAt;
    uint64 public lastRound;
    bool public frost;

    event Reading(int256 milli, uint64 observedAt, uint32 reporters, uint8 minAssurance, uint64 round);
    event FrostAlarm(bool on, int256 milli);

    error TooOld(uint64 observedAt, uint256 nowTs);
    error WrongUnit(bytes32 got, bytes32 want);
    error TooFewReporters(uint32 reporters, uint32 minReporters);
    error AssuranceTooLow(uint8 assurance, uint8 minAssurance);
    error ExponentOutOfRange(int8 exponent);

    constructor(
        ObservationOracle oracle_,
        bytes32 feed_,
        bytes32 unit_,
        uint64 maxAge_,
        uint32 minReporters_,
        uint8 minAssurance_,
        int256 frostBelowMilli_
    ) {
        oracle = oracle_;
        feed = feed_;
        unit = unit_;
        maxAge = maxAge_;
        minReporters = minReporters_;
        minAssurance = minAssurance_;
        frostBelowMilli = frostBelowMilli_;
    }

    function refresh() external returns (int256 milli) {
        ObservationOracle.Value memory v = oracle.latest(feed);
        if (uint256(v.observedAt) + maxAge < block.timestamp) revert TooOld(v.observedAt, block.timestamp);
        if (v.unit != unit) revert WrongUnit(v.unit, unit);
        if (v.reporters < minReporters) revert TooFewReporters(v.reporters, minReporters);
        if (v.minAssurance < minAssurance) revert AssuranceTooLow(v.minAssurance, minAssurance);
        milli = toMilli(v.value, v.exponent);
        lastMilli = milli;
        lastObservedAt = v.observedAt;
        lastRound = v.round;
        emit Reading(milli, v.observedAt, v.reporters, v.minAssurance, v.round);
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
