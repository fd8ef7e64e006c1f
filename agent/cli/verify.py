"""`edgence-agent verify`: check signed observation envelopes, oracle answers or Dropped
statements (one, or JSON lines, or batched messages: arrays of envelopes) offline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.errors import AgentError, EnvelopeError


def cmd_verify(args: argparse.Namespace) -> int:
    from agent.attest.dropped import is_dropped_statement, verify_dropped
    from agent.oracle import verify_document

    data = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    text = data.strip()
    if not text:
        raise AgentError("no envelope given")
    # One envelope (possibly pretty-printed), or JSON lines. Each is handed over as text so
    # that the verifier sees it exactly (duplicate keys included).
    try:
        json.loads(text)
        docs = [text]
    except json.JSONDecodeError:
        docs = [line for line in text.splitlines() if line.strip()]
    docs = [env for doc in docs for env in _members(doc)]
    bad = 0
    for i, doc in enumerate(docs, 1):
        if is_dropped_statement(doc):
            try:
                d = verify_dropped(doc)
            except EnvelopeError as exc:
                bad += 1
                print(f"INVALID #{i}: {exc}")
                continue
            print(
                f"ok dropped signer={d.signer} first={d.first_sequence} last={d.last_sequence} "
                f"droppedAt={d.dropped_at} chainId={d.domain.chain_id}"
            )
            continue
        try:
            lines = verify_document(doc)
        except EnvelopeError as exc:
            bad += 1
            print(f"INVALID #{i}: {exc}")
            continue
        print("\n".join(lines))
    return 1 if bad else 0


def _members(doc: str) -> list[str]:
    """A batched upstream message (a JSON array, bridge.envelopes_per_message) gives its
    envelopes, each verified on its own; anything else is one document."""
    if not doc.lstrip().startswith("["):
        return [doc]
    from agent.attest.observation import split_batch

    try:
        return [json.dumps(env, separators=(",", ":")) for env in split_batch(doc)]
    except EnvelopeError:
        return [doc]  # reported as invalid by the verifier, with its reason


def add_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "verify", help="check signed observation envelopes or Dropped statements (FILE or -)"
    )
    s.add_argument("file")
    s.set_defaults(fn=cmd_verify)
