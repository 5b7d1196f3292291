"""Time one optimizer step of minima against PyTorch, in the same run, on three model shapes.

    python bench/bench_optim.py            # the full table (a few minutes)
    python bench/bench_optim.py --quick    # fewer repetitions, smaller big model

The main case gives every step NEW gradient arrays, as `zero_grad()` then a backward pass do: they are handed
out before the clock starts, so whatever a variant does with them (minima's flat paths copy them into the flat
buffer) is timed. Variants: minima `foreach=False` (the reference kernel per tensor), the default
(`foreach=None`: flat buffers in pieces on these models), `fused=True` (compiled loops, when numba is
installed), and, as a secondary line, `foreach=True` with the gradients accumulated into the flat buffer's
views (what a backward pass after `zero_grad(set_to_none=False)` gives: nothing to copy); torch
`foreach=False`, `foreach=True` and `fused=True`, on one thread (torch.set_num_threads(1)), with new gradient
tensors every step too. NumPy's elementwise ufuncs and numba's loops are single-threaded as well.
Runs are interleaved (one step of each variant in turn) and the median is reported. Bandwidth counts the bytes
a step must move (read p, g and the state, write p and the state) and is compared with an in-place add measured
in the same run. Two ratio columns: torch foreach=True's time and torch fused=True's time over the variant's.

Memory, per variant on the big model: the rise of peak RSS during one step after the warm-up, each variant in a
fresh interpreter (`--rss-child`, internal) with glibc's malloc thresholds fixed so that freed temporaries are
returned to the system; and, for minima's variants, the peak of NumPy's allocations in the step (tracemalloc).
"""
import argparse, gc, json, os, resource, statistics, subprocess, sys, time, tracemalloc
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minima.optim import Adam, AdamW, SGD   # noqa: E402  (importing minima.optim registers minima.fast)
from minima.fast.flat import step_bytes     # noqa: E402

DTYPE = np.float32
MODELS = {  # name -> sizes of the parameter tensors
    "big": [2_500_000] * 10,
    "many-small": [6_250] * 400,
    "tiny": [16] * 400,
}
OPTIMIZERS = {  # name -> (minima class, torch class name, keyword arguments)
    "Adam": (Adam, "Adam", dict(lr=1e-3)),
    "AdamW": (AdamW, "AdamW", dict(lr=1e-3)),
    "SGD mom.": (SGD, "SGD", dict(lr=1e-3, momentum=0.9)),
}


class Param:
    def __init__(self, data): self.data, self.grad = data, None


def has_numba():
    try: import numba  # noqa: F401
    except ImportError: return False
    return True


def gradient_sets(sizes, seed=1):
    "Two sets of gradient arrays, alternated as each step's new gradients; shared by all variants (read only)."
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(n).astype(DTYPE) for n in sizes] for _ in range(2)]


def fresh_grads(params, grad_sets, wrap=lambda g: g):
    "`prepare()`: give `params` the other set of gradients, new arrays that are no view of a flat buffer."
    count = [0]
    def prepare():
        count[0] += 1
        for p, g in zip(params, grad_sets[count[0] % 2]): p.grad = wrap(g)
    return prepare


def minima_variant(cls, kwargs, sizes, grad_sets, accumulate=False, seed=0, **switches):
    "`(prepare, step, optimizer)` over a fresh minima model; `accumulate` keeps the gradients in the flat views."
    rng = np.random.default_rng(seed)
    params = [Param(rng.standard_normal(n).astype(DTYPE)) for n in sizes]
    opt = cls(params, **switches, **kwargs)
    prepare = fresh_grads(params, grad_sets)
    prepare(); opt.step()   # builds the flat buffers (p.grad becomes a view), compiles numba, creates the state
    if accumulate: prepare = lambda: None   # noqa: E731  (backward would accumulate into the views)
    prepare(); opt.step()
    return prepare, opt.step, opt


def torch_variant(torch, cls_name, kwargs, sizes, grad_sets, seed=0, **switches):
    rng = np.random.default_rng(seed)
    params = [torch.from_numpy(rng.standard_normal(n).astype(DTYPE)).requires_grad_() for n in sizes]
    opt = getattr(torch.optim, cls_name)(params, **kwargs, **switches)
    prepare = fresh_grads(params, grad_sets, torch.from_numpy)
    for _ in range(2): prepare(); opt.step()
    return prepare, opt.step, None


def inplace_add_variant(n):
    a, b = np.ones(n, DTYPE), np.full(n, 1e-7, DTYPE)
    def step(): np.add(a, b, out=a)
    return (lambda: None), step, None


def time_interleaved(variants, repeats, inner):
    "Median seconds per call of each variant; each repetition runs every variant once, in turn."
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (prepare, step, _) in variants.items():
            total = 0.0
            for _ in range(inner):
                prepare()
                t = time.perf_counter(); step(); total += time.perf_counter() - t
            times[name].append(total / inner)
    return {name: statistics.median(ts) for name, ts in times.items()}


def step_allocation(prepare, step):
    "Peak bytes NumPy allocates during one step (tracemalloc sees NumPy's allocations, not torch's)."
    prepare(); gc.collect()
    tracemalloc.start(); tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    step()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


TORCH_FOREACH, TORCH_FUSED = "torch foreach=True", "torch fused=True"


def variant_builders(torch, opt_name, sizes, grad_sets, with_numba):
    "Variant name -> a function building it (model, optimizer, two warm-up steps): `(prepare, step, optimizer)`."
    cls, torch_name, kwargs = OPTIMIZERS[opt_name]
    def mine(**switches): return lambda: minima_variant(cls, kwargs, sizes, grad_sets, **switches)
    def theirs(**switches): return lambda: torch_variant(torch, torch_name, kwargs, sizes, grad_sets, **switches)
    builders = {"minima foreach=False": mine(foreach=False), "minima default": mine()}
    if with_numba: builders["minima fused=True"] = mine(fused=True)
    builders["minima foreach=True, accum."] = mine(foreach=True, accumulate=True)
    if torch is not None:
        builders["torch foreach=False"] = theirs(foreach=False)
        builders[TORCH_FOREACH] = theirs(foreach=True)
        builders[TORCH_FUSED] = theirs(fused=True)
    return builders


# Fixed glibc thresholds for the peak-RSS child: every allocation of 128 KiB or more is its own mmap, unmapped when
# freed. With glibc's default (a threshold that rises to the size of the last freed block, up to 32 MiB), the
# warm-up's temporaries stay in the heap and the measured step reuses them: its RSS grows by 0 or by some leftover.
RSS_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _status():
    "VmRSS and VmHWM from one read of /proc/self/status, in bytes."
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


def _reset_peak_rss():
    "Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); the RSS then, or None if not possible."
    try:
        before = _status()
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        after = _status()
    except (OSError, KeyError, ValueError):
        return None
    # the reset took effect if the peak fell, or (when the process was at its peak) it equals the RSS
    return after["VmRSS"] if after["VmHWM"] < before["VmHWM"] or after["VmHWM"] <= after["VmRSS"] else None


def rss_child(variant, opt_name, sizes):
    "In a fresh process: build `variant`, warm it up, and print the growth of peak RSS during one step as JSON."
    torch = None
    if variant.startswith("torch"):
        import torch
        torch.set_num_threads(1)
    builders = variant_builders(torch, opt_name, sizes, gradient_sets(sizes), "fused" in variant)
    prepare, step, _ = builders[variant]()
    prepare(); gc.collect()
    before = _reset_peak_rss()
    if before is not None:
        method = "VmHWM"
        step()
        grown = _status()["VmHWM"] - before
    else:   # ru_maxrss is the peak since the process started: only growth above the build's own peak shows
        method, before = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024   # kB on Linux
    print(json.dumps({"bytes": grown, "method": method}))


def step_peak_rss(variant, opt_name, quick):
    "Run `rss_child` in a fresh interpreter: no other variant's arrays or allocator caches in the way."
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", variant, "--optimizer", opt_name]
    if quick: cmd.append("--quick")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **RSS_CHILD_ENV})
    if proc.returncode: raise RuntimeError(f"peak-RSS child for {variant!r} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["bytes"], result["method"]


def run_model(torch, model, sizes, opt_name, repeats, with_numba, add_n, quick=False):
    grad_sets = gradient_sets(sizes)
    builders = variant_builders(torch, opt_name, sizes, grad_sets, with_numba)
    variants = {name: build() for name, build in builders.items()}
    variants["in-place add"] = inplace_add_variant(add_n)
    inner = 50 if sum(sizes) < 100_000 else (5 if sum(sizes) < 5_000_000 else 1)
    medians = time_interleaved(variants, repeats, inner)
    nbytes = step_bytes(variants["minima foreach=False"][2])
    add_gbs = 3 * add_n * np.dtype(DTYPE).itemsize / medians.pop("in-place add") / 1e9
    memory = {}   # variant -> (NumPy bytes allocated or None, peak RSS growth, how RSS was measured)
    if model == "big":
        for name, (prepare, step, opt) in variants.items():
            if name == "in-place add": continue
            numpy_bytes = step_allocation(prepare, step) if opt is not None else None
            memory[name] = (numpy_bytes, *step_peak_rss(name, opt_name, quick))
    return medians, nbytes, add_gbs, memory


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and a 5M-parameter big model")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repetitions per model (default 9, quick 3)")
    ap.add_argument("--rss-child", metavar="VARIANT", help=argparse.SUPPRESS)   # internal: one peak-RSS measurement
    ap.add_argument("--optimizer", default="Adam", choices=list(OPTIMIZERS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 9)
    models = dict(MODELS)
    if args.quick: models["big"] = [500_000] * 10
    if args.rss_child: return rss_child(args.rss_child, args.optimizer, models["big"])
    add_n = sum(models["big"])   # the reference bandwidth: an in-place add as large as the big model
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
        print("torch is not installed: minima's variants only (pip install torch==2.13.0)")
    with_numba = has_numba()
    if not with_numba: print("numba is not installed: no fused=True (pip install 'minima-optim[fast]')")
    print(f"float32; torch on {torch.get_num_threads() if torch else '-'} thread; median of {repeats} interleaved "
          "runs; new gradient arrays every step unless 'accum.'")
    header = (f"{'model':<11} {'optimizer':<9} {'variant':<28} {'us/step':>10} {'GB/s':>6} {'% add':>6} "
              f"{'vs torch foreach':>17} {'vs torch fused':>15}")
    for opt_name in OPTIMIZERS:
        print("\n" + header + "\n" + "-" * len(header))
        for model, sizes in models.items():
            medians, nbytes, add_gbs, memory = run_model(torch, model, sizes, opt_name, repeats, with_numba,
                                                         add_n=add_n, quick=args.quick)
            def versus(ref, t): return f"{medians[ref] / t:.2f}x" if ref in medians else "-"
            for name, t in medians.items():
                gbs = nbytes / t / 1e9
                print(f"{model:<11} {opt_name:<9} {name:<28} {t * 1e6:>10.1f} {gbs:>6.1f} {100 * gbs / add_gbs:>5.0f}% "
                      f"{versus(TORCH_FOREACH, t):>17} {versus(TORCH_FUSED, t):>15}")
            print(f"{model:<11} {opt_name:<9} {'(in-place add)':<28} {'':>10} {add_gbs:>6.1f}")
            param_bytes = sum(sizes) * np.dtype(DTYPE).itemsize
            for name, (allocated, rss, method) in memory.items():
                label = f"{model:<11} {opt_name:<9} {'memory ' + name:<35}"
                note = "" if method == "VmHWM" else " [ru_maxrss: growth above the process's earlier peak only]"
                print(f"{label} peak RSS during a step: {rss / 1e6:+.1f} MB "
                      f"({rss / param_bytes:.2f} x the parameters' {param_bytes / 1e6:.0f} MB){note}")
                if allocated is not None:
                    print(f"{label} NumPy allocated in a step (tracemalloc): {allocated:,} bytes "
                          f"({allocated / param_bytes:.2g} x the parameters)")
            gc.collect()


if __name__ == "__main__":
    main()
