#!/usr/bin/env python3
"""Merges the outputs of run_comparison.sh into a markdown table of busbw per size.

    python3 tests/perf/compare.py OUT_DIR > comparison.md

OUT_DIR holds one file per run named IMPL_OP_npN.txt (or IMPL_OP_npN.rK.txt for the K-th
of repeated launches: the table then shows the median per size), where IMPL is
trident-<provider>, gloo-<algo> or mpi, in the common row format of trident-bench, gloo_bench and mpi_bench:
    bytes count type redop root iters time(us) algbw busbw #wrong
(lines starting with '#' are headers; trident-run's "[rank 0] " prefix is stripped).
For each op and world size the table gives busbw (GB/s) of every implementation, gloo as
the best of its variants per size (named), and the ratios trident/gloo and trident/mpi.
"""

import collections
import os
import re
import sys

NAME = re.compile(r"^(?P<impl>[A-Za-z0-9-]+)_(?P<op>[a-z]+)_np(?P<np>\d+)(\.r\d+)?\.txt$")


def parse(path):
    """Returns ({bytes: (time_us, busbw, wrong)}, header lines)."""
    rows, headers = {}, []
    with open(path, errors="replace") as f:
        for line in f:
            line = re.sub(r"^\[rank \d+\] ", "", line.rstrip("\n"))
            if line.startswith("#"):
                headers.append(line)
                continue
            parts = line.split()
            if len(parts) != 10 or not parts[0].isdigit():
                continue
            rows[int(parts[0])] = (float(parts[6]), float(parts[8]), parts[9])
    return rows, headers


def human(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def fmt_bw(x):
    if x is None:
        return "–"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def nearest(rows, size):
    """Row of `size`, or of the nearest size within 1 % (blocked ops round to n elements)."""
    if size in rows:
        return rows[size]
    for s, r in rows.items():
        if abs(s - size) <= size * 0.01:
            return r
    return None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    # (op, np) -> impl -> bytes -> [(time_us, busbw, wrong) per launch]
    samples = collections.defaultdict(
        lambda: collections.defaultdict(lambda: collections.defaultdict(list)))
    notes = []
    for name in sorted(os.listdir(out)):
        m = NAME.match(name)
        if not m:
            continue
        rows, headers = parse(os.path.join(out, name))
        for size, row in rows.items():
            samples[(m["op"], int(m["np"]))][m["impl"]][size].append(row)
        if not m[4] or m[4] == ".r1":  # one note per run, not per launch
            notes.append(f"- `{name}`: {headers[0].lstrip('# ') if headers else 'no output'}")
        bad = [s for s, r in rows.items() if r[2] not in ("0", "N/A")]
        if bad:
            notes.append(f"- **`{name}`: wrong elements at {', '.join(human(s) for s in bad)}**")

    # The median launch per size, by busbw.
    # With an even number of launches, the lower of the two middle ones.
    runs = collections.defaultdict(dict)
    counts = set()
    for key, impls in samples.items():
        for impl, sizes in impls.items():
            runs[key][impl] = {}
            for size, rs in sizes.items():
                rs = sorted(rs, key=lambda r: r[1])
                runs[key][impl][size] = rs[(len(rs) - 1) // 2]
                counts.add(len(rs))

    print("# Trident vs Gloo vs Open MPI: busbw per size (GB/s)\n")
    meta = os.path.join(out, "meta.txt")
    if os.path.exists(meta):
        with open(meta) as f:
            print("".join(f"    {line}" for line in f))
    print("busbw follows nccl-tests: allreduce x 2(n-1)/n, allgather x (n-1)/n, broadcast x 1;"
          " time = max over ranks of the mean call. Ratios > 1: trident is faster. gloo = the"
          " best gloo variant at that size (its name in brackets). trident allreduce runs in"
          " place, as the peers do."
          + (" Each cell is the median of "
             + (f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}")
             + " launches (the lower middle one of an even count)."
             if counts and max(counts) > 1 else "")
          + "\n")

    op_order = {"allreduce": 0, "allgather": 1, "broadcast": 2}
    for (op, n) in sorted(runs, key=lambda k: (op_order.get(k[0], 9), k[0], k[1])):
        impls = runs[(op, n)]
        tridents = sorted(i for i in impls if i.startswith("trident-"))
        gloos = sorted(i for i in impls if i.startswith("gloo-"))
        sizes = sorted({s for i in tridents or impls for s in impls[i]})
        print(f"## {op}, {n} ranks\n")
        bound = impls.get("memcpy")  # memcpy_bench: the memory-bandwidth bound, if run
        head = ["size"] + [f"{t}" for t in tridents] + ["gloo", "mpi"]
        if bound:
            head += ["memcpy bound", f"{tridents[0].replace('trident-', '')}/bound" if tridents else "-"]
        for t in tridents:
            short = t.replace("trident-", "")
            head += [f"{short}/gloo", f"{short}/mpi"]
        head += ["time us (" + (tridents[0] if tridents else "-") + ")"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for s in sizes:
            cells = [human(s)]
            tbw = {}
            for t in tridents:
                r = nearest(impls[t], s)
                tbw[t] = r[1] if r else None
                cells.append(fmt_bw(tbw[t]))
            best, best_name = None, None
            for g in gloos:
                r = nearest(impls[g], s)
                if r and (best is None or r[1] > best):
                    best, best_name = r[1], g.replace("gloo-", "")
            cells.append(f"{fmt_bw(best)} [{best_name}]" if best is not None and len(gloos) > 1
                         else fmt_bw(best))
            r = nearest(impls.get("mpi", {}), s)
            mpi = r[1] if r else None
            cells.append(fmt_bw(mpi))
            if bound:
                r = nearest(bound, s)
                cells.append(fmt_bw(r[1] if r else None))
                cells.append(ratio(tbw[tridents[0]], r[1] if r else None) if tridents else "–")
            for t in tridents:
                cells += [ratio(tbw[t], best), ratio(tbw[t], mpi)]
            r = nearest(impls[tridents[0]], s) if tridents else None
            cells.append(f"{r[0]:.1f}" if r else "–")
            print("| " + " | ".join(cells) + " |")
        print()

    print("## Runs\n")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
