// Drives a firmware scenario under the MicroPython WebAssembly port one call at a time, on a
// heap of a fixed starting size.
// usage: node run_steps.mjs HEAP_BYTES LIB_DIR SCRIPT.py STEPS [HOST_FILE:GUEST_PATH ...]
// SCRIPT.py is run once (boot: imports, config, the Node), then `step(i)` is called for i in
// 0..STEPS-1, each in a runPython call of its own, then `report()`, which prints one JSON line
// (with STEPS 0, the script's own output is what is printed).
// The port collects garbage only between runPython calls, so each call is one firmware cycle
// with a collection after it, as on a board where the loop calls gc.collect() at the end of
// each cycle. The heap starts at HEAP_BYTES; the
// port would add heap areas when a call needs more, and the scenario reports whether it did
// (gc.mem_free() + gc.mem_alloc() grows): a call that had to grow the heap is one that would
// have raised MemoryError on a board with that heap.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

function copyTree(mp, hostDir, guestDir) {
  mp.FS.mkdirTree(guestDir);
  for (const name of readdirSync(hostDir)) {
    const host = join(hostDir, name);
    if (statSync(host).isDirectory()) {
      if (name !== "__pycache__") copyTree(mp, host, `${guestDir}/${name}`);
    } else if (name.endsWith(".py") || name.endsWith(".mpy")) {
      mp.FS.writeFile(`${guestDir}/${name}`, readFileSync(host));
    }
  }
}

const [heap, lib, script, steps, ...files] = process.argv.slice(2);
let out = "";
const mp = await loadMicroPython({
  heapsize: parseInt(heap, 10),
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
  const n = parseInt(steps, 10);
  for (let i = 0; i < n; i++) {
    mp.runPython(`step(${i})`);
    if (out.length > 1 << 20) out = out.slice(-4096); // the loop's log lines: keep the tail
  }
  if (n > 0) {
    out = "";
    mp.runPython("report()");
  }
} catch (err) {
  process.stderr.write(`MicroPython raised: ${err.message ?? err}\n`);
  status = 1;
}
process.stdout.write(out);
process.exit(status);
