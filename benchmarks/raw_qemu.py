#!/usr/bin/env python3
"""Raw QEMU save, restore and live migration over QMP, with no manager in between: the
baselines `keel save` / `keel restore` (benchmarks/save-restore.sh) and `keel migrate`
(benchmarks/migrate.sh) are measured against.

    raw_qemu.py start   --argv FILE --qmp SOCK --pidfile PID [--cont]
    raw_qemu.py save    --qmp SOCK --pidfile PID --file IMG --offset N
    raw_qemu.py restore --argv FILE --qmp SOCK --pidfile PID --file IMG --offset N [--cont]
    raw_qemu.py migrate --qmp SOCK --pidfile PID --argv FILE --to-qmp SOCK2 --to-pidfile PID2
                        [--downtime-limit MS]
    raw_qemu.py quit    --qmp SOCK --pidfile PID

--argv FILE: QEMU's command line, NUL-separated (as /proc/PID/cmdline), binary first, without
-daemonize/-pidfile (added here); its -qmp must name SOCK.

save:    stop; getfd of IMG opened at OFFSET; max-bandwidth very high; migrate fd:; poll
         query-migrate until completed; fsync IMG; quit and wait until QEMU is gone.
restore: start QEMU (its argv has -incoming defer); getfd of IMG opened at OFFSET;
         migrate-incoming fd:; poll until completed; cont with --cont.
migrate: the running QEMU at SOCK moves to a new one started from --argv (its argv has
         -incoming defer and its -qmp names SOCK2): migrate-incoming tcp:127.0.0.1:0 there
         (QEMU picks the port, read back from query-migrate); on the source max-bandwidth very
         high (and downtime-limit when given), migrate tcp:127.0.0.1:PORT, poll query-migrate on
         the source until completed; poll the destination until its stream is loaded; cont
         there; then quit the source and wait until it is gone. The JSON line on stdout holds
         the phases and QEMU's own total-time, downtime and setup-time.

Prints one line of phase timings (ms) on stderr. Standard library only.
"""
import argparse
import array
import json
import os
import socket
import subprocess
import sys
import time

POLL_INTERVAL = 0.005  # seconds between query-migrate polls


class QMP:
    def __init__(self, path, deadline=30.0):
        limit = time.monotonic() + deadline
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > limit:
                    raise
                time.sleep(0.005)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, arguments=None, fds=None):
        self.next_id += 1
        message = {"execute": command, "id": self.next_id}
        if arguments is not None:
            message["arguments"] = arguments
        data = json.dumps(message).encode() + b"\n"
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.sendall(data)
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != self.next_id:
                continue
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error']}")
            return reply.get("return")

    def wait_for_migration(self):
        while True:
            info = self.execute("query-migrate")
            status = info.get("status", "none")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"migration {status}: {info.get('error-desc', '')}")
            time.sleep(POLL_INTERVAL)

    def close(self):
        self.sock.close()


def read_argv(path):
    with open(path, "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def spawn(argv, pidfile):
    for stale in (pidfile,):
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
    subprocess.run(argv + ["-daemonize", "-pidfile", pidfile], check=True, stdin=subprocess.DEVNULL)


def wait_gone(pidfile, deadline=10.0):
    try:
        pid = int(open(pidfile).read().strip())
    except (OSError, ValueError):
        return
    limit = time.monotonic() + deadline
    while time.monotonic() < limit:
        try:
            # Daemonized QEMU is reaped by init, which may be slow: a zombie counts as gone.
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except (FileNotFoundError, IndexError):
            return
        time.sleep(0.002)
    os.kill(pid, 9)


def unlink_socket(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "save", "restore", "migrate", "quit"])
    parser.add_argument("--argv")
    parser.add_argument("--qmp", required=True)
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--file")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--cont", action="store_true")
    parser.add_argument("--to-qmp")
    parser.add_argument("--to-pidfile")
    parser.add_argument("--downtime-limit", type=int)
    args = parser.parse_args()
    t0 = time.monotonic()
    phases = []

    def mark(name):
        phases.append((name, time.monotonic()))

    if args.action in ("start", "restore"):
        unlink_socket(args.qmp)
        spawn(read_argv(args.argv), args.pidfile)
        mark("spawn")
        qmp = QMP(args.qmp)
        mark("connect")
        if args.action == "restore":
            fd = os.open(args.file, os.O_RDONLY | os.O_CLOEXEC)
            os.lseek(fd, args.offset, os.SEEK_SET)
            qmp.execute("getfd", {"fdname": "raw-restore"}, fds=[fd])
            os.close(fd)
            qmp.execute("migrate-incoming", {"uri": "fd:raw-restore"})
            qmp.wait_for_migration()
            mark("incoming")
        if args.cont:
            qmp.execute("cont")
            mark("cont")
        qmp.close()
    elif args.action == "save":
        qmp = QMP(args.qmp)
        mark("connect")
        qmp.execute("stop")
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.lseek(fd, args.offset, os.SEEK_SET)
        qmp.execute("getfd", {"fdname": "raw-save"}, fds=[fd])
        qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        qmp.execute("migrate", {"uri": "fd:raw-save"})
        qmp.wait_for_migration()
        mark("migrate")
        os.fsync(fd)
        os.close(fd)
        mark("fsync")
        qmp.execute("quit")
        qmp.close()
        wait_gone(args.pidfile)
        mark("quit")
    elif args.action == "migrate":
        source = QMP(args.qmp)
        mark("connect")
        unlink_socket(args.to_qmp)
        spawn_started = time.monotonic()
        spawn(read_argv(args.argv), args.to_pidfile)
        destination = QMP(args.to_qmp)
        mark("spawn")
        destination.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = None
        for address in destination.execute("query-migrate").get("socket-address", []):
            port = address.get("port")
        if port is None:
            raise RuntimeError("the destination did not say which port it listens on")
        mark("listen")
        migrate_started = time.monotonic()
        parameters = {"max-bandwidth": 1 << 40}
        if args.downtime_limit is not None:
            parameters["downtime-limit"] = args.downtime_limit
        source.execute("migrate-set-parameters", parameters)
        source.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        info = source.wait_for_migration()
        mark("stream")
        destination.wait_for_migration()
        destination.execute("cont")
        mark("cont")
        running = time.monotonic()
        running_wall = time.time()

        def event_time(qmp, name):
            for event in qmp.events:
                if event.get("event") == name:
                    stamp = event.get("timestamp", {})
                    return stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
            return None
        stopped_wall = event_time(source, "STOP")
        resumed_wall = event_time(destination, "RESUME")
        destination.close()
        source.execute("quit")
        source.close()
        wait_gone(args.pidfile)
        mark("quit")
        print(json.dumps({
            "migrate_to_running_ms": round((running - migrate_started) * 1000, 1),
            "spawn_to_running_ms": round((running - spawn_started) * 1000, 1),
            "total_ms": round((time.monotonic() - t0) * 1000, 1),
            "total_time": info.get("total-time"), "downtime": info.get("downtime"),
            "setup_time": info.get("setup-time"), "transferred": info.get("ram", {}).get("transferred"),
            # The guest's pause as QMP's events date it: the source's STOP to the destination's
            # RESUME, and to `cont` returning here.
            "stop_to_resume_ms": round((resumed_wall - stopped_wall) * 1000, 1) if stopped_wall and resumed_wall else None,
            "stop_to_cont_ms": round((running_wall - stopped_wall) * 1000, 1) if stopped_wall else None,
        }))
    elif args.action == "quit":
        try:
            qmp = QMP(args.qmp, deadline=2.0)
            qmp.execute("quit")
            qmp.close()
        except (OSError, ConnectionError, RuntimeError):
            pass
        wait_gone(args.pidfile)

    previous = t0
    timings = []
    for name, at in phases:
        timings.append(f"{name}={(at - previous) * 1000:.0f}")
        previous = at
    print(f"raw {args.action}: " + " ".join(timings) + f" total={(previous - t0) * 1000:.0f}ms", file=sys.stderr)


if __name__ == "__main__":
    main()
