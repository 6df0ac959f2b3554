"""``prunec inspect`` of a model that takes token ids: a factory returning ``(model, example_inputs)``
(a tuple or a dict of keyword inputs), and ``--inputs FILE.npz`` (dtypes kept). A LLaMA built from a
tiny config, no download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.model_inputs import positional_inputs, split_factory_result, torch_inputs_from_file
from frontends.errors import InvalidArgumentError

pytest.importorskip("transformers")

ROOT = str(Path(__file__).resolve().parent.parent)

FACTORY = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def build():
    return model(), (torch.randint(0, 96, (1, 12)),)


def build_kwargs():
    ids = torch.randint(0, 96, (1, 12))
    return model(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build_three():
    return model(), (torch.randint(0, 96, (1, 12)),), "extra"
"""


@pytest.fixture
def lm_dir(tmp_path, monkeypatch):
    """A folder holding lm_factory.py, made the current folder (``prunec inspect lm_factory:build`` imports from it)."""
    (tmp_path / "lm_factory.py").write_text(FACTORY)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("lm_factory", None)


def _main(argv, capsys):
    from compiler.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _ids(shape=(1, 12)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 96, shape).astype(np.int64)


def _assert_llama_report(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["model"] == "LlamaForCausalLM" and data["framework"] == "torch"
    kinds = {lr["kind"] for lr in data["layers"]}
    assert {"embedding", "linear"} <= kinds and data["macs_after"] < data["macs_before"]
    assert data["verification"]["passed"]
    return data


@pytest.mark.parametrize("factory", ["build", "build_kwargs"])
def test_factory_returning_model_and_token_ids(lm_dir, factory, capsys):
    js = lm_dir / "out" / "r.json"
    code, out, err = _main(["inspect", f"lm_factory:{factory}", "--json", js], capsys)
    assert code == 0, err
    assert "int64[1, 12]" in err  # the progress line names the inputs it analyses
    _assert_llama_report(js)


@pytest.mark.parametrize("named", [False, True])
def test_inputs_file_keeps_int64_token_ids(lm_dir, named, capsys):
    """``lm_factory:model`` returns the model alone; the token ids come from the file, by order or by name."""
    npz = lm_dir / "ids.npz"
    if named:
        np.savez(npz, input_ids=_ids(), attention_mask=np.ones((1, 12), dtype=np.int64))
    else:
        np.savez(npz, _ids())
    js = lm_dir / "out" / "r.json"
    code, out, err = _main(["inspect", "lm_factory:model", "--inputs", npz, "--json", js], capsys)
    assert code == 0, err
    assert "int64[1, 12]" in err
    _assert_llama_report(js)


def test_inputs_file_from_a_subprocess(lm_dir):
    """The installed command line, as a user runs it from the folder that holds the factory."""
    np.savez(lm_dir / "ids.npz", input_ids=_ids())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "compiler.cli", "inspect", "lm_factory:model", "--inputs", "ids.npz", "--no-verify",
         "--html", "out/r.html"],
        capture_output=True, text=True, timeout=600, env=env, cwd=lm_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "LlamaForCausalLM" in proc.stdout and (lm_dir / "out" / "r.html").exists()
    assert "unknown ops" not in proc.stdout  # the causal mask's integer ops froze nothing


def _bad_file(case: str, d: Path) -> str:
    path = d / f"{case}.npz"
    if case == "missing":
        return str(d / "no-such.npz")
    if case == "not-npz":
        path.write_text("token ids, not an archive")
    elif case == "npy":
        path = d / "ids.npy"
        np.save(path, _ids())
    elif case == "empty":
        np.savez(path)
    elif case == "scalar":
        np.savez(path, np.int64(3))
    elif case == "object":
        np.savez(path, np.array([{"a": 1}], dtype=object))
    elif case == "strings":
        np.savez(path, np.array(["hello"]))
    elif case == "unknown-name":
        np.savez(path, tokens=_ids())
    elif case == "gap":
        np.savez(path, position_ids=_ids())
    elif case == "too-many":
        np.savez(path, *[_ids()] * 40)
    return str(path)


@pytest.mark.parametrize(
    "case", ["missing", "not-npz", "npy", "empty", "scalar", "object", "strings", "unknown-name", "gap", "too-many"]
)
def test_bad_inputs_file_is_one_line_exit_2_and_writes_nothing(lm_dir, case, capsys):
    path = _bad_file(case, lm_dir)
    before = Path(path).read_bytes() if os.path.exists(path) else None
    code, out, err = _main(
        ["inspect", "lm_factory:model", "--inputs", path, "--json", lm_dir / "out" / "r.json"], capsys
    )
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("  [")]
    assert len(lines) == 1 and lines[0].startswith("prunec: error: --inputs"), err
    assert os.listdir(lm_dir / "out") == []
    assert (Path(path).read_bytes() if os.path.exists(path) else None) == before


def test_inputs_and_input_shape_together_are_refused(lm_dir, capsys):
    np.savez(lm_dir / "ids.npz", _ids())
    code, _, err = _main(["inspect", "lm_factory:model", "--inputs", "ids.npz", "--input-shape", "1,12"], capsys)
    assert code == 2 and "not both" in err


def test_factory_returning_three_things_is_refused(lm_dir, capsys):
    code, _, err = _main(["inspect", "lm_factory:build_three"], capsys)
    assert code == 2 and "return a model, or (model, example_inputs)" in err


# -- the pieces -----------------------------------------------------------------------------------


class TwoInputs(torch.nn.Module):
    def forward(self, x, mask=None, scale=None):
        return x


def test_keyword_inputs_follow_forward_order():
    x, m = torch.ones(1), torch.zeros(1)
    assert positional_inputs(TwoInputs(), {"mask": m, "x": x}, "here") == (x, m)
    with pytest.raises(InvalidArgumentError, match="gives 'mask' but not 'x'"):
        positional_inputs(TwoInputs(), {"mask": m}, "here")
    with pytest.raises(InvalidArgumentError, match="'y' not an argument of forward"):
        positional_inputs(TwoInputs(), {"y": m}, "here")


def test_factory_result_forms():
    model, x = TwoInputs(), torch.ones(2)
    assert split_factory_result(model, "s") == (model, None)
    assert split_factory_result((model, x), "s") == (model, (x,))
    assert split_factory_result([model, [x, x]], "s") == (model, (x, x))
    assert split_factory_result((model, {"x": x}), "s") == (model, (x,))


def test_inputs_file_dtypes_are_kept(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, mask=np.ones((1, 3), dtype=bool), x=np.arange(3, dtype=np.int32).reshape(1, 3))
    x, mask = torch_inputs_from_file(str(path), TwoInputs())
    assert x.dtype == torch.int32 and mask.dtype == torch.bool and x.tolist() == [[0, 1, 2]]


class Embed(torch.nn.Module):
    """Token ids in, channels out: an ONNX model whose input is int64."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc1, self.fc2 = torch.nn.Embedding(50, 16), torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


@pytest.mark.parametrize("named", [False, True])
def test_inputs_file_for_an_onnx_model(tmp_path, named, capsys):
    src = tmp_path / "embed.onnx"
    torch.onnx.export(
        Embed().eval(), (torch.zeros(1, 6, dtype=torch.long),), str(src), input_names=["ids"], dynamo=False
    )
    npz = tmp_path / "ids.npz"
    ids = np.random.default_rng(0).integers(0, 50, (1, 6)).astype(np.int64)
    np.savez(npz, **({"ids": ids} if named else {"arr_0": ids}))
    js = tmp_path / "r.json"
    code, _, err = _main(["inspect", src, "--inputs", npz, "--json", js], capsys)
    assert code == 0, err
    data = json.loads(js.read_text())
    assert data["framework"] == "onnx" and data["verification"]["passed"] and data["macs_after"] < data["macs_before"]
    np.savez(npz, tokens=ids)
    code, _, err = _main(["inspect", src, "--inputs", npz], capsys)
    assert code == 2 and "'tokens' names no input of the model (ids)" in err


@pytest.mark.parametrize("case", ["float-ids", "ids-out-of-vocabulary"])
def test_inputs_the_model_cannot_run_are_one_line_exit_2(lm_dir, case, capsys):
    """Arrays that read well but that the model cannot take: the trace fails, named in one line."""
    ids = _ids().astype(np.float32) if case == "float-ids" else _ids() + 1000
    np.savez(lm_dir / "ids.npz", input_ids=ids)
    code, out, err = _main(["inspect", "lm_factory:model", "--inputs", "ids.npz", "--json", "out/r.json"], capsys)
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("  [")]
    assert len(lines) == 1 and lines[0].startswith("prunec: error:") and "embed" in lines[0], err
    assert os.listdir(lm_dir / "out") == []
