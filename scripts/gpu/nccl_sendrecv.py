#!/usr/bin/env python3
"""NCCL send/recv between GPU 0 and GPU 1 of one host, through torch.distributed (NCCL backend).

Used by scripts/gpu/nccl-sim.sh, which sets the NCCL environment (which network, which plugin)
before each run; this file only moves and checks bytes and measures time.

  nccl_sendrecv.py run --label NAME --sizes 1M,16M,1G [--warmup 3] [--iters 10] --json OUT.json
  nccl_sendrecv.py summarize --sim A.json --socket-best B.json --socket-default C.json \
                             [--grid G1.json G2.json ...]

run: spawns 2 processes (rank r on GPU r). For every size, each iteration:
  1. both ranks fill their buffers outside the timed region: rank 0 sends a pattern that depends
     on (size, iteration), so stale bytes from an earlier iteration are caught; rank 1 clears
     its receive buffer;
  2. a small all_reduce plus a device synchronize line the ranks up;
  3. timed with CUDA events on each rank's current stream: isend / irecv, wait (which makes the
     current stream wait for NCCL's stream);
  4. the iteration time is the max over both ranks (an all_reduce MAX, outside the timing);
  5. rank 1 compares the received buffer with the expected pattern on the GPU.
The first `--warmup` iterations (connection setup included) are not timed. GB/s = bytes / median
time / 1e9. Any mismatch fails the run (exit status 1).

summarize: prints a table (GB/s per size and configuration) and one JSON line.
"""

import argparse
import datetime
import json
import os
import socket
import statistics
import sys

SIZE_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
BLOCK = 1 << 20


def parse_size(s):
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    if s and s[-1] in SIZE_SUFFIX:
        return int(float(s[:-1]) * SIZE_SUFFIX[s[-1]])
    return int(s)


def human(n):
    for unit, v in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= v and n % v == 0:
            return f"{n // v} {unit}"
    return f"{n} B"


def pattern(torch, n, seed, dev):
    """n bytes: a pseudo-random 1 MiB block, shifted per MiB and per seed (no two MiB equal)."""
    nb = max(1, (n + BLOCK - 1) // BLOCK)
    idx = torch.arange(BLOCK, device=dev, dtype=torch.int64)
    base = ((idx * 1103515245 + 12345 + seed * 7919) >> 16) & 0xFF
    out = base.to(torch.uint8).repeat(nb).view(nb, BLOCK)
    shift = ((torch.arange(nb, device=dev, dtype=torch.int64) * 31 + seed) % 251).to(torch.uint8)
    out += shift.unsqueeze(1)
    return out.view(-1)[:n]


def worker(rank, args, port, result_path):
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    kw = dict(
        backend="nccl",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=args.timeout),
    )
    try:
        dist.init_process_group(device_id=dev, **kw)
    except TypeError:  # torch < 2.3 has no device_id
        dist.init_process_group(**kw)

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    peer = 1 - rank
    results = []
    failed = []
    sync = torch.zeros(1, device=dev)
    for n in sizes:
        buf = torch.empty(n, dtype=torch.uint8, device=dev)
        times = []
        total = args.warmup + args.iters
        for it in range(total):
            seed = (n % 9973) * 131 + it
            if rank == 0:
                buf.copy_(pattern(torch, n, seed, dev))
            else:
                buf.zero_()
            dist.all_reduce(sync)
            torch.cuda.synchronize(dev)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            work = dist.isend(buf, peer) if rank == 0 else dist.irecv(buf, peer)
            work.wait()
            end.record()
            end.synchronize()
            t = torch.tensor([start.elapsed_time(end) / 1e3], device=dev, dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            bad = torch.zeros(1, device=dev, dtype=torch.int64)
            if rank == 1 and not torch.equal(buf, pattern(torch, n, seed, dev)):
                bad += 1
            dist.all_reduce(bad)
            if bad.item():
                failed.append((n, it))
            if it >= args.warmup:
                times.append(t.item())
        med = statistics.median(times) if times else float("nan")
        results.append(
            {
                "bytes": n,
                "iters": len(times),
                "median_s": med,
                "min_s": min(times) if times else float("nan"),
                "gbps": n / med / 1e9 if times else 0.0,
            }
        )
        del buf
        torch.cuda.empty_cache()
    if rank == 0:
        doc = {
            "label": args.label,
            "nccl_version": ".".join(str(v) for v in torch.cuda.nccl.version()),
            "torch": torch.__version__,
            "gpus": [torch.cuda.get_device_name(i) for i in range(2)],
            "env": {
                k: v
                for k, v in sorted(os.environ.items())
                if k.startswith(("NCCL_", "TCPX_SIM_"))
            },
            "results": results,
            "mismatches": [{"bytes": n, "iteration": it} for n, it in failed],
        }
        with open(result_path, "w") as f:
            json.dump(doc, f, indent=1)
    dist.destroy_process_group()
    if failed:
        raise SystemExit(f"rank {rank}: received bytes differ at (size, iteration) {failed[:8]}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_run(args):
    import torch
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < 2:
        sys.exit(f"needs 2 GPUs, found {torch.cuda.device_count()}")
    mp.spawn(worker, args=(args, free_port(), args.json), nprocs=2, join=True)
    with open(args.json) as f:
        doc = json.load(f)
    for r in doc["results"]:
        print(
            f"{args.label:>16}  {human(r['bytes']):>8}  {r['gbps']:7.2f} GB/s  "
            f"median {r['median_s'] * 1e3:9.3f} ms over {r['iters']}",
            flush=True,
        )


def load(path):
    with open(path) as f:
        return json.load(f)


def by_size(doc):
    return {r["bytes"]: r for r in doc["results"]}


def cmd_summarize(args):
    sim = load(args.sim)
    best = load(args.socket_best)
    default = load(args.socket_default) if args.socket_default else None
    grid = [load(p) for p in args.grid]
    s_sim, s_best = by_size(sim), by_size(best)
    s_def = by_size(default) if default else {}
    sizes = sorted(set(s_sim) | set(s_best))
    cols = ["size", "tcpx-sim GB/s", f"socket best GB/s ({best['label']})"]
    if default:
        cols.append("socket default GB/s")
    cols.append("tcpx-sim / socket best")
    print()
    print(f"NCCL send/recv GPU0 -> GPU1 ({sim['gpus'][0]}), NCCL {sim['nccl_version']}, "
          f"torch {sim['torch']}; median GB/s")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    ratios = {}
    for n in sizes:
        a = s_sim.get(n, {}).get("gbps", 0.0)
        b = s_best.get(n, {}).get("gbps", 0.0)
        row = [human(n), f"{a:.2f}", f"{b:.2f}"]
        if default:
            row.append(f"{s_def.get(n, {}).get('gbps', 0.0):.2f}")
        ratio = a / b if b else float("nan")
        ratios[n] = ratio
        row.append(f"{ratio:.2f}x")
        print("| " + " | ".join(row) + " |")
    if grid:
        print()
        print("socket grid (NCCL_SOCKET_NTHREADS x NCCL_NSOCKS_PERTHREAD), GB/s at the largest size:")
        for g in grid:
            s = by_size(g)
            top = max(s)
            print(f"  {g['label']:>12}: {s[top]['gbps']:.2f} GB/s at {human(top)}")
    line = {
        "bench": "nccl-sendrecv-gpu0-gpu1",
        "nccl": sim["nccl_version"],
        "torch": sim["torch"],
        "gpu": sim["gpus"][0],
        "gbps": {
            "tcpx-sim": {str(n): s_sim[n]["gbps"] for n in s_sim},
            "socket-best": {str(n): s_best[n]["gbps"] for n in s_best},
            **({"socket-default": {str(n): s_def[n]["gbps"] for n in s_def}} if default else {}),
        },
        "socket_best_config": best["label"],
        "socket_grid_largest": {
            g["label"]: by_size(g)[max(by_size(g))]["gbps"] for g in grid
        },
        "ratio_sim_over_socket_best": {str(n): r for n, r in ratios.items()},
    }
    print()
    print("JSON " + json.dumps(line, sort_keys=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--sizes", default="1M,16M,64M,256M,1G")
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--iters", type=int, default=10)
    r.add_argument("--timeout", type=int, default=300, help="process-group timeout, seconds")
    r.add_argument("--json", required=True)
    s = sub.add_parser("summarize")
    s.add_argument("--sim", required=True)
    s.add_argument("--socket-best", required=True)
    s.add_argument("--socket-default")
    s.add_argument("--grid", nargs="*", default=[])
    args = ap.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    else:
        cmd_summarize(args)


if __name__ == "__main__":
    main()
