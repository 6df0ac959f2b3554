import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Plans must not depend on the machine the suite runs on: the runtime's channel block (compiler.channel_block,
# measured per machine by default) is pinned to none here; tests/test_channel_block.py tests the measurement.
os.environ.setdefault("PRUNEC_CHANNEL_BLOCK", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run the slow model sweeps too")
    parser.addoption(
        "--slow-slice", action="store_true", default=False, help="run the slow sweeps' CI slice too (tests/_ci_slice.py)"
    )


def pytest_collection_modifyitems(config, items):
    from tests._ci_slice import CI_SLICE

    in_slice = {item.nodeid for item in items} & set(CI_SLICE)
    for item in items:
        if item.nodeid in in_slice:
            item.add_marker(pytest.mark.ci_slice)
    if config.getoption("--runslow") or os.environ.get("PRUNEC_RUNSLOW") == "1":
        return
    slow_slice = config.getoption("--slow-slice") or os.environ.get("PRUNEC_SLOW_SLICE") == "1"
    if slow_slice and not any("::" in arg for arg in config.args):
        # not checked when node ids were given (then only those are collected): a slice entry whose test function
        # was collected but not that parametrization is stale; on the whole suite (what .ci/run runs) every entry
        # must be collected, so a module skipped for a missing package fails the run instead of thinning the slice
        whole = all(os.path.abspath(arg) == os.path.join(ROOT, "tests") for arg in config.args)
        functions = {item.nodeid.split("[")[0] for item in items}
        stale = [n for n in CI_SLICE if n not in in_slice and (whole or n.split("[")[0] in functions)]
        if stale:
            raise pytest.UsageError(f"tests/_ci_slice.py names tests that were not collected: {stale}")
    skip = pytest.mark.skip(reason="slow sweep: run with --runslow (or --slow-slice for the CI slice)")
    for item in items:
        if "slow" in item.keywords and not (slow_slice and item.nodeid in in_slice):
            item.add_marker(skip)
