"""Re-measure the WikiText-2 column of bench/results/prune_quality.json with the exact protocol.

    python bench/prune_quality_wikitext.py [--model /work/models/smollm2] [--check-old dense,sleb@0.1]

Every row's recorded removal sequence is exported as a real pruned checkpoint (`compress prune`'s
exporter, as bench/prune_zeroshot.py does) and its perplexity measured with `compress.perplexity` on
wiki.test.raw, read as the HF `wikitext-2-raw-v1` rows (each line with its "\\n", blank lines "")
joined with "\\n\\n", on the benchmark's windows (20 x 512, fp32). Rows with the same removals share
one measurement. The search, the calibration and held-out perplexities are not touched.

--check-old also measures the listed rows with the text the benchmark used before (the lines
without their "\\n", blank lines " ", joined with "\\n\\n") and prints them beside the recorded
values: the re-export reproduces the recorded figures, so the change of the column is the protocol.
Writes the new values into the JSON (the old ones kept as `wikitext2_ppl_before`) with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
DATA = Path(os.environ.get("COMPRESS_SHARED", ROOT.parent / "shared")) / "data"
WIKI = DATA / "wikitext-2-raw" / "wiki.test.raw"


def old_protocol_windows(tok, seq_len: int, n: int):
    """The windows of the reader before the fix: lines split on "\\n" (newline dropped), re-joined."""
    from compress.data import pack_windows

    lines = WIKI.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    ids = tok("\n\n".join(lines), return_tensors="pt", return_attention_mask=False)["input_ids"][0]
    return pack_windows(ids, seq_len)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", default=str(ROOT / "bench" / "results" / "prune_quality.json"))
    ap.add_argument("--model", default=os.environ.get("COMPRESS_SMOLLM2", "/work/models/smollm2"))
    ap.add_argument("--check-old", default="dense,sleb@0.1,blockpruner@0.2")
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    from prune_zeroshot import removed_blocks, row_key

    import compress
    from compress.eval.ppl import perplexity
    from compress.progress import set_quiet
    from compress.prune.export import export_pruned

    set_quiet(True)
    qfile = Path(args.quality)
    quality = json.loads(qfile.read_text())
    settings = quality["settings"]
    seq_len, n = settings["eval_seq_len"], settings["eval_windows"]
    check = set(filter(None, args.check_old.split(",")))
    work = Path(tempfile.mkdtemp(prefix="prune_wiki_"))
    measured: dict[tuple, float] = {}
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    try:
        for row in quality["rows"]:
            key = row_key(row)
            blocks = tuple(sorted(removed_blocks(row)))
            path = Path(args.model)
            if blocks not in measured or key in check:
                if blocks:
                    path = work / key.replace("@", "_")
                    if not path.exists():
                        export_pruned(args.model, path, list(blocks))
            if blocks not in measured:
                res = compress.perplexity(path, WIKI, seq_len=seq_len, max_windows=n, dtype="fp32")
                measured[blocks] = res["ppl"]
                text_format = res["text_format"]
            old = row.get("wikitext2_ppl_before", row["wikitext2_ppl"])
            line = f"{key}: {old:.3f} -> {measured[blocks]:.3f}"
            if key in check:
                model, tok = compress.load(path, dtype="fp32")
                again = perplexity(model, old_protocol_windows(tok, seq_len, n), batch_size=4).ppl
                row["wikitext2_ppl_before_reproduced"] = again
                line += f"  (old protocol re-measured here: {again:.3f})"
            row["wikitext2_ppl_before"] = old
            row["wikitext2_ppl"] = measured[blocks]
            print(line, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    quality["wikitext2_remeasure"] = {
        "date": time.strftime("%Y-%m-%d"),
        "text_format": text_format,
        "windows": f"{n} x {seq_len}", "dtype": "fp32", "device": "cpu",
        "how": "each row's removals exported as a real pruned checkpoint, compress.perplexity on wiki.test.raw",
        "wall_seconds": round(wall), "cpu_seconds": round(cpu),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "note": args.note or "2-core CPU shared with other jobs (times only; perplexity is deterministic)",
    }
    qfile.write_text(json.dumps(quality, indent=1, default=str) + "\n")
    print(f"wrote {qfile} ({wall:.0f} s wall, {cpu:.0f} s CPU)")


if __name__ == "__main__":
    main()
