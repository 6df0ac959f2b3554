"""Regenerate the README's pictures of the inspection page with headless Chromium.

    python docs/screenshots.py            # writes docs/inspect-resnet50.png and docs/inspect-resnet50-group.png

The first is what a user sees on opening ``prunec inspect torchvision:resnet50 --html``; the second
has stage 2's first block opened and one of its convolutions clicked: the coupling group of its
channels highlighted across the model and the op's details on the right.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _browser import Browser, find_chromium  # noqa: E402


def main() -> None:
    binary = find_chromium()
    if binary is None:
        sys.exit("chromium is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "resnet50.html"
        subprocess.run(
            [sys.executable, "-m", "compiler.cli", "inspect", "torchvision:resnet50", "--no-verify", "--html", str(page)],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with Browser(binary, width=1400, height=1000) as b:
            b.open(page.as_uri())
            if not b.wait_for("document.body.getAttribute('data-ok') === '1'", 20):
                sys.exit("the page did not render")
            b.screenshot(str(ROOT / "docs" / "inspect-resnet50.png"), full_page=False)
            click = "document.querySelector({}).dispatchEvent(new MouseEvent('click'))"
            b.eval(click.format(json.dumps("#graph g.blk[data-block='layer2.0']")))
            b.eval(
                "(function(){var ns=document.querySelectorAll('#graph g.op');for(var i=0;i<ns.length;i++){"
                "if(ns[i].textContent.indexOf('conv3')===0){ns[i].dispatchEvent(new MouseEvent('click'));return;}}})()"
            )
            b.eval("window.scrollTo(0, document.getElementById('sec-graph').offsetTop - 8)")
            b.screenshot(str(ROOT / "docs" / "inspect-resnet50-group.png"), full_page=False)
            problems = b.problems()
            if problems:
                sys.exit(f"page problems: {problems}")
    print("wrote docs/inspect-resnet50.png and docs/inspect-resnet50-group.png")


if __name__ == "__main__":
    main()
