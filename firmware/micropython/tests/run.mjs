// Runs a Python script under the MicroPython WebAssembly port (real MicroPython, compiled to
// wasm), with the firmware's lib/ copied into its filesystem at /lib.
// usage: node run.mjs SCRIPT.py [HOST_FILE:GUEST_PATH ...]
// The script's stdout is printed; an uncaught Python exception exits with status 1.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const here = dirname(fileURLToPath(import.meta.url));
const lib = join(here, "..", "lib");

function copyTree(mp, hostDir, guestDir) {
  mp.FS.mkdirTree(guestDir);
  for (const name of readdirSync(hostDir)) {
    const host = join(hostDir, name);
    if (statSync(host).isDirectory()) {
      if (name !== "__pycache__") copyTree(mp, host, `${guestDir}/${name}`);
    } else if (name.endsWith(".py")) {
      mp.FS.writeFile(`${guestDir}/${name}`, readFileSync(host));
    }
  }
}

const [script, ...files] = process.argv.slice(2);
let out = "";
const mp = await loadMicroPython({
  stdout: (line) => { out += line + "\n"; },
  stderr: (line) => { process.stderr.write(line + "\n"); },
});
copyTree(mp, lib, "/lib");
mp.FS.mkdirTree("/flash");
for (const spec of files) {
  const i = spec.lastIndexOf(":");
  mp.FS.writeFile(spec.slice(i + 1), readFileSync(spec.slice(0, i)));
}
let status = 0;
try {
  mp.runPython(readFileSync(script, "utf8"));
} catch (err) {
  process.stderr.write(`MicroPython raised: ${err.message ?? err}\n`);
  status = 1;
}
process.stdout.write(out);
process.exit(status);
