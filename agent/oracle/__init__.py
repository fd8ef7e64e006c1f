"""The oracle: dApps ask for signed observations (agent/oracle/service.py, over the transports
in servers.py) and get calldata for the oracle contract (calldata.py); queries in query.py.

The calldata names are imported from here by the masternode duties, the election's aggregator,
the `verify` command and the benchmarks.
"""

from agent.oracle.calldata import (
    OBSERVATION_TUPLE,
    SUBMIT_BATCH_SELECTOR,
    SUBMIT_BATCH_SIGNATURE,
    SUBMIT_SELECTOR,
    SUBMIT_SIGNATURE,
    check_answer,
    observation_tuple,
    submit_batch_calldata,
    submit_calldata,
    verify_document,
)

__all__ = [
    "OBSERVATION_TUPLE",
    "SUBMIT_BATCH_SELECTOR",
    "SUBMIT_BATCH_SIGNATURE",
    "SUBMIT_SELECTOR",
    "SUBMIT_SIGNATURE",
    "check_answer",
    "observation_tuple",
    "submit_batch_calldata",
    "submit_calldata",
    "verify_document",
]
