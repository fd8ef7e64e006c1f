// Verify an Edgence observation envelope in plain Node.js (>= 20) with one small dependency:
// @noble/curves (secp256k1; it brings @noble/hashes for keccak-256).
//
//   npm install @noble/curves
//   node verify-observation.mjs envelope.json [0xEXPECTED_GATEWAY ...]   (or - for stdin)
//
// Envelope v2 (Observation type v2, domain version "2"). The digest is recomputed from the
// signed fields ("domain" and "message"); the envelope's own "digest" field is only compared,
// never trusted. What is printed comes from the signed message only (the "reading" block is for
// people; its "auth" is not signed beyond the assurance level). Exit code 0 = valid, 1 = invalid.
import { readFileSync } from "node:fs";
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { keccak_256 } from "@noble/hashes/sha3.js";

const N = secp256k1.Point.CURVE().n;
const enc = new TextEncoder();
const hex = (b) => "0x" + Buffer.from(b).toString("hex");
const bytes = (h) => Uint8Array.from(Buffer.from(h.replace(/^0x/, ""), "hex"));
const keccak = (...parts) => keccak_256(Buffer.concat(parts.map((p) => Buffer.from(p))));

// One 32-byte ABI word of an integer (two's complement for negatives, as int256/int8 encode).
function word(n) {
  const v = BigInt.asUintN(256, BigInt(n));
  return bytes(v.toString(16).padStart(64, "0"));
}
function bytes32(h) {
  const b = bytes(h);
  if (b.length !== 32) throw new Error(`${h} is not bytes32`);
  return b;
}

const DOMAIN_TYPE = keccak(enc.encode(
  "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"));
const OBSERVATION_TYPE = keccak(enc.encode(
  "Observation(bytes32 feed,bytes32 deviceId,bytes32 sensor,int256 value,int8 exponent," +
  "bytes32 unit,uint64 timestamp,uint64 deviceCounter,uint64 gatewaySequence," +
  "uint8 transport,uint8 assurance)"));
const TRANSPORTS = ["sim", "mqtt", "coap", "ble", "serial", "modbus"];
const ASSURANCE = ["unauthenticated", "transport-authenticated", "device-authenticated"];

export function observationDigest(domain, m) {
  const separator = keccak(
    DOMAIN_TYPE,
    keccak(enc.encode(domain.name)),
    keccak(enc.encode(domain.version)),
    word(domain.chainId),
    word(BigInt(domain.verifyingContract)),
  );
  const structHash = keccak(
    OBSERVATION_TYPE,
    bytes32(m.feed),
    bytes32(m.deviceId),
    bytes32(m.sensor),
    word(m.value), // a decimal string: int256 does not fit a JSON number
    word(m.exponent),
    bytes32(m.unit),
    word(m.timestamp),
    word(m.deviceCounter),
    word(m.gatewaySequence),
    word(m.transport),
    word(m.assurance),
  );
  return keccak(Uint8Array.of(0x19, 0x01), separator, structHash);
}

export function recoverSigner(digest, signatureHex) {
  const sig = bytes(signatureHex);
  if (sig.length !== 65) throw new Error("signature must be 65 bytes (r || s || v)");
  const v = sig[64];
  if (v !== 27 && v !== 28) throw new Error(`v must be 27 or 28, not ${v}`);
  const s = BigInt(hex(sig.slice(32, 64)));
  if (s > N / 2n) throw new Error("high-S signature (not canonical): refused");
  const pub = secp256k1.Signature.fromBytes(sig.slice(0, 64), "compact")
    .addRecoveryBit(v - 27)
    .recoverPublicKey(digest)
    .toBytes(false); // 0x04 || x || y
  return hex(keccak(pub.slice(1)).slice(12));
}

export function verifyEnvelope(env) {
  if (env.v !== 2) throw new Error(`unsupported envelope version ${env.v} (expected 2)`);
  const digest = observationDigest(env.domain, env.message);
  if (env.digest && env.digest.toLowerCase() !== hex(digest)) {
    throw new Error(`digest mismatch: the signed fields hash to ${hex(digest)}`);
  }
  const signer = recoverSigner(digest, env.signature);
  if (signer !== env.gateway.toLowerCase()) {
    throw new Error(`signature recovers to ${signer}, not to gateway ${env.gateway}`);
  }
  return { signer, digest: hex(digest), sequence: env.message.gatewaySequence };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [file = "-", ...expected] = process.argv.slice(2);
  const text = readFileSync(file === "-" ? 0 : file, "utf8");
  let env = JSON.parse(text);
  if (env.observation) env = env.observation; // an oracle query answer holds the envelope
  try {
    const { signer, digest, sequence } = verifyEnvelope(env);
    const allowed = expected.map((a) => a.toLowerCase());
    if (allowed.length && !allowed.includes(signer)) {
      throw new Error(`signer ${signer} is not one of the expected gateways`);
    }
    const m = env.message;
    const label = (h) => Buffer.from(bytes(h)).toString("latin1").replace(/\0+$/, "");
    console.log(`ok signer=${signer} seq=${sequence} digest=${digest} feed=${m.feed} ` +
      `device=${label(m.deviceId)} sensor=${label(m.sensor)} value=${m.value}e${m.exponent} ` +
      `unit=${label(m.unit)} transport=${TRANSPORTS[m.transport] ?? m.transport} ` +
      `assurance=${m.assurance} (${ASSURANCE[m.assurance] ?? "?"}) ` +
      `unsigned=${(env.unsigned ?? []).join(",")}`);
  } catch (e) {
    console.log(`INVALID: ${e.message}`);
    process.exit(1);
  }
}
