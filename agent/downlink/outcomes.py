"""What a requester is told when a command ends: the device's verified answer with the
gateway's signed receipt, or why the TTL ended without one (docs/downlink.md, "Refusals and
failures"). No I/O."""

from __future__ import annotations

from typing import Any

from agent.attest.keys import GatewayKey
from agent.attest.receipt import receipt_message, sign_receipt
from agent.downlink.codec import Answer, answer_canonical
from agent.downlink.store import StoredCommand
from agent.model import Eip712Domain


def answered(
    key: GatewayKey, domain: Eip712Domain, cmd: StoredCommand, answer: Answer, now: int
) -> dict[str, Any]:
    """The outcome of a command the device answered (MAC verified), with the signed receipt."""
    device = cmd.device_id
    canon = answer_canonical(
        device, answer.counter, answer.command_id, answer.status, answer.result
    )
    receipt = sign_receipt(
        key,
        domain,
        receipt_message(
            cmd.command_id, device, cmd.action, answer.status, canon, answer.counter, now
        ),
        canon,
        dict(answer.result),
    )
    outcome: dict[str, Any] = {
        "ok": answer.ok,
        "id": cmd.command_id,
        "device": device,
        "action": cmd.action,
        "status": answer.status,
        "result": dict(answer.result),
        "receipt": receipt.as_json(domain),
    }
    if not answer.ok:
        outcome["error"] = answer.status
        outcome["detail"] = f"the device answered {answer.status!r}"
    return outcome


def expired(cmd: StoredCommand, bad_answers: int) -> dict[str, Any]:
    """The outcome of a command whose TTL ended unanswered; `bad_answers` is how many answers
    failed the device's MAC meanwhile."""
    if bad_answers:
        reason = "bad_answer_mac"
        detail = f"{bad_answers} answer(s) failed the device's MAC; none verified before the TTL"
    elif cmd.counter is None:
        reason = "device_offline"
        detail = "the TTL ended while earlier commands to the device were pending"
    else:
        reason = "device_offline"
        detail = "the device did not answer before the TTL ended"
    return {
        "ok": False,
        "id": cmd.command_id,
        "device": cmd.device_id,
        "action": cmd.action,
        "error": reason,
        "detail": detail,
    }


def delivered_unanswered(cmd: StoredCommand) -> dict[str, Any]:
    """The outcome of a command written to a device that cannot answer (a BTHome-only BLE
    sensor): delivered, and nothing proves more, so there is no receipt."""
    return {
        "ok": True,
        "id": cmd.command_id,
        "device": cmd.device_id,
        "action": cmd.action,
        "status": "delivered_unanswered",
        "detail": "written to the device, which cannot answer (no answer characteristic): "
        "no receipt; its next advertisement shows the effect",
    }


__all__ = ["answered", "delivered_unanswered", "expired"]
