#!/usr/bin/env python3
"""Writes lines of FILE to stdout at a steady RATE per second for SECONDS (cycling through the file), in
10 ms ticks. When the reader stops reading (backpressure), writes block; the feeder then catches up.

    python3 benches/feed.py orders.jsonl 1000 60 | weir run -c stdin.toml
"""
import sys
import time


def main() -> None:
    path, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with open(path, "rb") as f:
        lines = [l for l in f if l.strip()]
    total = int(rate * seconds)
    out = sys.stdout.buffer
    start = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            out.write(lines[sent % len(lines)])
            sent += 1
        out.flush()
        time.sleep(0.01)
    out.close()


if __name__ == "__main__":
    main()
