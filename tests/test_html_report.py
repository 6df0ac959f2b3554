"""The inspection report: new report fields, the JSON schema doc, the HTML page (in a real headless
Chromium), ``Report.to_html`` and ``prunec inspect ... --html``.

The browser tests need Chromium (Debian: ``apt-get install chromium``; ``.ci/run`` installs it); they
are skipped, with the reason, where it is not installed.
"""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _browser import Browser, find_chromium

import compiler
from compiler.html_report import compare_reports, match_layers, render_html, write_html
from frontends.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DOC = ROOT / "docs" / "report-schema.md"


# -- models -----------------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.bn1(self.conv1(x)))))


class SmallNet(nn.Module):
    """Residual blocks, concat, a depthwise conv, a gate, an op the registry does not know (sort), flatten->linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16), Block(16))
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 8, 1))
        self.odd, self.gate = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        y = torch.cat([self.left(x), self.right(x)], dim=1)
        y = y * torch.sigmoid(self.gate(torch.sort(self.odd(x), dim=1)[0]))  # odd's channels go through sort: frozen
        return self.head(torch.flatten(self.pool(y), 1))


def small_net() -> nn.Module:
    """Factory for ``prunec inspect test_html_report:small_net``."""
    torch.manual_seed(0)
    return SmallNet().eval()


X = torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="module")
def small() -> compiler.CompileResult:
    return compiler.compile(small_net(), (X,), ratio=0.5, granularity=1)


@pytest.fixture(scope="module")
def r50():
    """ResNet-50's report, planned but not rewritten (the page needs only the report; this halves the time)."""
    torchvision = pytest.importorskip("torchvision")
    from compiler.options import Options
    from compiler.pipeline import Steps, build_report, plan
    from frontends.torch import load_torch

    model = torchvision.models.resnet50(weights=None).eval()
    traced = load_torch(model, (torch.randn(1, 3, 64, 64),))
    opts = Options(ratio=0.5, verify=False)
    return build_report("ResNet", traced.method, plan(traced.graph, opts, Steps()), None, opts, None, {})


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    with Browser(binary) as b:
        yield b


# -- report fields ----------------------------------------------------------------------------------

OLD_KEYS = {
    "model", "framework", "trace_method", "params_before", "params_after", "macs_before", "macs_after",
    "settings", "layers", "groups", "frozen_ops", "verification", "timings", "macs_ratio", "params_ratio",
}  # fmt: skip


def test_to_dict_only_adds_keys(small):
    d = small.report.to_dict()
    assert OLD_KEYS | {"graph", "channel_free_ops"} <= set(d)
    assert {"name", "target", "in_channels", "out_channels", "macs"} < set(d["layers"][0])
    assert {"params", "kind", "group"} <= set(d["layers"][0])
    old_group = {
        "id",
        "members",
        "channels_before",
        "channels_after",
        "frozen_channels",
        "reasons",
        "saliency",
        "frozen",
    }
    assert old_group < set(d["groups"][0])
    json.dumps(d, allow_nan=False)  # strict JSON: no NaN anywhere


def test_layer_params_match_the_pruned_modules(small):
    rep, modules = small.report, dict(small.model.named_modules())
    original = dict(small_net().named_modules())
    for lr in rep.layers:
        before = sum(p.numel() for p in original[lr.name].parameters(recurse=False))
        after = sum(p.numel() for p in modules[lr.name].parameters(recurse=False))
        assert lr.params == (before, after), lr.name
    bn = sum(p.numel() for m in original.values() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert sum(lr.params[0] for lr in rep.layers) + bn == rep.params_before


def test_groups_carry_saliency_values_removed_and_equalization(small):
    rep, plan = small.report, small.plan
    for g, grp in zip(rep.groups, plan.analysis.groups, strict=True):
        assert len(g.saliency_values) == len(grp.classes)
        vals = [v for v in g.saliency_values if v is not None]
        if vals:
            lo, med, hi = g.saliency
            assert min(vals) == pytest.approx(lo, rel=1e-3) and max(vals) == pytest.approx(hi, rel=1e-3)
            assert statistics.median(vals) == pytest.approx(med, rel=1e-3)
        assert g.channels_before - g.channels_after == sum(int(grp.widths[i]) for i in g.removed)
        assert g.frozen_channels == sum(int(grp.widths[i]) for i in g.frozen_indices)
        assert not set(g.removed) & set(g.frozen_indices)
        assert g.equalization == ("arithmetic_mean" if len(g.members) > 1 else "none")
    residual = next(g for g in rep.groups if "stem.0" in g.members)
    assert {"blocks.0.conv2", "blocks.1.conv2"} <= set(residual.members) and residual.equalization == "arithmetic_mean"
    odd = next(g for g in rep.groups if g.members == ["odd"])
    assert odd.frozen and odd.removed == [] and len(odd.frozen_indices) == 8


def test_graph_view(small):
    rep = small.report
    gv, g = rep.graph, small.plan.analysis.graph
    assert len(gv.nodes) == len(g.ops)
    assert all(0 <= a < b < len(gv.nodes) for a, b in gv.edges) and len(set(gv.edges)) == len(gv.edges)
    assert all(b.parent is None or 0 <= b.parent < len(gv.blocks) for b in gv.blocks)
    blocks = [b.name for b in gv.blocks]
    assert {"stem", "blocks", "blocks.0", "blocks.1", "right"} <= set(blocks)
    by_name = {n.name: n for n in gv.nodes}
    # the residual add of blocks.0 lives in block blocks.0, though it is not a module
    adds = [n for n in gv.nodes if n.kind == "binary" and n.block is not None]
    assert {blocks[n.block] for n in adds} == {"blocks.0", "blocks.1"}
    unknown = [n for n in gv.nodes if n.unknown]
    assert len(unknown) == len(rep.frozen_ops) == 1 and unknown[0].frozen
    assert by_name["odd"].frozen and not by_name["left"].frozen
    assert by_name["left"].channels == rep.layers[by_name["left"].layer].out_channels and by_name["left"].groups == [
        rep.layers[by_name["left"].layer].group
    ]
    assert by_name["cat"].channels == (16, 8) and len(by_name["cat"].groups) == 1  # left, right.1 and gate are coupled
    for n in gv.nodes:
        if n.layer is not None:
            assert rep.layers[n.layer].name == n.name
    edge_names = {(gv.nodes[a].name, gv.nodes[b].name) for a, b in gv.edges}
    assert ("left", "cat") in edge_names and (
        "blocks.1.conv2",
        next(n.name for n in adds if blocks[n.block] == "blocks.1"),
    ) in edge_names


def test_resnet50_graph_view_blocks(r50):
    gv = r50.graph
    names = [b.name for b in gv.blocks]
    assert {"layer1", "layer1.0", "layer4.2", "layer1.0.downsample"} <= set(names)
    types = {b.name: b.type for b in gv.blocks}
    assert types["layer1.0"] == "Bottleneck" and types["layer1"] == "Sequential"
    adds = [n for n in gv.nodes if n.target == "operator.add"]
    assert len(adds) == 16 and all(re.fullmatch(r"layer\d\.\d", names[n.block]) for n in adds)
    assert len(json.dumps(r50.to_dict())) < 400_000  # compact enough to embed in a page


# -- the schema document ----------------------------------------------------------------------------


def _keys(obj, out: set[str]) -> set[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(k)
            _keys(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _keys(v, out)
    return out


def test_schema_doc_describes_every_key(small, r50):
    doc = SCHEMA_DOC.read_text()
    documented = set(re.findall(r"`([a-z_][a-z_ 0-9]*)`", doc))
    keys: set[str] = set()
    for rep in (small.report, r50):
        _keys(rep.to_dict(), keys)
    _keys(compare_reports(small.report, small.report, "x"), keys)
    missing = sorted(keys - documented)
    assert not missing, f"keys of Report.to_dict() not described in {SCHEMA_DOC.name}: {missing}"


# -- the page, without a browser --------------------------------------------------------------------


def test_page_is_self_contained(small):
    page = render_html(small.report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<link" not in page and "@import" not in page and not re.search(r"url\((?!#)", page)  # url(#marker) is local
    assert all("src=" not in tag for tag in re.findall(r"<script[^>]*>", page))
    assert "default-src 'none'" in page  # the CSP forbids any fetch
    data = re.search(r'<script type="application/json" id="prunec-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data)["report"]["model"] == "SmallNet"


def test_page_data_cannot_break_out_of_its_script_tag(small):
    d = small.report.to_dict()
    d["model"] = "</script><script>alert(1)</script>"
    page = render_html(d)
    assert page.count("</script>") == 3 and "<script>alert" not in page


def test_to_html_is_atomic(small, tmp_path, monkeypatch):
    target = tmp_path / "page.html"
    small.report.to_html(target)
    first = target.read_text()
    assert "prunec-data" in first
    import compiler.html_report as hr

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hr.os, "fsync", boom)
    with pytest.raises(RuntimeError):
        small.report.to_html(target)
    assert target.read_text() == first and sorted(os.listdir(tmp_path)) == ["page.html"]


@pytest.mark.parametrize("where", ["missing-dir", "is-a-directory"])
def test_to_html_refuses_unwritable_paths(small, tmp_path, where):
    path = tmp_path / "no" / "page.html" if where == "missing-dir" else tmp_path
    with pytest.raises(InvalidArgumentError, match=re.escape(str(path))):
        write_html(small.report, path)
    assert os.listdir(tmp_path) == []


def test_layers_match_by_module_path_or_order(small):
    rep = small.report
    found, how = match_layers(rep.layers, rep.layers)
    assert how == "name" and found == list(range(len(rep.layers)))
    from dataclasses import replace

    onnx_named = [replace(lr, name="/" + "/".join(_onnx_scope(lr.name)) + "/Conv") for lr in rep.layers]
    found, how = match_layers(rep.layers, onnx_named)
    assert how == "module path" and found == list(range(len(rep.layers)))
    renamed = [replace(lr, name=f"node_{i}") for i, lr in enumerate(rep.layers)]
    assert match_layers(rep.layers, renamed) == (list(range(len(rep.layers))), "order")


def _onnx_scope(path: str) -> list[str]:
    """``blocks.0.conv1`` -> the torch ONNX exporter's scopes ``blocks``, ``blocks.0``, ``conv1``."""
    parts, out = path.split("."), []
    i = 0
    while i < len(parts):
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            out += [parts[i], f"{parts[i]}.{parts[i + 1]}"]
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


# -- the page in a real browser ---------------------------------------------------------------------


def _load(browser: Browser, page: Path) -> None:
    browser.open(page.as_uri())
    assert browser.wait_for("document.body.getAttribute('data-ok') !== '0' || !!window.__prunecErrors", 15)
    errors = browser.eval("document.getElementById('errors').textContent")
    assert errors == "" and browser.eval("document.getElementById('errors').hidden") is True, errors
    assert browser.eval("document.body.getAttribute('data-ok')") == "1"
    assert browser.eval("document.getElementById('status').getAttribute('data-ok')") == "1"
    assert browser.problems() == []


def _count(browser: Browser, selector: str) -> int:
    return browser.eval(f"document.querySelectorAll({json.dumps(selector)}).length")


def _check_page(browser: Browser, report, n_bars_per_layer: int = 1) -> None:
    d = report.to_dict()
    assert _count(browser, "tr.group-row") == len(d["groups"])
    assert _count(browser, "svg.hist") == sum(
        1 for g in d["groups"] if any(v is not None for v in g["saliency_values"])
    )
    assert _count(browser, "tr.layer-row") == len(d["layers"])
    assert _count(browser, "#bars-svg rect.bar") == n_bars_per_layer * len(d["layers"])
    shown = _count(browser, "#graph g.op") + _count(browser, "#graph g.blk")
    assert 0 < shown <= 40  # the default view is small, whatever the model's size
    browser.eval("prunecGraph.expandAll()")
    assert _count(browser, "#graph g.op") == len(d["graph"]["nodes"]) and _count(browser, "#graph g.blk") == 0
    assert _count(browser, "#graph g.op.unknown") == len(d["frozen_ops"])
    assert _count(browser, "#graph path.edge") == len(d["graph"]["edges"])
    browser.eval("prunecGraph.collapseAll()")
    top = browser.eval("document.getElementById('graph-info').textContent")
    browser.eval("prunecGraph.reset()")
    assert f"shown of {len(d['graph']['nodes'])} ops" in top
    assert browser.problems() == []


def test_small_page_in_chromium(small, browser, tmp_path):
    page = tmp_path / "small.html"
    small.report.to_html(page)
    _load(browser, page)
    _check_page(browser, small.report)
    # clicking a closed block opens it; clicking its title bar closes it again
    before = _count(browser, "#graph g.op")
    browser.eval("prunecGraph.collapseAll()")
    n0 = _count(browser, "#graph g.op")
    browser.eval("document.querySelector('#graph g.blk[data-block=\"blocks\"]').dispatchEvent(new MouseEvent('click'))")
    assert _count(browser, "#graph g.blk[data-block='blocks.0']") == 1
    browser.eval(
        "document.querySelector('#graph g.frame[data-block=\"blocks\"] .head').dispatchEvent(new MouseEvent('click'))"
    )
    assert _count(browser, "#graph g.op") == n0 and _count(browser, "#graph g.blk[data-block='blocks']") == 1
    # a click on a group row highlights its ops; a click on an op shows its details
    browser.eval("prunecGraph.expandAll()")
    browser.eval("document.querySelector('tr.group-row[data-group=\"0\"]').click()")
    members = [n for n in small.report.graph.nodes if 0 in n.groups]
    assert _count(browser, "#graph g.op.hl") == len(members) > 0
    browser.eval("document.querySelector('#graph g.op.unknown').dispatchEvent(new MouseEvent('click'))")
    assert "not in the registry" in browser.eval("document.getElementById('details').textContent")
    assert before > 0 and browser.problems() == []


def test_resnet50_page_in_chromium(r50, browser, tmp_path):
    page = tmp_path / "resnet50.html"
    r50.to_html(page)
    assert page.stat().st_size < 600_000
    _load(browser, page)
    _check_page(browser, r50)
    assert _count(browser, "tr.group-row") == len(r50.groups) == 38
    # collapsed by default at the bottleneck blocks; one click opens one
    assert _count(browser, "#graph g.blk[data-block='layer3.4']") == 1
    n = _count(browser, "#graph g.op")
    browser.eval(
        "document.querySelector('#graph g.blk[data-block=\"layer3.4\"]').dispatchEvent(new MouseEvent('click'))"
    )
    assert _count(browser, "#graph g.op") == n + 10 and browser.problems() == []
    if os.environ.get("PRUNEC_SCREENSHOTS"):
        browser.screenshot(os.path.join(os.environ["PRUNEC_SCREENSHOTS"], "resnet50.png"), full_page=False)


def test_comparison_page_in_chromium(small, browser, tmp_path):
    other = compiler.compile(small.model, (X,), ratio=0.0, verify=False).report  # the pruned model, as it is
    page = tmp_path / "compare.html"
    small.report.to_html(page, compare=other)
    _load(browser, page)
    _check_page(browser, small.report, n_bars_per_layer=2)
    assert _count(browser, "#layers-table td.same") == len(small.report.layers)
    assert _count(browser, "#layers-table td.diff") == 0
    # a long name for the pruned model is cut in the summary card and the bar chart's legend, full in their titles
    long_name = "/models/experiments/2026-12-03/run-17/checkpoints/small-net-pruned-at-half.onnx"
    write_html(small.report, page, compare=other, compare_name=long_name)
    _load(browser, page)
    browser.eval("prunecGraph.expandAll()")
    assert browser.eval(TRUNCATED_WITHOUT_TITLE_JS) == []
    assert browser.eval(f"document.querySelectorAll('[title={json.dumps(long_name)}]').length") >= 1
    assert browser.eval(
        f"Array.from(document.querySelectorAll('#bars-svg text title')).some(function(t){{return t.textContent.indexOf({json.dumps(long_name)})>=0;}})"
    )


def test_a_script_error_is_shown_not_hidden(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(render_html({"model": "broken"}))  # no groups, no layers: the script fails
    browser.open(page.as_uri())
    assert browser.wait_for("!!window.__prunecErrors", 10)
    assert browser.eval("document.body.getAttribute('data-ok')") == "0"
    assert browser.eval("document.getElementById('errors').hidden") is False
    assert "script error" in browser.eval("document.getElementById('errors').textContent")


# -- prunec inspect ---------------------------------------------------------------------------------


def _main(argv, capsys):
    from compiler.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_inspect_json_and_html(tmp_path, capsys):
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    code, out, err = _main(
        ["inspect", "test_html_report:small_net", "--input-shape", "1,3,16,16", "--json", js, "--html", page], capsys
    )
    assert code == 0, err
    assert "equalization" in out and "params before" in out and f"wrote {page}" in out
    data = json.loads(js.read_text())
    assert data["graph"]["nodes"] and data["groups"][0]["saliency_values"]
    embedded = json.loads(re.search(r'id="prunec-data">(.*?)</script>', page.read_text(), re.S).group(1))["report"]
    assert embedded["groups"] == data["groups"] and embedded["graph"] == data["graph"]
    assert sorted(os.listdir(tmp_path)) == ["r.html", "r.json"]


@pytest.fixture(scope="module")
def onnx_inspect(tmp_path_factory):
    """``prunec inspect`` of a model against its pruned ONNX export, and of the ONNX file on its own."""
    pytest.importorskip("onnx")
    import contextlib
    import io

    import onnx

    from compiler.cli import main

    tmp = tmp_path_factory.mktemp("onnx")
    src, pruned = tmp / "m.onnx", tmp / "pruned.onnx"
    torch.onnx.export(small_net(), (X,), str(src), opset_version=17, dynamo=False)
    onnx.save(compiler.compile(str(src), ratio=0.5, granularity=1).model, str(pruned))
    runs = {}
    for name, argv in {
        "compare": [
            "inspect",
            "test_html_report:small_net",
            pruned,
            "--input-shape",
            "1,3,16,16",
            "--html",
            tmp / "cmp.html",
        ],
        "onnx": ["inspect", src, "--html", tmp / "onnx.html", "--json", tmp / "onnx.json"],
    }.items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
        runs[name] = (code, out.getvalue(), err.getvalue())
    return tmp, pruned, runs


def _embedded(page: Path) -> dict:
    return json.loads(re.search(r'id="prunec-data">(.*?)</script>', page.read_text(), re.S).group(1))


def test_cli_inspect_compares_with_a_pruned_onnx_file(onnx_inspect):
    tmp, pruned, runs = onnx_inspect
    code, out, err = runs["compare"]
    assert code == 0, err
    assert f"compared with {pruned}" in out and "matched by module path, 0 differ from this plan" in out
    data = _embedded(tmp / "cmp.html")
    n = len(data["report"]["layers"])
    assert data["compare"]["matched"] == n and data["compare"]["matched_by"] == "module path"
    for lr, other in zip(data["report"]["layers"], data["compare"]["layers"], strict=True):
        assert other["out_channels"] == lr["out_channels"][1] and other["in_channels"] == lr["in_channels"][1]


def test_cli_inspect_an_onnx_file(onnx_inspect):
    tmp, _, runs = onnx_inspect
    code, out, err = runs["onnx"]
    assert code == 0, err
    data = json.loads((tmp / "onnx.json").read_text())
    assert data["framework"] == "onnx" and data["graph"]["nodes"] and data["frozen_ops"][0]["target"] == "TopK"
    assert _embedded(tmp / "onnx.html")["report"] == json.loads(json.dumps(data))
    blocks = {b["name"] for b in data["graph"]["blocks"]}
    assert {"/blocks", "/blocks/blocks.0"} <= blocks  # ONNX name scopes become blocks


def test_onnx_pages_in_chromium(onnx_inspect, browser):
    tmp, _, _ = onnx_inspect
    _load(browser, tmp / "cmp.html")
    assert _count(browser, "#layers-table td.same") == _count(browser, "tr.layer-row") > 0
    assert _count(browser, "#bars-svg rect.bar") == 2 * _count(browser, "tr.layer-row")
    _load(browser, tmp / "onnx.html")
    _check_page(browser, _Dict(json.loads((tmp / "onnx.json").read_text())))


class _Dict:
    """A report given as its dict (what ``_check_page`` reads)."""

    def __init__(self, d: dict) -> None:
        self.d = d

    def to_dict(self) -> dict:
        return self.d


@pytest.mark.parametrize(
    "case",
    ["html-missing-dir", "html-is-a-directory", "missing-model-file", "bad-spec", "missing-pruned-file", "same-file"],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    js, page = out_dir / "r.json", out_dir / "r.html"
    spec, extra = "test_html_report:small_net", []
    if case == "html-missing-dir":
        page = out_dir / "no" / "such" / "r.html"
    elif case == "html-is-a-directory":
        page = out_dir
    elif case == "missing-model-file":
        spec = str(tmp_path / "missing.onnx")
    elif case == "bad-spec":
        spec = "not a spec"
    elif case == "missing-pruned-file":
        extra = [str(tmp_path / "missing-pruned.onnx")]
    elif case == "same-file":
        js = page
    code, out, err = _main(
        ["inspect", spec, *extra, "--input-shape", "1,3,16,16", "--json", js, "--html", page], capsys
    )
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("  [")]
    assert len(lines) == 1 and lines[0].startswith("prunec: error:") and "Traceback" not in err, err
    assert os.listdir(out_dir) == []


def test_printed_report_says_how_to_see_every_group_and_layer():
    """print(result.report) cuts long tables; the cut says how to see all of them."""
    import torch
    import torchvision

    r = compiler.compile(torchvision.models.resnet50(weights=None), (torch.randn(1, 3, 32, 32),), verify=False)
    text = str(r.report)
    assert len(r.report.groups) > 30 and len(r.report.layers) > 40
    assert "more groups (all of them: report.groups_table())" in text
    assert "more layers (all of them: report.layers_table())" in text
    assert len(r.report.groups_table().splitlines()) > len(r.report.groups)


# -- a language model: mask arithmetic is no unknown op ------------------------------------------------


def tiny_llama(layers: int = 2):
    """A LLaMA built from a tiny config (no download) and its token ids."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval(), (torch.randint(0, 96, (1, 12)),)


@pytest.fixture(scope="module")
def llama():
    model, ids = tiny_llama()
    return compiler.compile(model, ids, ratio=0.5, verify=False).report


MASK_OPS = {"aten.diff.default", "aten.ne.Scalar", "aten.index.Tensor", "aten.le.Tensor", "aten.eq.Tensor"}


def test_llama_mask_ops_are_not_counted_as_unknown(llama):
    """The causal mask's integer arithmetic touches no channel: it freezes nothing and is not an unknown op."""
    assert llama.frozen_ops == [], [o.target for o in llama.frozen_ops]
    assert MASK_OPS <= {o.target for o in llama.channel_free_ops}
    assert "unknown ops" not in llama.summary() and "froze nothing" in llama.summary()
    nodes = llama.graph.nodes
    assert not any(n.unknown for n in nodes)
    side = {n.target for n in nodes if n.side}
    assert MASK_OPS | {"aten.arange.default", "aten.cumsum.default"} <= side
    # every layer and every op carrying channels stays in the picture
    assert not any(n.side for n in nodes if n.layer is not None or n.channels is not None)
    assert sum(n.side for n in nodes) < len(nodes) // 4


def test_an_unknown_op_on_channels_still_counts(small):
    """torch.sort over a conv's channels froze them: reported, drawn as unknown, not a side op."""
    rep = small.report
    assert [o.target for o in rep.frozen_ops] == ["torch.sort"] and rep.channel_free_ops == []
    (node,) = [n for n in rep.graph.nodes if n.unknown]
    assert node.frozen and not node.side
    assert not any(n.side for n in rep.graph.nodes)  # an image model computes everything from channels


# -- the page's layout in Chromium: width used, zoom, no cut text without its full text, colours -----

TRUNCATED_WITHOUT_TITLE_JS = r"""
(function(){
  function own(e){var s="";e.childNodes.forEach(function(c){if(c.nodeType===3)s+=c.nodeValue;});return s.trim();}
  function titleOf(e){
    if(e.getAttribute("title"))return e.getAttribute("title");
    for(var i=0;i<e.children.length;i++){if(e.children[i].tagName.toLowerCase()==="title")return e.children[i].textContent;}
    return null;
  }
  var bad=[];
  document.querySelectorAll("body *").forEach(function(e){
    if(e.closest("title,script,style")||!e.getClientRects().length)return;
    var text=own(e);if(!text)return;
    var cut=text.indexOf("\u2026")>=0;
    if(!(e instanceof SVGElement)){
      var cs=getComputedStyle(e);
      if((cs.textOverflow==="ellipsis"||cs.overflowX==="hidden"||cs.overflowX==="clip")&&e.scrollWidth>e.clientWidth+1)cut=true;
    }
    if(!cut)return;
    var t=titleOf(e), pieces=text.split("\u2026").map(function(s){return s.trim();}).filter(Boolean);
    if(!t||!pieces.every(function(p){return t.indexOf(p)>=0;}))bad.push(text+"  [title: "+t+"]");
  });
  return bad;
})()
"""

GRAPH_WIDTH_JS = """(function(){var s=document.getElementById('graph-svg').getBoundingClientRect(),
  p=document.getElementById('graph');return [s.width,p.clientWidth];})()"""


def _hsl(rgb: str) -> tuple[float, float]:
    """Hue (degrees) and saturation of a CSS ``rgb(r, g, b)`` or ``#rrggbb`` colour."""
    import colorsys

    if rgb.startswith("#"):
        r, g, b = (int(rgb[i : i + 2], 16) for i in (1, 3, 5))
    else:
        r, g, b = (float(x) for x in re.findall(r"[\d.]+", rgb)[:3])
    h, _, s = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
    return h * 360, s


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


def _group_colours(browser: Browser) -> list[str]:
    return browser.eval(
        """(function(){var out=[];
        document.querySelectorAll('#groups-table .sw').forEach(function(e){out.push(getComputedStyle(e).backgroundColor);});
        document.querySelectorAll('#graph g.op rect.box, #graph g.blk rect').forEach(function(e){out.push(getComputedStyle(e).fill);});
        return out;})()"""
    )


def _check_layout(browser: Browser, label: str) -> None:
    svg_w, panel_w = browser.eval(GRAPH_WIDTH_JS)
    assert svg_w >= 0.7 * panel_w, f"{label}: the graph is {svg_w:.0f} px wide in a {panel_w} px panel"
    bad = browser.eval(TRUNCATED_WITHOUT_TITLE_JS)
    assert bad == [], f"{label}: cut text without its full text in a title: {bad[:5]}"
    warn = browser.eval("getComputedStyle(document.documentElement).getPropertyValue('--bad').trim()")
    warn_hue, _ = _hsl(warn)
    clash = []
    for colour in set(_group_colours(browser)):
        if colour.startswith(("rgb", "#")):
            hue, sat = _hsl(colour)
            if sat > 0.15 and _hue_distance(hue, warn_hue) < 35:
                clash.append(colour)
    assert clash == [], f"{label}: group colours too close to the warning colour {warn}: {clash}"


def test_resnet50_page_layout_in_chromium(r50, browser, tmp_path):
    page = tmp_path / "resnet50.html"
    r50.to_html(page)
    _load(browser, page)
    _check_layout(browser, "default view")
    browser.eval("document.querySelector('tr.group-row[data-group=\"0\"]').click()")  # a group selected
    _check_layout(browser, "group 0 selected")
    browser.eval("prunecGraph.expandAll()")
    bad = browser.eval(TRUNCATED_WITHOUT_TITLE_JS)
    assert bad == [], f"expanded: cut text without its full text in a title: {bad[:5]}"
    # zoomable: buttons, Ctrl+wheel and keys scale the picture; Fit brings it back to the panel
    browser.eval("prunecGraph.reset()")
    fit = browser.eval("document.getElementById('graph-svg').getBoundingClientRect().width")
    browser.eval("document.getElementById('btn-zoom-in').click()")
    wider = browser.eval("document.getElementById('graph-svg').getBoundingClientRect().width")
    assert wider == pytest.approx(fit * 1.25, rel=0.02)
    browser.eval(
        "document.getElementById('graph').dispatchEvent(new WheelEvent('wheel',"
        "{deltaY:300,ctrlKey:true,clientX:300,clientY:300,bubbles:true,cancelable:true}))"
    )
    assert browser.eval("document.getElementById('graph-svg').getBoundingClientRect().width") < wider * 0.8
    browser.eval("document.getElementById('graph').dispatchEvent(new KeyboardEvent('keydown',{key:'0'}))")
    assert browser.eval("document.getElementById('graph-svg').getBoundingClientRect().width") == pytest.approx(
        fit, rel=0.01
    )
    assert browser.problems() == []


def test_llama_page_folds_mask_arithmetic_in_chromium(llama, browser, tmp_path):
    page = tmp_path / "llama.html"
    llama.to_html(page)
    _load(browser, page)
    _check_layout(browser, "llama default view")
    card = browser.eval(
        "Array.from(document.querySelectorAll('.card')).filter(function(c){return c.querySelector('.k').textContent==='unknown ops';})"
        ".map(function(c){return [c.querySelector('.v').textContent,c.classList.contains('bad')];})[0]"
    )
    assert card == ["0", False]
    n_side = sum(n.side for n in llama.graph.nodes)
    browser.eval("prunecGraph.expandAll()")
    assert _count(browser, "#graph g.op.unknown") == 0 and _count(browser, "#graph g.op.side") == 0
    assert _count(browser, "#graph g.op") == len(llama.graph.nodes) - n_side
    browser.eval("prunecGraph.toggleSide()")  # the side computations stay reachable
    browser.eval("prunecGraph.expandAll()")
    assert _count(browser, "#graph g.op.side") == n_side and _count(browser, "#graph g.op") == len(llama.graph.nodes)
    assert _count(browser, "#graph g.op.unknown") == 0
    assert _count(browser, "#channel-free tr.free-row") == len(llama.channel_free_ops) > 0
    browser.eval("prunecGraph.reset()")  # the default view folds them again
    assert _count(browser, "#graph g.op.side") == 0 and "side ops (masks, positions) folded away" in browser.eval(
        "document.getElementById('graph-info').textContent"
    )
    assert browser.problems() == []
