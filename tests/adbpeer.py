"""An ADB-protocol peer: the device side of the ADB transport, on 127.0.0.1, for the real ``adb`` client.

    peer = ADBPeer(sandbox).start()           # then: adb connect 127.0.0.1:<peer.port>
    ...
    peer.stop()

It answers the host's CNXN (no AUTH, as a device with ``ro.adb.secure=0``), then serves two services:
``shell:CMD`` (runs ``sh -c CMD`` in ``sandbox``, ADB's plain shell protocol: output only) and ``sync:``
(v1: STAT, LIST, SEND/DATA/DONE, RECV, QUIT). Paths are used as given. Fault switches for tests:
``drop_after`` (close the connection once that many bytes of pushed file data arrived), ``quota``
(refuse writes beyond that many bytes in total with "No space left on device"), ``meminfo`` (a file
read instead of /proc/meminfo, to make a small-memory device) and ``env`` (the shell's environment).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
from pathlib import Path

CNXN, OPEN, OKAY, CLSE, WRTE = (struct.unpack("<I", c)[0] for c in (b"CNXN", b"OPEN", b"OKAY", b"CLSE", b"WRTE"))
VERSION, MAXDATA = 0x01000000, 256 * 1024
BANNER = b"device::ro.product.name=edgetl_peer;ro.product.model=EdgeTL ADB peer;ro.product.device=peer;features=\x00"


def _message(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF) + data


class _Conn:
    """One host connection: a reader loop and per-stream handlers with ADB's one-packet flow control."""

    def __init__(self, peer: "ADBPeer", sock: socket.socket):
        self.peer, self.sock = peer, sock
        self.lock = threading.Lock()
        self.streams: dict[int, dict] = {}
        self.next_id = 1
        self.alive = True

    def send(self, cmd, arg0, arg1, data=b""):
        with self.lock:
            self.sock.sendall(_message(cmd, arg0, arg1, data))

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("host closed")
            buf += chunk
        return buf

    def write(self, stream: dict, data: bytes) -> None:
        """WRTE in chunks, each waiting for the host's OKAY."""
        for i in range(0, len(data), MAXDATA):
            stream["ready"].clear()
            self.send(WRTE, stream["local"], stream["remote"], data[i:i + MAXDATA])
            if not stream["ready"].wait(30) or not self.alive:
                raise ConnectionError("no OKAY from host")

    def close_stream(self, stream: dict) -> None:
        if not stream.get("closed"):
            stream["closed"] = True
            try:
                self.send(CLSE, stream["local"], stream["remote"])
            except OSError:
                pass

    def serve(self):
        try:
            while self.alive:
                cmd, arg0, arg1, length, _, _ = struct.unpack("<6I", self.recv_exact(24))
                data = self.recv_exact(length) if length else b""
                if cmd == CNXN:
                    self.send(CNXN, VERSION, MAXDATA, BANNER)
                elif cmd == OPEN:
                    self.open(arg0, data.rstrip(b"\x00").decode())
                elif cmd == OKAY:
                    stream = self.streams.get(arg1)
                    if stream:
                        stream["ready"].set()
                elif cmd == WRTE:
                    stream = self.streams.get(arg1)
                    self.send(OKAY, arg1, arg0)
                    if stream:
                        with stream["cond"]:
                            stream["inbox"] += data
                            stream["cond"].notify_all()
                elif cmd == CLSE:
                    stream = self.streams.pop(arg1, None)
                    if stream:
                        self._wake(stream, closed=True)
        except (ConnectionError, OSError, struct.error):
            pass
        finally:
            self.alive = False
            for stream in list(self.streams.values()):
                self._wake(stream, closed=False)
            try:
                self.sock.close()
            except OSError:
                pass

    @staticmethod
    def _wake(stream: dict, closed: bool) -> None:
        with stream["cond"]:
            stream["closed"] = stream.get("closed") or closed
            stream["cond"].notify_all()
        stream["ready"].set()

    def open(self, remote_id: int, service: str):
        local = self.next_id
        self.next_id += 1
        stream = {"local": local, "remote": remote_id, "ready": threading.Event(), "cond": threading.Condition(),
                  "inbox": bytearray()}
        self.streams[local] = stream
        self.send(OKAY, local, remote_id)
        if service.startswith("shell:"):
            target = self.shell
        elif service.startswith("sync:"):
            target = self.sync
        else:
            self.close_stream(stream)
            return
        threading.Thread(target=target, args=(stream, service.partition(":")[2]), daemon=True).start()

    # -- shell: ------------------------------------------------------------------------------------
    def shell(self, stream, command):
        if self.peer.meminfo:
            command = command.replace("/proc/meminfo", str(self.peer.meminfo))
        proc = subprocess.Popen(["sh", "-c", command], cwd=self.peer.sandbox, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.peer.env)
        try:
            while chunk := proc.stdout.read1(65536):
                self.write(stream, chunk)
            proc.wait()
        except ConnectionError:
            proc.kill()
        finally:
            self.close_stream(stream)

    # -- sync: -------------------------------------------------------------------------------------
    def take(self, stream, n: int) -> bytes:
        with stream["cond"]:
            while len(stream["inbox"]) < n:
                if stream.get("closed") or not self.alive:
                    raise ConnectionError("stream closed")
                stream["cond"].wait(30)
            data = bytes(stream["inbox"][:n])
            del stream["inbox"][:n]
            return data

    def sync(self, stream, _):
        try:
            while True:
                ident, length = struct.unpack("<4sI", self.take(stream, 8))
                if ident == b"QUIT":
                    break
                path = self.take(stream, length).decode()
                if ident == b"STAT":
                    try:
                        st = os.stat(path)
                        self.write(stream, struct.pack("<4s3I", b"STAT", st.st_mode, st.st_size, int(st.st_mtime)))
                    except OSError:
                        self.write(stream, struct.pack("<4s3I", b"STAT", 0, 0, 0))
                elif ident == b"LIST":
                    self.write(stream, struct.pack("<4s4I", b"DONE", 0, 0, 0, 0))
                elif ident == b"SEND":
                    self.receive_file(stream, path.rsplit(",", 1)[0])
                elif ident == b"RECV":
                    self.send_file(stream, path)
                else:
                    break
        except ConnectionError:
            pass
        finally:
            self.close_stream(stream)

    def receive_file(self, stream, path):
        failure = None
        with open(path, "wb") as f:
            while True:
                ident, length = struct.unpack("<4sI", self.take(stream, 8))
                if ident == b"DONE":
                    break
                data = self.take(stream, length)
                self.peer.received += len(data)
                if self.peer.drop_after is not None and self.peer.received >= self.peer.drop_after:
                    self.peer.drop_after = None  # once
                    self.alive = False
                    self.sock.shutdown(socket.SHUT_RDWR)
                    raise ConnectionError("dropped on purpose")
                if self.peer.quota is not None and self.peer.used + len(data) > self.peer.quota:
                    failure = "No space left on device"
                if failure is None:
                    f.write(data)
                    self.peer.used += len(data)
        if failure:
            Path(path).unlink(missing_ok=True)
            msg = failure.encode()
            self.write(stream, struct.pack("<4sI", b"FAIL", len(msg)) + msg)
        else:
            self.write(stream, struct.pack("<4sI", b"OKAY", 0))

    def send_file(self, stream, path):
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            msg = str(exc).encode()
            self.write(stream, struct.pack("<4sI", b"FAIL", len(msg)) + msg)
            return
        for i in range(0, len(data), 64 * 1024):
            chunk = data[i:i + 64 * 1024]
            self.write(stream, struct.pack("<4sI", b"DATA", len(chunk)) + chunk)
        self.write(stream, struct.pack("<4sI", b"DONE", 0))


class ADBPeer:
    def __init__(self, sandbox: Path, drop_after: int | None = None, quota: int | None = None,
                 meminfo: Path | None = None, env: dict | None = None):
        self.sandbox, self.drop_after, self.quota, self.meminfo = Path(sandbox), drop_after, quota, meminfo
        self.env = env  # the device's environment for shell commands (e.g. a PATH without runtimes)
        self.received = self.used = 0
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conns: list[_Conn] = []
        self.running = False

    def start(self) -> "ADBPeer":
        self.server.listen(8)
        self.server.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def _accept(self):
        while self.running:
            try:
                sock, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            sock.settimeout(None)
            conn = _Conn(self, sock)
            self.conns.append(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def stop(self):
        self.running = False
        for conn in self.conns:
            conn.alive = False
            try:
                conn.sock.close()
            except OSError:
                pass
        self.server.close()
        self.thread.join(timeout=5)
