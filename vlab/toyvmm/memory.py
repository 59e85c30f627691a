"""Guest-physical memory: host frames, the p2m map, isolation, ballooning and page sharing.

The host owns one pool of 4 KiB frames (an anonymous ``mmap``). Each guest sees RAM at
guest-physical :data:`RAM_BASE`; its *p2m* list maps guest page *i* to a host frame. The pool is
mapped into every guest's Unicorn instance at machine address :data:`POOL_BASE`, so the only
thing keeping a guest inside its own frames is :meth:`GuestMemory.frame_of` -- the VMM's
bounds check -- exactly as a real hypervisor's stage-2 tables are all that keep guests apart.

* Ballooning: the guest hands pages back (p2m entry -> ``None``, frame freed) and takes them back.
* Content-based sharing: :func:`share_pages` merges identical frames across guests; a shared
  frame is mapped read-only and the first write copies it (copy-on-write, :meth:`break_cow`).
* ``weak_bounds=True`` deliberately forgets the upper bound (lab 05: find and fix it).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
from typing import NamedTuple

from vlab.errors import VlabError
from vlab.toyvmm.asm import RAM_BASE

__all__ = ["PAGE", "POOL_BASE", "HostMemory", "GuestMemory", "MemoryReport", "share_pages"]

PAGE = 4096
#: Machine address of host frame 0 inside every guest's Unicorn instance.
POOL_BASE = 0x1_0000_0000


class HostMemory:
    """The host's frame pool: allocation, reference counts (for sharing) and zeroing on free."""

    def __init__(self, frames: int) -> None:
        if frames <= 0:
            raise VlabError("the host needs at least one 4 KiB frame", field="host_memory", value=frames * PAGE,
                            fix="give the Machine host_memory of at least 4096 bytes")
        self.frames = frames
        self._map = mmap.mmap(-1, frames * PAGE)
        anchor = ctypes.c_char.from_buffer(self._map)
        self.address = ctypes.addressof(anchor)
        del anchor  # release the buffer export; the mapping itself stays valid until close()
        self.view = memoryview(self._map)
        self.refs = [0] * frames
        self._next = 0
        self._free: list[int] = []

    def alloc(self) -> int:
        """One zeroed frame (recycled frames first, lowest number first: deterministic)."""
        if self._free:
            frame = self._free.pop()
        elif self._next < self.frames:
            frame, self._next = self._next, self._next + 1
        else:
            raise VlabError("the host frame pool is exhausted", field="host_memory", value=self.frames * PAGE,
                            fix="create the Machine with more host_memory (bytes), e.g. Machine(host_memory=64 << 20)")
        self.refs[frame] = 1
        return frame

    def alloc_contiguous(self, count: int) -> int:
        """``count`` fresh consecutive frames; returns the first."""
        if self._next + count > self.frames:
            raise VlabError("not enough host memory for this guest", field="ram", value=count * PAGE,
                            fix="give the guest less RAM or the Machine more host_memory (bytes)")
        first, self._next = self._next, self._next + count
        self.refs[first:first + count] = [1] * count
        return first

    def put(self, frame: int) -> None:
        """Drop one reference; the last one zeroes the frame and returns it to the pool."""
        self.refs[frame] -= 1
        if self.refs[frame] == 0:
            self.page(frame)[:] = bytes(PAGE)
            self._free.append(frame)
            self._free.sort(reverse=True)

    def page(self, frame: int) -> memoryview:
        return self.view[frame * PAGE:(frame + 1) * PAGE]

    @property
    def available(self) -> int:
        """Frames that can still be allocated."""
        return len(self._free) + self.frames - self._next

    @property
    def used(self) -> int:
        """Frames currently holding guest data."""
        return sum(1 for r in self.refs if r > 0)

    def close(self) -> None:
        self.view.release()
        self._map.close()


class GuestMemory:
    """One guest's RAM: the p2m list and every VMM-side access to it."""

    def __init__(self, host: HostMemory, size: int, *, weak_bounds: bool = False) -> None:
        if size <= 0 or size % PAGE:
            raise VlabError("guest RAM must be a positive multiple of 4 KiB", field="ram", value=size)
        self.host = host
        self.base = RAM_BASE
        self.size = size
        self.weak_bounds = weak_bounds
        self.first_frame = host.alloc_contiguous(size // PAGE)
        self.p2m: list[int | None] = list(range(self.first_frame, self.first_frame + size // PAGE))

    def frame_of(self, gpa: int) -> int | None:
        """The host frame backing ``gpa``, or ``None``: *the* isolation check of the VMM."""
        index = (gpa - self.base) >> 12
        if 0 <= index < len(self.p2m):
            return self.p2m[index]
        if self.weak_bounds and index >= 0:
            # Deliberate bug (lab 05): a "fast path" that trusts the contiguous layout and only
            # checks the lower bound, so addresses past the end land in the next guest's frames.
            frame = self.first_frame + index
            return frame if frame < self.host.frames else None
        return None

    def read(self, gpa: int, length: int) -> bytes | None:
        """Bytes at ``gpa`` (may cross pages), or ``None`` if any byte is not the guest's."""
        out = bytearray()
        while length > 0:
            frame = self.frame_of(gpa)
            if frame is None:
                return None
            offset = gpa & (PAGE - 1)
            chunk = min(length, PAGE - offset)
            out += self.host.page(frame)[offset:offset + chunk]
            gpa, length = gpa + chunk, length - chunk
        return bytes(out)

    def read_u64(self, gpa: int) -> int | None:
        data = self.read(gpa, 8)
        return None if data is None else int.from_bytes(data, "little")

    def write(self, gpa: int, data: bytes) -> bool:
        """Store ``data`` at ``gpa`` from the VMM side (breaking sharing first); False if outside."""
        view = memoryview(data)
        while view:
            index = (gpa - self.base) >> 12
            if not 0 <= index < len(self.p2m) or self.p2m[index] is None:
                return False
            frame = self.break_cow(index)
            offset = gpa & (PAGE - 1)
            chunk = min(len(view), PAGE - offset)
            self.host.page(frame)[offset:offset + chunk] = view[:chunk]
            gpa, view = gpa + chunk, view[chunk:]
        return True

    def break_cow(self, index: int) -> int:
        """Make page ``index`` private (copy a shared frame); returns its frame."""
        frame = self.p2m[index]
        assert frame is not None
        if self.host.refs[frame] > 1:
            private = self.host.alloc()
            self.host.page(private)[:] = self.host.page(frame)
            self.host.put(frame)
            self.p2m[index] = frame = private
        return frame

    def balloon_give(self, gpa: int, pages: int) -> int:
        """The guest returns ``pages`` pages from ``gpa`` to the host; returns how many it gave."""
        given = 0
        for index in self._indices(gpa, pages):
            frame = self.p2m[index]
            if frame is not None:
                self.host.put(frame)
                self.p2m[index] = None
                given += 1
        return given

    def balloon_take(self, gpa: int, pages: int) -> int:
        """The guest asks for ballooned pages back (zeroed); returns how many it got."""
        taken = 0
        for index in self._indices(gpa, pages):
            if self.p2m[index] is None and self.host.available:
                self.p2m[index] = self.host.alloc()
                taken += 1
        return taken

    def _indices(self, gpa: int, pages: int) -> range:
        first = (gpa - self.base) >> 12
        if gpa & (PAGE - 1) or first < 0 or pages < 0 or first + pages > len(self.p2m):
            return range(0)
        return range(first, first + pages)

    @property
    def ballooned(self) -> int:
        return sum(1 for f in self.p2m if f is None)


class MemoryReport(NamedTuple):
    """What the host saves through ballooning and sharing."""

    guest_pages: int      #: pages of RAM the guests were configured with
    frames_used: int      #: host frames actually holding guest data
    ballooned_pages: int  #: pages the guests gave back
    shared_pages: int     #: guest pages backed by a frame some other page also uses

    @property
    def saved_bytes(self) -> int:
        return (self.guest_pages - self.frames_used) * PAGE


def share_pages(memories: list[GuestMemory]) -> int:
    """Merge identical pages across (and within) guests into one read-only frame each.

    :returns: the number of frames freed. Writes later copy the page back (copy-on-write).
    """
    if not memories:
        return 0
    host = memories[0].host
    canonical: dict[bytes, int] = {}
    freed = 0
    for memory in memories:
        for index, frame in enumerate(memory.p2m):
            if frame is None:
                continue
            content = host.page(frame)
            key = hashlib.blake2b(content, digest_size=16).digest()
            first = canonical.setdefault(key, frame)
            if first == frame or host.page(first) != content:
                continue  # the representative itself, or a hash collision (compare, never trust)
            host.refs[first] += 1
            memory.p2m[index] = first
            host.put(frame)
            freed += 1
    return freed
