// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// A small real contract for the chain client's tests and the demo: state that changes, a view
/// to call, and an event to subscribe to.
contract Counter {
    uint256 public number;

    event Incremented(address indexed by, uint256 number);

    function increment() external {
        number += 1;
        emit Incremented(msg.sender, number);
    }

    function set(uint256 value) external {
        number = value;
        emit Incremented(msg.sender, value);
    }
}
