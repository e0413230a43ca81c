"""Page-cache control over byte ranges of a mapped shard: residency (mincore), reads, release (madvise + fadvise).

Linux only (mincore, MADV_DONTNEED, POSIX_FADV_DONTNEED); elsewhere residency reads as unknown and release is a
no-op, so a RAM budget cannot be enforced there (the store says so once).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
from pathlib import Path

from offload.checkpoint.base import MappedFile

PAGE = mmap.PAGESIZE
READ_CHUNK = 8 << 20  # bytes per pread: large enough to stream, small enough to stay in cache
SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "posix_fadvise") and hasattr(mmap, "MADV_DONTNEED")

_libc = ctypes.CDLL(None, use_errno=True) if SUPPORTED else None
if _libc is not None:
    _libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
    _libc.mincore.restype = ctypes.c_int
_scratch = threading.local()  # one read buffer per thread


def pages_out(start: int, end: int) -> tuple[int, int]:
    """[start, end) widened to whole pages: every page that holds one of its bytes."""
    return start - start % PAGE, -(-end // PAGE) * PAGE


def pages_in(start: int, end: int) -> tuple[int, int]:
    """[start, end) narrowed to whole pages: the pages that hold only its bytes (empty when it spans none)."""
    lo, hi = -(-start // PAGE) * PAGE, end - end % PAGE
    return (lo, hi) if lo < hi else (lo, lo)


def mapping_address(shard: MappedFile) -> int:
    """Address of the shard's first byte in this process (the mapping starts at file offset 0, page aligned)."""
    buf = ctypes.c_char.from_buffer(shard.mapping)
    try:
        return ctypes.addressof(buf)
    finally:
        del buf  # releases the buffer export at once


_LOW_BIT = bytes(b & 1 for b in range(256))


def _mincore(addr: int, length: int, what: str) -> int:
    """Resident pages among the `length // PAGE` pages at page-aligned `addr`."""
    if _libc is None:
        raise OSError("mincore is only available on Linux")
    vec = (ctypes.c_ubyte * (length // PAGE))()
    if _libc.mincore(ctypes.c_void_p(addr), length, vec) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mincore on {what}: {os.strerror(e)}")
    return bytes(vec).translate(_LOW_BIT).count(1)  # bit 0: resident (the others are reserved)


def resident_pages(shard: MappedFile, start: int, end: int) -> tuple[int, int]:
    """(pages resident in RAM, pages in all) over the pages [start, end) touches, as the kernel sees them (mincore):
    in the page cache or mapped here. Raises OSError where mincore is not available."""
    lo, hi = pages_out(start, end)
    if hi == lo:
        return 0, 0
    return _mincore(mapping_address(shard) + lo, hi - lo, f"{shard.path} [{lo}, {hi})"), (hi - lo) // PAGE


def willneed(shard: MappedFile, start: int, end: int) -> None:
    """Ask the kernel to start reading [start, end) into the page cache; returns at once."""
    if SUPPORTED:
        os.posix_fadvise(shard.fd, start, end - start, os.POSIX_FADV_WILLNEED)


def read(shard: MappedFile, start: int, end: int, advise: bool = True) -> None:
    """Bring [start, end) into the page cache: one readahead request for all of it (deep disk queue; advise=False
    when the caller has made it already), then reads in order, which return as the pages arrive. The bytes land in
    a scratch buffer that is thrown away."""
    fd = shard.fd
    if advise and SUPPORTED:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
    buf = getattr(_scratch, "buf", None)
    if buf is None:
        buf = _scratch.buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    at = start
    while at < end:
        n = os.preadv(fd, [view[: min(READ_CHUNK, end - at)]], at)
        if n <= 0:
            raise OSError(f"{shard.path}: read returned {n} at byte {at} of a range ending at {end} (truncated?)")
        at += n


def no_readahead(shard: MappedFile) -> None:
    """Reads of this shard bring in exactly the pages asked for (POSIX_FADV_RANDOM); faults on the mapping are not
    affected."""
    if SUPPORTED:
        os.posix_fadvise(shard.fd, 0, 0, os.POSIX_FADV_RANDOM)


def advise_random(shard: MappedFile, start: int, end: int) -> None:
    """Faults in [start, end) of the mapping read only their own page (no read-around): for regions whose pages are
    always read explicitly first, so read-around would only bring in bytes no one asked for."""
    lo, hi = pages_in(start, end)
    if hi > lo and SUPPORTED:
        shard.mapping.madvise(mmap.MADV_RANDOM, lo, hi - lo)


def release(shard: MappedFile, start: int, end: int) -> int:
    """Drop the pages that hold only bytes of [start, end): unmap them here (MADV_DONTNEED) and evict them from the
    page cache (POSIX_FADV_DONTNEED). Returns the bytes released. The data is unchanged: a later touch reads it
    again from the file."""
    lo, hi = pages_in(start, end)
    if hi <= lo or not SUPPORTED:
        return 0
    shard.mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    os.posix_fadvise(shard.fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
    return hi - lo


def drop_file(path: str | Path) -> None:
    """Evict a whole file's pages from the page cache (those no process has mapped); pages still being written back
    (a file just written) are flushed first, since dirty pages cannot be dropped."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def file_resident_bytes(path: str | Path) -> tuple[int, int]:
    """(bytes of `path` in the page cache, file size), page granular, from mincore over a fresh private mapping."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 0, 0
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            buf = ctypes.c_char.from_buffer(mm)
            addr = ctypes.addressof(buf)
            del buf
            pages = -(-size // PAGE)
            resident = _mincore(addr, pages * PAGE, str(path))
        finally:
            mm.close()
    return min(resident * PAGE, size), size
