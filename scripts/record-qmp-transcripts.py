#!/usr/bin/env python3
"""Record QMP transcripts from real QEMU for KeelQMP's replay tests.

Starts qemu-system-x86_64 once per accelerator (TCG always, KVM when /dev/kvm can be
opened), performs one scripted QMP session and writes every message, in order, as JSON
lines to Tests/KeelQMPTests/Transcripts/<accel>-session.jsonl:

    {"direction": "note", ...}                      how the transcript was made
    {"direction": "from-qemu", "message": {...}}    greeting, replies, events
    {"direction": "to-qemu", "message": {...}}      commands, ids counting up from 0

Ids follow KeelQMP's scheme (qmp_capabilities is 0, commands count up from 1), so a
client issuing the same commands in the same order sends exactly the recorded requests.

Usage: scripts/record-qmp-transcripts.py [--qemu PATH] [--out DIR] [--accel tcg|kvm ...]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "Tests", "KeelQMPTests", "Transcripts")
SOCKET_PLACEHOLDER = "QMP_SOCKET"


class Session:
    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.records = []
        self.next_id = 0

    def read_message(self):
        """The next message from QEMU, or None at end of stream."""
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line.decode("utf-8"))
        self.records.append({"direction": "from-qemu", "message": message})
        return message

    def execute(self, command, arguments=None):
        """Send a command; record everything up to and including its reply."""
        request = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        request["id"] = self.next_id
        self.next_id += 1
        self.records.append({"direction": "to-qemu", "message": request})
        self.sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\r\n")
        while True:
            message = self.read_message()
            if message is None:
                raise RuntimeError(f"qemu closed the socket before replying to {command}")
            if message.get("id") == request["id"] and ("return" in message or "error" in message):
                return message

    def drain(self):
        """Record everything QEMU sends until it closes the socket."""
        while self.read_message() is not None:
            pass


def kvm_usable():
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def qemu_version(qemu):
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0] if out else ""


def record(qemu, accel, out_dir, timeout):
    tmp = tempfile.mkdtemp(prefix="keel-qmp-record-")
    path = os.path.join(tmp, "qmp.sock")
    cpu = "qemu64"
    argv = [
        qemu, "-nodefaults", "-display", "none", "-S",
        "-machine", f"pc,accel={accel}", "-cpu", cpu, "-m", "32",
        "-qmp", f"unix:{path},server=on,wait=off",
    ]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        session = Session(path, timeout)
        greeting = session.read_message()
        if greeting is None or "QMP" not in greeting:
            raise RuntimeError(f"no greeting: {greeting}")
        session.execute("qmp_capabilities")
        session.execute("query-version")
        session.execute("query-status")
        cpus = session.execute("query-cpus-fast")
        qom_path = cpus["return"][0]["qom-path"]
        session.execute("qom-list", {"path": qom_path})
        for prop in ("feature-words", "filtered-features", "unavailable-features"):
            session.execute("qom-get", {"path": qom_path, "property": prop})
        session.execute("query-cpu-definitions")
        for expansion in ("static", "full"):
            session.execute("query-cpu-model-expansion", {"type": expansion, "model": {"name": "max"}})
        session.execute("keel-no-such-command")
        session.execute("qom-get", {"path": "/machine/keel-no-such-object", "property": "type"})
        session.execute("cont")
        session.execute("stop")
        session.execute("query-status")
        session.execute("cont")
        session.execute("quit")
        session.drain()
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        shutil.rmtree(tmp, ignore_errors=True)

    note = {
        "direction": "note",
        "qemu": qemu_version(qemu),
        "argv": [arg.replace(path, SOCKET_PLACEHOLDER) for arg in [os.path.basename(qemu)] + argv[1:]],
        "stderr": stderr.strip().splitlines(),
        "script": "scripts/record-qmp-transcripts.py",
    }
    target = os.path.join(out_dir, f"{accel}-session.jsonl")
    with open(target, "w") as handle:
        for record_ in [note] + session.records:
            handle.write(json.dumps(record_, separators=(",", ":")) + "\n")
    print(f"wrote {target}: {len(session.records)} messages")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--accel", action="append", choices=["tcg", "kvm"])
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if not args.qemu:
        sys.exit("qemu-system-x86_64 not found")
    accels = args.accel or (["tcg", "kvm"] if kvm_usable() else ["tcg"])
    os.makedirs(args.out, exist_ok=True)
    for accel in accels:
        if accel == "kvm" and not kvm_usable():
            print("skipping kvm: /dev/kvm cannot be opened", file=sys.stderr)
            continue
        record(args.qemu, accel, args.out, args.timeout)


if __name__ == "__main__":
    main()
