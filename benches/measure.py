#!/usr/bin/env python3
"""Runs a command and prints `ELAPSED_SECONDS MAX_RSS_MIB` of it (wall clock, peak resident memory)."""
import resource
import subprocess
import sys
import time

start = time.monotonic()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
elapsed = time.monotonic() - start
rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
if code != 0:
    sys.exit(f"command failed with {code}: {' '.join(sys.argv[1:])}")
print(f"{elapsed:.3f} {rss_mib:.1f}")
