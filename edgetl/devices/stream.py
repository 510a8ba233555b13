"""Run a child process with its stdout streamed line by line, its stderr kept, and a hard timeout.

    result = run_streaming(subprocess.Popen(...), timeout=600, on_line=print, what="ssh://pi@pi")
"""

from __future__ import annotations

import subprocess
import threading
import time

from .base import DeviceTimeout, RunResult


def run_streaming(proc: subprocess.Popen, timeout: float, on_line, what: str) -> RunResult:
    out_lines: list[str] = []
    err_chunks: list[str] = []

    def read_err():
        err_chunks.append(proc.stderr.read())

    err_thread = threading.Thread(target=read_err, daemon=True)
    err_thread.start()
    deadline = time.monotonic() + timeout
    timer = threading.Timer(timeout, proc.kill)  # the read loop below blocks, so the timer ends it
    timer.start()
    try:
        for line in proc.stdout:
            out_lines.append(line)
            if on_line:
                on_line(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
    err_thread.join(timeout=5)
    if time.monotonic() >= deadline and proc.returncode != 0:
        raise DeviceTimeout(f"a command on {what} ran past its {timeout:.0f}s timeout and was stopped; "
                            f"raise --timeout, or run fewer --steps")
    return RunResult(proc.returncode, "".join(out_lines), "".join(err_chunks))
