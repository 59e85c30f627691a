"""The shared objects a dynamically linked program needs, read from its ELF headers.

The guest initramfs takes a few host programs from Debian packages (``vm-images/linux/binaries``, e.g.
``/sbin/cryptsetup``). Such a program runs in the guest only with its dynamic loader (the ``PT_INTERP`` path)
and every library its ``DT_NEEDED`` entries name, recursively. They are resolved here without running anything
(``ldd`` would run the loader): each name is looked up in the binary's ``DT_RUNPATH``/``DT_RPATH`` and then in
the loader's default directories for the multiarch triplet, the order the guest's loader (which has no
``ld.so.cache``) searches. The result is sorted, so the initramfs lists the same files in the same order every time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vlab.errors import VlabError

__all__ = ["Program", "SharedObject", "needed_objects", "read_elf"]

_PT_DYNAMIC, _PT_INTERP, _PT_LOAD = 2, 3, 1
_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 1, 5, 15, 29
#: e_machine -> the multiarch triplet Debian and Ubuntu install its libraries under
_TRIPLETS = {62: "x86_64-linux-gnu", 183: "aarch64-linux-gnu", 243: "riscv64-linux-gnu"}


@dataclass(frozen=True)
class ElfInfo:
    """What the loader reads from one ELF file."""

    machine: int
    interp: str | None
    needed: tuple[str, ...]
    search: tuple[str, ...]  # DT_RUNPATH, else DT_RPATH, split at ':'


@dataclass(frozen=True)
class SharedObject:
    """A file the program needs: ``source`` on the host, ``target`` its absolute path in the guest."""

    source: Path
    target: PurePosixPath


@dataclass(frozen=True)
class Program:
    """A program with its loader and libraries, as the guest must hold them."""

    source: Path
    target: PurePosixPath
    objects: tuple[SharedObject, ...]  # the loader first, then the libraries sorted by guest path


def _bad(path: Path, problem: str) -> VlabError:
    return VlabError(problem, field="vm-images/linux/binaries", value=str(path),
                     fix="list only dynamically linked ELF programs of this machine's architecture")


def read_elf(path: Path) -> ElfInfo:
    """Parse the program headers and the dynamic section of a 64-bit little-endian ELF file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _bad(path, f"cannot be read ({exc.strerror})") from None
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise _bad(path, "is not a 64-bit little-endian ELF file")
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    segments = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    interp = None
    dynamic: tuple[int, int] | None = None
    for kind, _flags, offset, _vaddr, _paddr, filesz, _memsz, _align in segments:
        if kind == _PT_INTERP:
            interp = data[offset:offset + filesz].split(b"\0")[0].decode()
        elif kind == _PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        return ElfInfo(machine, interp, (), ())
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + i) for i in range(0, dynamic[1], 16)]
    strtab_vaddr = next((value for tag, value in entries if tag == _DT_STRTAB), None)
    if strtab_vaddr is None:
        raise _bad(path, "has a dynamic section without a string table")
    # DT_STRTAB is a virtual address: find the file offset through the PT_LOAD segment that maps it
    loads = [(vaddr, offset, filesz) for kind, _f, offset, vaddr, _p, filesz, _m, _a in segments if kind == _PT_LOAD]
    base = next((offset + strtab_vaddr - vaddr for vaddr, offset, size in loads
                 if vaddr <= strtab_vaddr < vaddr + size), None)
    if base is None:
        raise _bad(path, "has a string table outside its loaded segments")

    def string(index: int) -> str:
        return data[base + index:data.index(b"\0", base + index)].decode()

    needed = tuple(string(value) for tag, value in entries if tag == _DT_NEEDED)
    runpath = [string(value) for tag, value in entries if tag == _DT_RUNPATH]
    rpath = [string(value) for tag, value in entries if tag == _DT_RPATH]
    search = tuple(d for text in (runpath or rpath) for d in text.split(":") if d)
    return ElfInfo(machine, interp, needed, search)


def _default_dirs(machine: int) -> list[str]:
    triplet = _TRIPLETS.get(machine)
    multiarch = [f"/lib/{triplet}", f"/usr/lib/{triplet}"] if triplet else []
    return [*multiarch, "/lib64", "/usr/lib64", "/lib", "/usr/lib"]


def needed_objects(program: Path, target: PurePosixPath | None = None) -> Program:
    """``program``'s loader and all the libraries it needs, recursively, each with its path in the guest.

    A library lands in the guest under the directory it was found in and its ``DT_NEEDED`` name (the soname:
    the host's symlink chain is resolved to one file); the loader under its ``PT_INTERP`` path.

    :raises VlabError: for a file that is not a dynamically linked ELF program, a ``$ORIGIN`` search path,
        or a library not found (naming it and who needs it).
    """
    top = read_elf(program)
    if top.interp is None:
        raise _bad(program, "has no PT_INTERP (a static program needs no libraries: copy it as a guest program)")
    interp = PurePosixPath(top.interp)
    objects = {interp: SharedObject(Path(top.interp).resolve(), interp)}
    todo: list[tuple[str, ElfInfo, Path]] = [(name, top, program) for name in top.needed]
    while todo:
        name, parent, who = todo.pop(0)
        if name == interp.name:  # libc names the loader: the loaded interpreter satisfies it (same soname)
            continue
        if any(target.name == name for target in objects):
            continue
        if any("$" in d for d in parent.search):
            raise _bad(who, "uses $ORIGIN or another token in its library search path, which vlab does not expand")
        for directory in [*parent.search, *_default_dirs(top.machine)]:
            candidate = Path(directory) / name
            if candidate.is_file():
                info = read_elf(candidate.resolve())
                if info.machine != top.machine:
                    continue  # e.g. an i386 library in /usr/lib: the loader skips it too
                where = PurePosixPath(directory) / name
                objects[where] = SharedObject(candidate.resolve(), where)
                todo += [(child, info, candidate) for child in info.needed]
                break
        else:
            raise VlabError(f"the library {name} that {who} needs is not installed", field="vm-images/linux/binaries",
                            value=str(program), fix="install the package that ships it (apt-file search " + name + ")")
    libraries = sorted((obj for where, obj in objects.items() if where != interp), key=lambda o: str(o.target))
    return Program(program, target or PurePosixPath(str(program)), (objects[interp], *libraries))
