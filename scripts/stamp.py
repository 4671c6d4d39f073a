#!/usr/bin/env python3
"""Appends the `weir-contract` custom section (the weir:rules contract version) to components built by
toolchains without a weir SDK stamp, like `weir plugin stamp` does (usable before weir itself is built).

    scripts/stamp.py VERSION FILE.wasm...
"""
import sys


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n == 0:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def main() -> None:
    version, files = sys.argv[1], sys.argv[2:]
    name = b"weir-contract"
    for path in files:
        with open(path, "rb") as f:
            wasm = f.read()
        if name + version.encode() in wasm:
            continue
        body = leb(len(name)) + name + version.encode()
        with open(path, "ab") as f:
            f.write(b"\x00" + leb(len(body)) + body)


if __name__ == "__main__":
    main()
