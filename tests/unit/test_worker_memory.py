"""A worker process's resident memory, as its metric reports it: the kernel's figure for the process."""

from __future__ import annotations

import re
from pathlib import Path

from workers.prometheus import resident_memory_bytes


def vm_rss_bytes() -> int:
    """/proc/self/status's VmRSS (in kB), the figure `ps` and `top` show."""
    match = re.search(r"^VmRSS:\s+(\d+) kB$", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match
    return int(match.group(1)) * 1024


def test_resident_memory_is_the_kernels_figure_and_grows_with_what_the_process_holds() -> None:
    before = resident_memory_bytes()
    assert abs(before - vm_rss_bytes()) < 0.1 * before
    held = bytearray(64 * 1024 * 1024)  # touched: zero-filled pages are resident once written
    held[::4096] = b"\x01" * len(held[::4096])
    assert resident_memory_bytes() - before >= 60 * 1024 * 1024
    del held
