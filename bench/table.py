"""Markdown table of load-test JSON lines (one object per run), with the machine and commit."""
import json
import os
import subprocess
import sys


def machine() -> str:
    cores = os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except OSError:
        mem = "?"
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cores} cores ({model}), {mem}"


def main(path: str) -> None:
    runs = [json.loads(l) for l in open(path) if l.strip()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"
    print(f"Runs of {os.path.basename(path)}: commit {commit}, machine {machine()}\n")
    print("| workload | cluster | mode | conc./rate | requests | qps | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | partial | client CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        level = f"{r['concurrency_or_rate']:g}" + ("/s" if r["mode"] == "open" else "")
        print(
            f"| {r['workload']} | {r['cluster']} | {r['mode']} | {level} | {r['requests']} | {r['qps']:.1f} | "
            f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['max_ms']:.2f} | "
            f"{r['errors']} | {r['partial']} | {r.get('client_cpu_pct', 0):.0f}% |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
