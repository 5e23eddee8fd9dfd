"""Benchmark: `compress merge` against mergekit (from PyPI) on SmolLM2-135M-Instruct variants.

    python bench/merge_vs_mergekit.py [--model /work/cache/smollm2] [--methods ties,linear]
        [--only mergekit|compress|both] [--reuse-mergekit]

1. Creates its own virtual environment with mergekit from PyPI (default /tmp/compress-bench-mergekit;
   torch==2.13.0 is installed first so pip reuses the CPU wheel instead of pulling CUDA).
2. Makes three "fine-tuned" variants of the model: θ_i = θ + σ·std(θ)·(0.6·c + 0.8·n_i) with a shared
   direction c and a private one n_i per variant (seeded), saved as bf16 safetensors checkpoints.
3. Runs the same mergekit YAML recipe with both tools (`mergekit-yaml` and `compress merge`), each in a
   fresh process under /usr/bin/time (wall time, peak RSS). Recipes compute in float32 and store
   bfloat16 (`dtype: float32`, `out_dtype: bfloat16`) so both tools do the arithmetic in fp32.
4. Compares every output tensor: max |difference|, and the largest difference in bf16 units in the
   last place (ulps; 1 ulp = a rounding flip of an fp32 result near a bf16 boundary). Random methods
   (DARE) draw different masks by design; for them the relative L2 distance of the merged deltas is
   reported instead.

mergekit's output folder and its measurement are kept under WORK/mergekit_cache/<method>/ (keyed by the
recipe text and the mergekit version): `--only mergekit` fills that cache, `--reuse-mergekit` compares
against it instead of running mergekit again (mergekit takes most of the benchmark's time; the JSON
records when each side was measured).

`--methods ties@index,breadcrumbs@index,sce@index` runs compress with `tie_break: index` on the same recipe
(compared with mergekit's plain run: the entries tied at the threshold then differ by design).

`--scale` runs linear, slerp and ties (also ties@index) on synthetic 1.17B-parameter Llama-shaped
bf16 checkpoints written once under `--cache` (default /work/bench-cache/merge-scale; see
merge_scale.py), measures the disk's sequential write (fsync) and cold-read rates, and prints each
run's I/O floor: (bytes read + bytes written) at those rates. Both tools run under `nice -n 10`;
CPU seconds (user + system) are reported beside wall seconds.

Prints a table and writes bench/results/merge_vs_mergekit.json (--scale: merge_scale.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from merge_scale import CONFIG, disk_throughput, io_floor, make_models, n_params, scale_recipes
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VENV = Path(os.environ.get("COMPRESS_BENCH_VENV", "/tmp/compress-bench-mergekit"))
WORK = Path(os.environ.get("COMPRESS_BENCH_WORK", "/tmp/compress-bench-merge"))

SLERP_T = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
           {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]


def recipes(base: str, ft: list[str], layers: int) -> dict[str, dict]:
    common = {"dtype": "float32", "out_dtype": "bfloat16"}
    w = [0.5, 0.3, 0.2]
    return {
        "linear": {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": x}} for m, x in zip(ft, w, strict=True)], **common},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": base,
                            "models": [{"model": m, "parameters": {"weight": 0.3}} for m in ft], **common},
        "ties": {"merge_method": "ties", "base_model": base,
                 "models": [{"model": m, "parameters": {"weight": 0.3, "density": 0.5}} for m in ft],
                 "parameters": {"normalize": True}, **common},
        "slerp": {"merge_method": "slerp", "base_model": base,
                  "slices": [{"sources": [{"model": base, "layer_range": [0, layers]},
                                          {"model": ft[0], "layer_range": [0, layers]}]}],
                  "parameters": {"t": SLERP_T}, **common},
        "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": base,
                        "models": [{"model": m, "parameters": {"weight": 0.3, "density": 0.9, "gamma": 0.01}} for m in ft],
                        **common},
        "sce": {"merge_method": "sce", "base_model": base, "models": [{"model": m} for m in [base, *ft]],
                "parameters": {"select_topk": 0.1}, **common},
        "model_stock": {"merge_method": "model_stock", "base_model": base, "models": [{"model": m} for m in ft], **common},
        "dare_ties": {"merge_method": "dare_ties", "base_model": base,
                      "models": [{"model": m, "parameters": {"weight": 0.3, "density": 0.5}} for m in ft], **common},
    }


RANDOM = {"dare_ties", "dare_linear", "della", "della_linear"}
MEASURED: set[str] = set()  # methods whose mergekit run this invocation made


def ensure_venv() -> Path:
    exe = VENV / "bin" / "mergekit-yaml"
    if exe.is_file():
        return exe
    print(f"creating {VENV} with mergekit from PyPI ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["mergekit"], check=True)
    return exe


def mergekit_version() -> str:
    out = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "show", "mergekit"], capture_output=True, text=True)
    m = re.search(r"^Version: (.+)$", out.stdout, re.M)
    return m.group(1) if m else "?"


def make_variants(model: Path, n: int = 3, sigma: float = 0.02) -> list[Path]:
    """Perturbed copies of `model` with a shared and a private random direction per tensor (seeded)."""
    outs = [WORK / f"ft{i + 1}" for i in range(n)]
    if all((o / "model.safetensors").is_file() for o in outs):
        return outs
    sd = load_file(str(model / "model.safetensors"))
    for i, out in enumerate(outs):
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(model, out, ignore=shutil.ignore_patterns("model*.safetensors*", "compress.json"))
        new = {}
        for j, name in enumerate(sorted(sd)):
            t = sd[name].float()
            gc = torch.Generator().manual_seed(1000 + j)
            gi = torch.Generator().manual_seed(10_000 * (i + 1) + j)
            common = torch.randn(t.shape, generator=gc)
            private = torch.randn(t.shape, generator=gi)
            scale = sigma * float(t.std()) if t.numel() > 1 else sigma
            new[name] = (t + scale * (0.6 * common + 0.8 * private)).to(sd[name].dtype).contiguous()
        save_file(new, str(out / "model.safetensors"), metadata={"format": "pt"})
    return outs


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run under `nice -n 10` and /usr/bin/time -v: wall seconds, CPU seconds, peak RSS (MB), exit code."""
    t0 = time.perf_counter()
    p = subprocess.run(["nice", "-n", "10", "/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    rss = int(m.group(1)) / 1024 if m else float("nan")
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", p.stderr))
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss, 1), "rc": p.returncode}


def run_mergekit(exe: Path, name: str, path: Path, env: dict, reuse: bool) -> tuple[dict, Path]:
    """mergekit's run of one recipe, from the cache when `reuse` and the recipe/version match."""
    cache = WORK / "mergekit_cache" / name
    key = hashlib.sha256((path.read_text() + mergekit_version()).encode()).hexdigest()
    meta_file = cache / "measurement.json"
    if reuse and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("key") == key and (cache / "out").is_dir():
            return {**meta["result"], "cached_from": meta["date"]}, cache / "out"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    res = timed([str(exe), str(path), str(cache / "out"), "--random-seed", "0"], env)
    meta_file.write_text(json.dumps({"key": key, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "result": res}) + "\n")
    return {**res, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}, cache / "out"


def _handles(folder: Path) -> dict[str, object]:
    """tensor name -> an open safe_open handle holding it (tensors are read one at a time)."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        h = safe_open(str(f), "pt")
        for k in h.keys():
            out[k] = h
    return out


def compare(a: Path, b: Path, base: Path, random: bool) -> dict:
    """Per tensor: max |a − b|, the largest difference in bf16 ulps, the share of differing entries."""
    ha, hb, hbase = _handles(a), _handles(b), _handles(base)
    missing = sorted(set(ha) ^ set(hb))
    worst_abs, worst_ulp, worst_name, rel = 0.0, 0.0, "", 0.0
    n_diff = n_all = 0
    per = {}
    dtypes = set()
    for k in sorted(set(ha) & set(hb)):
        x, y = ha[k].get_tensor(k), hb[k].get_tensor(k)
        dtypes |= {str(x.dtype), str(y.dtype)}
        x, y = x.float(), y.float()
        if x.shape != y.shape:
            per[k] = {"shape": [list(x.shape), list(y.shape)]}
            continue
        d = (x - y).abs()
        mx = float(d.max()) if d.numel() else 0.0
        # ulps at the operands' scale: max(|a|, |b|, |base|) (cancellation near 0 is fp32 noise)
        mag = torch.maximum(x.abs(), y.abs())
        tb = hbase[k].get_tensor(k).float() if k in hbase else None
        if tb is not None and tb.shape == x.shape:
            mag = torch.maximum(mag, tb.abs())
        mag = mag.clamp(min=torch.finfo(torch.bfloat16).tiny)
        ulp = torch.exp2(torch.floor(torch.log2(mag)) - 7)
        ulps = float((d / ulp).max()) if d.numel() else 0.0
        entry = {"max_abs": mx, "max_ulps": ulps, "frac_diff": float((d > 0).float().mean()) if d.numel() else 0.0}
        if random and tb is not None:
            da, db = x - tb, y - tb
            r = float((da - db).norm() / db.norm().clamp(min=1e-12))
            entry["rel_l2_delta"] = r
            rel = max(rel, r)
        per[k] = entry
        if mx > worst_abs:
            worst_abs, worst_name = mx, k
        worst_ulp = max(worst_ulp, ulps)
        n_diff += int((d > 0).sum())
        n_all += d.numel()
    return {"tensors": len(per), "missing": missing, "dtypes": sorted(dtypes), "max_abs": worst_abs,
            "max_abs_tensor": worst_name, "max_ulps": worst_ulp,
            "frac_elements_differing": n_diff / max(1, n_all), "max_rel_l2_delta": rel if random else None,
            "per_tensor": per}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def compress_recipe(method: str, variant: str, rec: dict) -> dict:
    """The recipe compress runs: mergekit's, with `tie_break: index` for @index rows and SCE's variant
    set to mergekit's (compress defaults to FuseChat-2.0's)."""
    params = dict(rec.get("parameters") or {})
    if variant:
        if variant != "index" or method not in ("ties", "breadcrumbs", "sce"):
            raise SystemExit(f"unknown variant {method}@{variant}: only ties@index, breadcrumbs@index and sce@index")
        params["tie_break"] = "index"
    if method == "sce":
        params["sce_mask_deltas"] = True
    return {**rec, "parameters": params} if params else rec


def run_method(name: str, all_recipes: dict, exe: Path, base: Path, env: dict, args: argparse.Namespace) -> dict | None:
    import yaml

    method, _, variant = name.partition("@")  # "ties@index": compress with `tie_break: index`
    rec = all_recipes[method]
    path = WORK / f"{method}.yml"
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    path_us = WORK / f"{name}.compress.yml"
    path_us.write_text(yaml.safe_dump(compress_recipe(method, variant, rec), sort_keys=False))
    out_us = WORK / f"out_compress_{name}"
    shutil.rmtree(out_us, ignore_errors=True)
    reuse = args.reuse_mergekit or args.only == "compress" or method in MEASURED  # ties@index reuses ties' run
    mk, out_mk = run_mergekit(exe, method, path, env, reuse)
    MEASURED.add(method)
    if args.only == "mergekit":
        print(f"{name:16s} mergekit {mk['wall_s']:6.1f}s {mk['peak_rss_mb']:7.0f}MB "
              f"({'cached ' + mk['cached_from'] if 'cached_from' in mk else 'measured'})", file=sys.stderr, flush=True)
        return None
    us = timed([sys.executable, "-m", "compress", "merge", str(path_us), "-o", str(out_us), "--seed", "0", "--force"], env)
    cmp = compare(out_us, out_mk, base, name in RANDOM) if mk["rc"] == 0 and us["rc"] == 0 else {}
    row = {"method": name, "mergekit": mk, "compress": us,
           "time_ratio": round(us["wall_s"] / mk["wall_s"], 3) if mk["wall_s"] else None,
           "rss_ratio": round(us["peak_rss_mb"] / mk["peak_rss_mb"], 3) if mk["peak_rss_mb"] else None,
           "compare": {k: v for k, v in cmp.items() if k != "per_tensor"}, "per_tensor": cmp.get("per_tensor")}
    if args.scale and us["rc"] == 0:
        read = sum(folder_bytes(Path(m)) for m in _recipe_models(rec))
        written = folder_bytes(out_us)
        row["io"] = {"read_bytes": read, "written_bytes": written, "floor_s": round(io_floor(read, written, args.tp), 2)}
        row["floor_ratio"] = round(us["wall_s"] / row["io"]["floor_s"], 2)
        row["per_tensor"] = None  # 200 tensors x 3 methods: the summary is enough at scale
    c = row["compare"]
    agree = (f"rel L2 Δ {c.get('max_rel_l2_delta', float('nan')):.3f} (random)" if name in RANDOM
             else f"{c.get('max_abs', float('nan')):.2e} / {c.get('max_ulps', float('nan')):.0f} ulp")
    floor = f" | floor {row['io']['floor_s']:.1f}s x{row['floor_ratio']}" if "io" in row else ""
    print(f"{name:16s} mergekit {mk['wall_s']:6.1f}s {mk['peak_rss_mb']:7.0f}MB | compress {us['wall_s']:6.1f}s "
          f"({us['cpu_s']:.0f} CPU s) {us['peak_rss_mb']:7.0f}MB | time x{row['time_ratio']} rss x{row['rss_ratio']}"
          f"{floor} | diff {agree}", file=sys.stderr, flush=True)
    shutil.rmtree(out_us, ignore_errors=True)
    return row


def _recipe_models(rec: dict) -> list[str]:
    names = [m["model"] for m in rec.get("models") or []]
    names += [s["model"] for sl in rec.get("slices") or [] for s in sl["sources"]]
    names += [rec["base_model"]] if rec.get("base_model") else []
    return list(dict.fromkeys(names))


def print_table(rows: list[dict], scale: bool) -> None:
    head = "| method | mergekit s (CPU s) | compress s (CPU s) | time ratio | mergekit MB | compress MB | RSS ratio |"
    head += " I/O floor s | × floor |" if scale else ""
    print("\n" + head + " max abs diff | max bf16 ulps |")
    print("|---" * (head.count("|") + 1) + "|")
    for r in rows:
        c, mk, us = r["compare"], r["mergekit"], r["compress"]
        diff = (f"random: rel L2 {c.get('max_rel_l2_delta', float('nan')):.3f}" if r["method"] in RANDOM
                else f"{c.get('max_abs', float('nan')):.2e}")
        ulps = "—" if r["method"] in RANDOM else f"{c.get('max_ulps', float('nan')):.0f}"
        floor = f" {r['io']['floor_s']:.1f} | {r['floor_ratio']:.2f} |" if scale and "io" in r else (" — | — |" if scale else "")
        print(f"| {r['method']} | {mk['wall_s']:.1f} ({mk.get('cpu_s', float('nan')):.0f}) | {us['wall_s']:.1f} "
              f"({us['cpu_s']:.0f}) | {r['time_ratio']:.2f} | {mk['peak_rss_mb']:.0f} | {us['peak_rss_mb']:.0f} | "
              f"{r['rss_ratio']:.2f} |{floor} {diff} | {ulps} |")


def main() -> int:
    global WORK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("COMPRESS_SMOLLM2", "/work/cache/smollm2"))
    ap.add_argument("--methods", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", choices=("both", "mergekit", "compress"), default="both",
                    help="mergekit: only fill mergekit's cache; compress: needs the cache (implies --reuse-mergekit)")
    ap.add_argument("--reuse-mergekit", action="store_true", help="use cached mergekit runs of the same recipe")
    ap.add_argument("--scale", action="store_true", help="synthetic 1.17B-parameter Llama checkpoints (see merge_scale)")
    ap.add_argument("--cache", default="/work/bench-cache/merge-scale", help="--scale: where the checkpoints live")
    args = ap.parse_args()

    exe = ensure_venv()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.scale:
        WORK = Path(args.cache)
        models = make_models(WORK, Path(args.model) if Path(args.model).is_dir() else None)
        base, ft = models[0], models[1:]
        all_recipes = scale_recipes(str(base), [str(f) for f in ft], CONFIG["num_hidden_layers"])
        args.tp = disk_throughput(WORK)
        print(f"disk: sequential write {args.tp['write_MBps']} MB/s (fsync), cold read {args.tp['read_MBps']} MB/s",
              file=sys.stderr, flush=True)
        methods = args.methods or "linear,slerp,ties,ties@index"
        out = args.out or str(RESULTS / "merge_scale.json")
    else:
        model = Path(args.model)
        WORK.mkdir(parents=True, exist_ok=True)
        ft = make_variants(model)
        base = WORK / "base"
        if not base.exists():
            shutil.copytree(model, base, ignore=shutil.ignore_patterns("compress.json"))
        layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
        all_recipes = recipes(str(base), [str(f) for f in ft], layers)
        methods = args.methods or ",".join(all_recipes)
        out = args.out or str(RESULTS / "merge_vs_mergekit.json")
    rows = [r for r in (run_method(n, all_recipes, exe, base, env, args) for n in methods.split(",")) if r]
    if args.only == "mergekit":
        return 0
    print_table(rows, args.scale)
    meta = {"model": str(base if args.scale else args.model), "mergekit_version": mergekit_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "recipe_dtype": "dtype float32, out_dtype bfloat16",
            "load": "shared machine: other sessions ran on the same 2 cores; both tools under nice -n 10",
            **({"params": n_params(), "disk": args.tp, "config": CONFIG} if args.scale else
               {"variants": "θ + 0.02·std(θ)·(0.6·shared + 0.8·private) Gaussian directions, bf16"})}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
