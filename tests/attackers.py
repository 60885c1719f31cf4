"""What a hostile local user runs against the booster, as that user: shared by
``tests/test_attacks.py`` (which checks the booster withstands it) and
``bench/floods.py`` (which measures what it costs everyone else).

The attacker's programs use nothing of this project: a stdlib Python script
for the connection flood, a shell script for the output flood.
"""

from __future__ import annotations

import os
import subprocess

import pamkit
from harness import install_autostart

SYSTEM_PYTHON = "/usr/bin/python3"

# Holds up to WANT connections to the socket for SECONDS (or until SIGTERM),
# opening a new one for each the booster closes; prints what happened as JSON.
CONNECTION_FLOOD = r"""
import json, select, signal, socket, sys, time  # the attacker's own code: nothing of ours
path, seconds, want = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped early: still say what happened
end = time.monotonic() + seconds
held = {}
stats = {"connects": 0, "connect_errors": 0, "refused_frames": 0, "dropped": 0, "max_held": 0,
         "longest_dropped_s": 0.0}
poller = select.poll()


def top_up():
    while len(held) < want:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except OSError:
            stats["connect_errors"] += 1
            s.close()
            return
        held[s.fileno()] = (s, time.monotonic())
        poller.register(s.fileno(), select.POLLIN)
        stats["connects"] += 1


def reap_closed():
    for fd, _ in poller.poll(20):
        s, opened = held.pop(fd)
        poller.unregister(fd)
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if data[:2] == b"DB" and len(data) >= 10 and data[3] == 5 and data[8:10] == b"\x00\x0b":
            stats["refused_frames"] += 1  # ERROR LIMIT_REACHED: refused at once
        else:
            stats["dropped"] += 1
            stats["longest_dropped_s"] = max(stats["longest_dropped_s"], time.monotonic() - opened)
        s.close()


try:
    while time.monotonic() < end:
        top_up()
        stats["max_held"] = max(stats["max_held"], len(held))
        reap_closed()
finally:
    print(json.dumps(stats), flush=True)
"""


def connection_flood(user, socket_path: str, seconds: float, want: int = 600) -> subprocess.Popen:
    """Start the connection flood as ``user``; its stdout is the JSON summary."""
    return subprocess.Popen([pamkit.RUNUSER, "-u", user.name, "--", SYSTEM_PYTHON, "-I", "-c", CONNECTION_FLOOD,
                             socket_path, str(seconds), str(want)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")


def output_flood_script(seconds: float) -> str:
    """A second after it starts, two writers print as fast as they can for
    ``seconds``: control characters of every kind, NUL and C1 included."""
    return f"""sleep 1
timeout {seconds:g} sh -c 'yes "$(printf "\\033[2J\\rflood\\a\\001\\177\\302\\233")" &
while :; do printf "nul\\000 tab\\t esc\\033]0;title\\007 cr\\r end\\n"; done'
exec sleep 100000
"""


def install_output_flood(user, backend: str, seconds: float) -> None:
    """Give ``user`` an autostart service that floods its output for ``seconds``."""
    script = os.path.join(user.home, "flood.sh")
    with open(script, "w") as fh:
        fh.write(output_flood_script(seconds))
    os.chown(script, user.uid, user.gid)
    if backend == "dinit":  # shares-console: the service writes to dinit's stdout, the booster's pipe
        install_autostart(user, backend, "flood", f"/bin/sh {script}", "options = shares-console\n")
    else:
        install_autostart(user, backend, "flood", f"/bin/sh {script}")


# Serves the booster's protocol at PATH as whoever runs it (a user who got a
# PAM line to name a socket of theirs: a stale or mistyped ``socket=``).  Each
# connection gets a HELLO that claims the client is visible and then, by MODE:
# "ready": READY with an environment meant to take over the root PAM stack
# after it (LD_PRELOAD, BASH_ENV, PATH, a runtime directory of the user's, a
# value whose newline carries a second assignment); "silent": nothing more,
# until the client hangs up.  Prints "listening", then one line per
# connection: "client sent N bytes" (what arrived before it hung up).
IMPOSTOR_SERVER = r"""
import os, socket, struct, sys  # the attacker's own code: nothing of ours
path, mode, home = sys.argv[1], sys.argv[2], sys.argv[3]


def frame(kind, payload):
    return b"DB" + bytes([2, kind]) + struct.pack(">I", len(payload)) + payload


def text(s):
    raw = s.encode()
    return struct.pack(">H", len(raw)) + raw


hello = frame(1, struct.pack(">IQI", os.getpid(), 0, 1) + text("booster/0.1"))
env = [("LD_PRELOAD", home + "/evil.so"), ("BASH_ENV", home + "/evil.sh"), ("PATH", home + "/bin"),
       ("XDG_RUNTIME_DIR", home), ("DBUS_SESSION_BUS_ADDRESS", "unix:path=" + home + "/bus\nLD_AUDIT=" + home),
       ("GREETING", "hi\nLD_LIBRARY_PATH=" + home)]
ready = frame(4, struct.pack(">QH", 1, len(env)) + b"".join(text(k) + text(v) for k, v in env))
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, 0o777)
server.listen(16)
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    conn.settimeout(300)
    got = 0
    try:
        conn.sendall(hello + (ready if mode == "ready" else b""))
        while chunk := conn.recv(65536):
            got += len(chunk)
    except OSError:
        pass
    conn.close()
    print(f"client sent {got} bytes", flush=True)
"""


def impostor_server(user, path: str, mode: str) -> subprocess.Popen:
    """Start the impostor as ``user``, serving at ``path`` (in a directory the
    user may write to); returns once it listens.  Its stdout says what each
    client sent."""
    proc = subprocess.Popen([pamkit.RUNUSER, "-u", user.name, "--", SYSTEM_PYTHON, "-I", "-c", IMPOSTOR_SERVER,
                             path, mode, user.home], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd="/")
    line = proc.stdout.readline()
    if line.strip() != "listening":
        pamkit.terminate(proc)
        raise RuntimeError(f"the impostor did not start: {line!r} {proc.stderr.read()}")
    return proc
