#!/usr/bin/env python3
"""Runs a command and prints `ELAPSED_SECONDS MAX_RSS_MIB` of it (wall clock, peak resident memory).

Environment:
  MEASURE_STDOUT=FILE   keep the command's standard output in FILE (else discarded)
  MEASURE_SAMPLES=FILE  write `SECONDS RSS_MIB` samples of the command's resident memory, every 0.2 s
"""
import os
import resource
import subprocess
import sys
import threading
import time

out_path = os.environ.get("MEASURE_STDOUT")
samples_path = os.environ.get("MEASURE_SAMPLES")
out = open(out_path, "wb") if out_path else subprocess.DEVNULL
start = time.monotonic()
child = subprocess.Popen(sys.argv[1:], stdout=out)


def sample(samples):
    """RSS samples every 0.2 s in a thread of their own: the main thread's wait times the command exactly (a
    polling loop would round every elapsed time up to its 0.2 s step)."""
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        samples.write(f"{time.monotonic() - start:.2f} {int(line.split()[1]) / 1024:.1f}\n")
        except OSError:
            pass
        time.sleep(0.2)


sampler = None
if samples_path:
    samples_file = open(samples_path, "w")
    sampler = threading.Thread(target=sample, args=(samples_file,))
    sampler.start()
code = child.wait()
elapsed = time.monotonic() - start
if sampler:
    sampler.join()
    samples_file.close()
rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
if code != 0:
    sys.exit(f"command failed with {code}: {' '.join(sys.argv[1:])}")
print(f"{elapsed:.3f} {rss_mib:.1f}")
