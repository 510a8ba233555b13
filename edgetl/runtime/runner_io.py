"""What every runner file needs and that needs nothing of them: the one-line error, atomic writes, and the
process's own memory (peak RSS, a heap that gives large blocks back, file pages released). Copied beside the
runners onto devices; it imports only the standard library.

    from runner_io import RunnerError, atomic_json      # beside the runner; edgetl.runtime.runner_io here
    atomic_json({"steps": 10}, "out/metrics.json")      # a temporary name, renamed into place
"""

from __future__ import annotations

import errno
import json
import os
import tempfile

#: errors of a full disk (EFBIG: a file-size limit, which reads the same to a person)
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class RunnerError(Exception):
    """A problem the runner explains in one line (bad data, wrong batch, missing runtime); the command line
    prints it and exits with status 2, a caller in Python catches it."""



def proc_bytes(path: str, field: str) -> int | None:
    """A ``Field:  N kB`` line of a /proc file in bytes (Linux, Android); None where there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """VmHWM: this process's peak resident memory (Linux, Android); -1 where unknown."""
    peak = proc_bytes("/proc/self/status", "VmHWM")
    return -1 if peak is None else peak


def lean_heap() -> bool:
    """Have glibc's malloc map every block over 128 KiB on its own and give it back to the system when freed.

    By default glibc raises that threshold as large blocks are freed, so later ones come from a heap that only
    grows: ONNX Runtime allocates each step's buffers anew (its arena is off, see ``ort_runner``), and the heap
    kept MobileNetV2 mobiletl:5's peak 10 MiB above what a step holds at once. The price is the page faults of
    fresh buffers: about 10 % of that ONNX Runtime step (a TFLite step allocates nothing). Returns False where
    the C library has no such setting (bionic, musl): nothing changes there."""
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(m_mmap_threshold, 128 << 10) == 1 and mallopt(m_trim_threshold, 4 << 20) == 1


def release_file_pages(path: str) -> int:
    """Drop this process's resident pages of every memory mapping of the file ``path`` (Linux, Android): what is
    read again is paged back in from the file, so nothing changes but RSS. Returns the bytes of mappings released
    (0 where the platform offers no madvise or /proc/self/maps)."""
    import ctypes

    madv_dontneed, released = 4, 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        real = os.path.realpath(path)
        with open("/proc/self/maps") as f:
            spans = [line.split(None, 5) for line in f]
        for parts in spans:
            if len(parts) == 6 and parts[5].rstrip("\n") == real:
                start, end = (int(v, 16) for v in parts[0].split("-"))
                if madvise(start, end - start, madv_dontneed) == 0:
                    released += end - start
    except (OSError, AttributeError, ValueError):
        return 0
    return released


def atomic(path: str, write) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path), dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str, write) -> None:
    def to_file(tmp):
        with open(tmp, "wb") as f:
            write(f)

    atomic(path, to_file)


def atomic_json(data, path: str) -> None:
    write_bytes(path, lambda f: f.write(json.dumps(data, indent=2).encode()))
