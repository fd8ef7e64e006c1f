"""The switch to an update and its rollback (docs/ota.md), run by boot.py before anything of the
edgence package is imported: an update may replace the package, never this file or boot.py.

ota/boot holds the last update's state: "pending" (staged and verified: switch at this boot),
"trial" (the new files run; boots counted), "ok" (confirmed by its first delivered reading),
"rolled_back" (it did not confirm within `max` boots: the previous files are back). Every step
is a rename and can be repeated, so a power cut during a switch or a rollback is finished at
the next boot.
"""

import json
import os

DIR = "ota"
STATE = DIR + "/boot"
NEW = DIR + "/new/"
OLD = DIR + "/old/"
MAX_BOOTS = 3

_state = None  # what boot() found or left


def log(event, **kv):
    print("edgence event=" + event + "".join(" %s=%s" % (k, kv[k]) for k in sorted(kv)))


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def mkdirs(path):
    """The directories above file `path`."""
    d = ""
    for part in path.split("/")[:-1]:
        d = part if not d else d + "/" + part
        try:
            os.mkdir(d)
        except OSError:
            pass


def move(src, dst):
    mkdirs(dst)
    remove(dst)  # FAT refuses to rename onto an existing file
    os.rename(src, dst)


def read():
    for p in (STATE, STATE + ".tmp"):  # .tmp: a cut between remove and rename on FAT
        try:
            with open(p) as f:
                st = json.load(f)
            if isinstance(st, dict):
                return st
        except (OSError, ValueError):
            pass
    return None


def write(st):
    mkdirs(STATE)
    with open(STATE + ".tmp", "w") as f:
        f.write(json.dumps(st))
    move(STATE + ".tmp", STATE)


def state():
    return _state


def _switch(st):
    for p in st["files"]:
        if exists(NEW + p):
            if exists(p) and not exists(OLD + p):
                move(p, OLD + p)
            move(NEW + p, p)


def _rollback(st):
    for p in st["files"]:
        if exists(OLD + p):
            move(OLD + p, p)
        elif p in st["added"]:
            remove(p)


def boot():
    """At every reset, before the firmware is imported: switch, count, or roll back."""
    global _state
    st = read()
    _state = st
    if st is None:
        return None
    s = st.get("st")
    if s == "pending":
        _switch(st)
        st["st"], st["boots"] = "trial", 1
        write(st)
        log("ota_switched", version=st["v"], boot=1, max=st["max"])
    elif s == "trial":
        st["boots"] += 1
        if st["boots"] > st["max"]:
            _rollback(st)  # repeatable: a cut here rolls back again at the next boot
            st["st"] = "rolled_back"
            write(st)
            log("ota_rolled_back", version=st["v"], to=st["from"], boots=st["max"])
        else:
            write(st)
            log("ota_trial", version=st["v"], boot=st["boots"], max=st["max"])
    return st


def in_trial():
    return _state is not None and _state.get("st") == "trial"


def confirm():
    """The new firmware delivered a reading: keep it, drop the previous files."""
    st = _state
    if st is None or st.get("st") != "trial":
        return
    st["st"] = "ok"
    write(st)
    for p in st["files"]:
        remove(OLD + p)
    log("ota_confirmed", version=st["v"], boots=st["boots"])


def failed(machine, why):
    """The new firmware could not start: reset now (the boot counts) rather than wait for a
    watchdog that may never have been armed."""
    if in_trial():
        log("ota_boot_failed", version=_state["v"], error=why)
        machine.reset()
