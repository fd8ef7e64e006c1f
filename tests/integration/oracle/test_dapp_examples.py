"""The verification examples of docs/dapp-developers.md, run as a dApp developer would: the
JavaScript one under node (with @noble/curves from the project's node_modules), the Python one
with eth-account (imported and called in this process: a subprocess per case would spend
seconds importing eth-account each time). Each accepts a real envelope, agrees on its digest,
and refuses tampered, high-S and foreign ones."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from agent.attest.keys import SECP256K1_N, GatewayKey
from agent.attest.observation import ObservationSigner
from agent.model import AuthMethod, Eip712Domain, Observation, Reading, Transport

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "docs" / "examples"
NODE = ["node", str(EXAMPLES / "verify-observation.mjs")]


def _python_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "verify_observation", EXAMPLES / "verify_observation.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PY = _python_example()


def signed() -> Observation:
    key = GatewayKey.generate()
    r = Reading(
        "dev-7", "temp", -2137, -2, "Cel", 1_767_225_600, 5, Transport.MQTT, AuthMethod.HMAC
    )
    domain = Eip712Domain("Edgence", "2", 31337, "0x" + "ab" * 20)
    return ObservationSigner(key, domain).sign(r, 2**40 + 3)


def run(lang: str, envelope: dict[str, object], *expected: str) -> tuple[int, str]:
    if lang == "javascript":
        proc = subprocess.run(
            [*NODE, "-", *expected],
            input=json.dumps(envelope),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        return proc.returncode, proc.stdout + proc.stderr
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "envelope.json"
        path.write_text(json.dumps(envelope))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = PY.main(["verify_observation.py", str(path), *expected])
        return int(code), out.getvalue()


@pytest.mark.parametrize("lang", ["javascript", "python"])
def test_example_verifies_and_refuses(lang: str) -> None:
    o = signed()
    env = json.loads(o.envelope)
    code, out = run(lang, env)
    assert code == 0, out
    assert f"signer={o.gateway}" in out and f"digest=0x{o.digest.hex()}" in out
    assert f"feed={env['message']['feed']}" in out and "device=dev-7 sensor=temp" in out
    assert "value=-2137e-2 unit=Cel transport=mqtt" in out
    assert "assurance=2 (device-authenticated) unsigned=reading.auth" in out
    # An oracle query answer is accepted as well (the envelope is its "observation").
    assert run(lang, {"v": 1, "ok": True, "observation": env}, o.gateway)[0] == 0

    for field, forged in (("value", "-2136"), ("assurance", 0), ("transport", 3)):
        tampered = {**env, "message": {**env["message"], field: forged}}
        tampered.pop("digest")
        code, out = run(lang, tampered)
        assert code == 1 and "recovers to" in out, (field, out)
    code, out = run(lang, {**env, "v": 1})
    assert code == 1 and "unsupported envelope version 1" in out, out

    sig = bytes.fromhex(env["signature"][2:])
    s = int.from_bytes(sig[32:64], "big")
    high = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    code, out = run(lang, {**env, "signature": "0x" + high.hex()})
    assert code == 1 and "high-S" in out, out

    code, out = run(lang, env, "0x" + "11" * 20)
    assert code == 1 and "not one of the expected gateways" in out, out
