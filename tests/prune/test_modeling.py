"""Loading physically pruned checkpoints: `compress.load` (no remote code) and the modeling file
written into the folder (`AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`),
including in a python where `compress` cannot be imported.

Reference: the dense input masked in memory with `compress.prune.mask` (see test_export.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.arch import PRUNED_KEY
from compress.checkpoint import Checkpoint
from compress.errors import CompressError
from compress.model.load import load_model
from compress.prune.export import export_pruned
from tests.prune.test_export import IDS, REMOVED, logits, masked


def test_load_pruned_in_bf16(tiny_llama, tmp_path):
    out = export_pruned(tiny_llama, tmp_path / "out", REMOVED)
    model = load_model(out, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ref = masked(tiny_llama, REMOVED, torch.bfloat16)
    torch.testing.assert_close(logits(model, IDS), logits(ref, IDS), rtol=0, atol=0)


def test_save_pretrained_of_a_loaded_pruned_model(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    src = tiny_models["gemma2"]
    out = export_pruned(src, tmp_path / "out", REMOVED)
    load_model(out, dtype="fp32").save_pretrained(tmp_path / "again")
    ref = logits(masked(src, REMOVED), IDS)
    torch.testing.assert_close(logits(load_model(tmp_path / "again", dtype="fp32"), IDS), ref, rtol=1e-5, atol=1e-5)
    remote = AutoModelForCausalLM.from_pretrained(str(tmp_path / "again"), trust_remote_code=True).eval()
    torch.testing.assert_close(logits(remote, IDS), ref, rtol=1e-5, atol=1e-5)


def test_missing_or_extra_tensors_are_fatal(tiny_llama, tmp_path):
    out = export_pruned(tiny_llama, tmp_path / "out", REMOVED)
    shard = out / "model.safetensors"
    good = load_file(str(shard))
    # A tensor of a block NOT listed as pruned is missing: never initialise it randomly.
    missing = tmp_path / "missing"
    shutil.copytree(out, missing)
    save_file({k: v for k, v in good.items() if k != "model.layers.2.self_attn.q_proj.weight"},
              str(missing / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CompressError, match="refusing to initialise"):
        load_model(missing)
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="refusing to initialise"):
        AutoModelForCausalLM.from_pretrained(str(missing), trust_remote_code=True)
    # The config lists a block as pruned but the files still hold it.
    extra = tmp_path / "extra"
    shutil.copytree(out, extra)
    cfg = json.loads((extra / "config.json").read_text())
    cfg[PRUNED_KEY]["attn"] = [0, 2]
    (extra / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompressError, match="disagree"):
        load_model(extra)
    # A map naming a layer that does not exist.
    cfg[PRUNED_KEY]["attn"] = [7]
    (extra / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompressError, match="names layer 7"):
        load_model(extra)


REMOTE = r"""
import importlib.abc, json, sys
class NoCompress(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "compress" or name.startswith("compress."):
            raise ModuleNotFoundError("compress is not installed here")
sys.meta_path.insert(0, NoCompress())
sys.path = [p for p in sys.path if p not in ("", ".", REPO)]
try:
    import compress  # noqa: F401
    sys.exit("compress is importable")
except ModuleNotFoundError:
    pass
import torch
from transformers import AutoModelForCausalLM
ids = torch.load(sys.argv[2])
res = {}
for folder in sys.argv[3:]:
    m = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.save(m(ids, use_cache=False).logits.float(), folder + "/remote_logits.pt")
        gen = m.generate(ids[:1], max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)[0, ids.shape[1]:]
    res[folder] = {"class": type(m).__name__, "generated": gen.tolist()}
res["compress_loaded"] = sorted(k for k in sys.modules if k == "compress" or k.startswith("compress."))
json.dump(res, open(sys.argv[1], "w"))
"""


def run_without_compress(tmp_path: Path, folders: list[Path], ids: torch.Tensor, new: int = 8) -> dict:
    """Load `folders` with AutoModelForCausalLM(trust_remote_code=True) in a python where compress is not
    importable; each writes its logits on `ids` to remote_logits.pt and greedily generates `new` tokens with
    the cache after ids[:1]."""
    repo = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "remote.py"
    script.write_text(f"REPO = {repo!r}\nNEW = {new}\n" + REMOTE)
    torch.save(ids, tmp_path / "ids.pt")
    res_file = tmp_path / "remote.json"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-I", str(script), str(res_file), str(tmp_path / "ids.pt"),
                        *map(str, folders)], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(res_file.read_text())


def test_remote_code_loads_without_compress(tiny_models, tmp_path):
    # Two structurally different families in a python without compress (each costs seconds of imports);
    # test_export.py::test_physical_export_all_families loads every family's template in-process.
    outs = {fam: export_pruned(tiny_models[fam], tmp_path / fam, REMOVED) for fam in ("llama", "gemma3")}
    res = run_without_compress(tmp_path, list(outs.values()), IDS)
    assert res["compress_loaded"] == []
    for fam, out in outs.items():
        entry = res[str(out)]
        assert entry["class"].startswith("CompressPruned"), (fam, entry)
        ref = masked(tiny_models[fam], REMOVED)
        torch.testing.assert_close(torch.load(out / "remote_logits.pt"), logits(ref, IDS), rtol=1e-5, atol=1e-5)
        seq = IDS[:1]
        with torch.no_grad():  # greedy by full re-forward of the reference, no cache
            for _ in range(8):
                seq = torch.cat([seq, ref(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert entry["generated"] == seq[0, IDS.shape[1]:].tolist(), fam


@pytest.mark.slow
def test_smollm2_physical_export_end_to_end(smollm2, tmp_path):
    """Real SmolLM2-135M-Instruct: attention of layer 0 and a handful of other blocks removed, exported
    physically, loaded both ways; greedy chat answer with the cache equals re-forward without cache.

    (Removing layer 0's attention wrecks SmolLM2's answer - the point here is exact equivalence.)"""
    from compress import load

    removed = [(0, "attn"), (9, "attn"), (14, "attn"), (14, "mlp"), (21, "mlp"), (27, "attn"), (29, "mlp")]
    out = export_pruned(smollm2, tmp_path / "small", removed)
    assert Checkpoint(out).size_on_disk() < Checkpoint(smollm2).size_on_disk()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 29
    assert cfg[PRUNED_KEY] == {"attn": [0, 9, 26], "mlp": [20, 28]}

    model, tok = load(out, dtype="fp32")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    ref = masked(smollm2, removed)  # fp32, dense weights masked in memory
    torch.testing.assert_close(logits(model, prompt), logits(ref, prompt), rtol=1e-5, atol=1e-4)
    new = 12
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)[0, prompt.shape[1]:]
        seq = prompt
        for _ in range(new):  # greedy by full re-forward, no cache, on the masked dense model
            seq = torch.cat([seq, ref(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, seq[0, prompt.shape[1]:]), (tok.decode(cached), tok.decode(seq[0]))
    del ref
    res = run_without_compress(tmp_path, [out], prompt, new)
    assert res["compress_loaded"] == []
    assert res[str(out)]["generated"] == cached.tolist()
    torch.testing.assert_close(torch.load(out / "remote_logits.pt"), logits(model, prompt), rtol=1e-5, atol=1e-4)


def test_dense_config_with_fewer_layers_than_tensors_is_fatal(tiny_llama, tmp_path):
    # A config edited to fewer layers: transformers would drop the extra layers' tensors silently.
    short = tmp_path / "short"
    shutil.copytree(tiny_llama, short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["num_hidden_layers"] -= 1
    (short / "config.json").write_text(json.dumps(cfg))
    last = cfg["num_hidden_layers"]
    with pytest.raises(CompressError, match=rf"no place for \(e\.g\. model\.layers\.{last}\."):
        load_model(short)
    load_model(tiny_llama)  # the untouched folder loads
