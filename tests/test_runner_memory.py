"""The device runners' memory helpers, each against what the kernel reports: ``release_file_pages`` (a mapped
file's pages leave RSS, its bytes stay readable) and ``lean_heap`` (freed large blocks go back to the system)."""

import mmap
import subprocess
import sys
import textwrap

import numpy as np

from edgetl.runtime.runner_io import release_file_pages


def resident_bytes(path) -> int:
    """RSS of this process's mappings of ``path``, from /proc/self/smaps."""
    total, inside, real = 0, False, str(path.resolve())
    for line in open("/proc/self/smaps"):
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
            inside = len(head) == 6 and head[5].strip() == real
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_release_file_pages_drops_residency_and_keeps_the_bytes(tmp_path):
    path = tmp_path / "blob"
    data = np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = np.frombuffer(m, np.uint8)
        assert int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # every page touched
        assert resident_bytes(path) >= 7 << 20
        assert release_file_pages(str(path)) >= 8 << 20
        assert resident_bytes(path) < 1 << 20
        assert np.array_equal(view, data)  # paged back in from the file
        del view
    assert release_file_pages(str(tmp_path / "not-mapped")) == 0


HEAP_PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    from edgetl.runtime.runner_io import lean_heap
    def rss():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) >> 10
    if sys.argv[1] == "lean":
        assert lean_heap()
    big = np.ones(16 << 18, np.float32)  # 16 MiB, mapped and freed: glibc raises its threshold to that
    del big
    blocks, small = [], []
    for i in range(48):  # 1 MiB blocks between small ones, the last kept: nothing to trim at the heap's top
        blocks.append(np.ones(1 << 18, np.float32))
        small.append(bytearray(64))
    before = rss()
    del blocks[:-1]
    print(before - rss())
""")


def test_lean_heap_returns_freed_blocks_to_the_system():
    freed = {}
    for mode in ("lean", "fast"):
        done = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        freed[mode] = int(done.stdout.split()[-1])
    # 47 MiB freed: back to the system at once with the lean heap; glibc's default keeps most of it
    assert freed["lean"] >= 40 and freed["fast"] < 20, freed
