"""Hostile and broken ONNX files, shared by tests/test_hostile_onnx.py and
benchmarks/fuzz_onnx_atheris.py (its seed cases).

Each case writes files into a fresh folder ``root`` and returns the path of the model to
load. ``root/secret.bin`` (created by :func:`make_case`) sits *outside* the model's folder
``root/model``: external data that reaches it must be refused, never read. A case is either
refused (a typed prunec error) or, for ``CUSTOM_OP``, accepted with its group frozen.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["CASES", "EXTERNAL_CASES", "ACCEPTED", "SECRET", "base_model", "make_case", "with_external"]

SECRET = b"\x00" * 4 * 8 * 16 * 64  # enough bytes for any tensor of the base model
Case = Callable[[str], str]


def base_model(opset: int = 17) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(16) -> Relu -> Conv(4): one prunable group of 16 channels."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 16, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]
    g = helper.make_graph(
        nodes,
        "base",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w1, w2],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def _save(m: onnx.ModelProto | bytes, root: str, name: str = "model.onnx") -> str:
    folder = os.path.join(root, "model")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(m if isinstance(m, bytes) else m.SerializeToString())
    return path


def with_external(location: str, offset: int = 0, length: int | None = None) -> onnx.ModelProto:
    """The base model with ``w1`` declared as external data at ``location``."""
    m = base_model()
    t = m.graph.initializer[0]
    n = t.ByteSize()
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length if length is not None else 16 * 27 * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    assert n > 0
    return m


def _truncated(root: str) -> str:
    data = base_model().SerializeToString()
    return _save(data[: len(data) // 2], root)


def _no_opset(root: str) -> str:
    m = base_model()
    del m.opset_import[:]
    return _save(m, root)


def _custom_domain_only(root: str) -> str:
    m = base_model()
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return _save(m, root)


def _opset(v: int) -> Case:
    def case(root: str) -> str:
        m = base_model()
        m.opset_import[0].version = v
        return _save(m, root)

    return case


def _dangling(root: str) -> str:
    m = base_model()
    m.graph.node[1].input[0] = "nowhere"
    return _save(m, root)


def _cycle(root: str) -> str:
    m = base_model()
    # relu reads conv2's output and conv2 reads relu's: r -> y -> r
    m.graph.node[1].input[0] = "y2"
    m.graph.node.append(helper.make_node("Relu", ["y"], ["y2"], name="back"))
    return _save(m, root)


def _huge_input(root: str) -> str:
    m = base_model()
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, [1, 3, 1 << 40, 1 << 40], strict=True):
        d.dim_value = v
    for d, v in zip(m.graph.output[0].type.tensor_type.shape.dim, [1, 4, 1 << 40, 1 << 40], strict=True):
        d.dim_value = v
    return _save(m, root)


def _inconsistent_shape(root: str) -> str:
    """The declared output shape contradicts the ops (found by the atheris fuzzer: crashed the rewrite's checker)."""
    m = base_model()
    m.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 10
    return _save(m, root)


def _conv_channels_mismatch(root: str) -> str:
    """conv2 reads conv1's 16 channels with a weight for 3 (shape inference lets it through; found by atheris)."""
    m = base_model()
    m.graph.node[2].input[1] = "w1"
    return _save(m, root)


def _huge_initializer(root: str) -> str:
    m = base_model()
    t = m.graph.initializer[1]
    t.ClearField("raw_data")
    del t.dims[:]
    t.dims.extend([1 << 31, 1 << 31, 1, 1])  # declares 2^62 floats, holds none
    return _save(m, root)


def _external(location: str, **kw: int) -> Case:
    def case(root: str) -> str:
        return _save(with_external(location, **kw), root)

    return case


def _symlink_file(root: str) -> str:
    path = _save(with_external("weights.bin"), root)
    os.symlink(os.path.join(root, "secret.bin"), os.path.join(root, "model", "weights.bin"))
    return path


def _symlink_dir(root: str) -> str:
    path = _save(with_external("data/secret.bin"), root)
    os.symlink(root, os.path.join(root, "model", "data"))  # model/data -> root (outside the model's folder)
    return path


def _symlink_model(root: str) -> str:
    """The model file itself is a link into another folder; its data is looked up beside the link's target."""
    other = os.path.join(root, "elsewhere")
    os.makedirs(other)
    real = os.path.join(other, "real.onnx")
    with open(real, "wb") as f:
        f.write(with_external("../secret.bin").SerializeToString())
    os.makedirs(os.path.join(root, "model"), exist_ok=True)
    link = os.path.join(root, "model", "model.onnx")
    os.symlink(real, link)
    return link


def _custom_op(root: str) -> str:
    """conv1 -> Relu -> com.example.Mystery -> conv2 -> Relu -> conv3: the Mystery's group freezes, conv2's is pruned."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w1", (16, 3, 3, 3)), ("w2", (16, 16, 3, 3)), ("w3", (4, 16, 1, 1)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
        helper.make_node("Mystery", ["b"], ["c"], name="mystery", domain="com.example"),
        helper.make_node("Conv", ["c", "w2"], ["d"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["e"], name="relu2"),
        helper.make_node("Conv", ["e", "w3"], ["y"], name="conv3"),
    ]
    g = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
        value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 16, 8, 8])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)], ir_version=8)
    return _save(m, root)


EXTERNAL_CASES: dict[str, Case] = {
    "external_absolute": _external("/etc/passwd"),
    "external_absolute_secret": lambda root: _external(os.path.join(root, "secret.bin"))(root),
    "external_dotdot": _external("../secret.bin"),
    "external_nested_dotdot": _external("sub/../../secret.bin"),
    "external_deep_dotdot": _external("a/b/../../../secret.bin"),
    "external_backslash_dotdot": _external("..\\secret.bin"),
    "external_windows_drive": _external("C:\\secret.bin"),
    "external_unc": _external("\\\\server\\share\\secret.bin"),
    "external_symlink_file": _symlink_file,
    "external_symlink_dir": _symlink_dir,
    "external_via_symlinked_model": _symlink_model,
    "external_missing_location": _external(""),
    "external_missing_file": _external("nope.bin"),
    "external_length_past_end": lambda root: _external("w.bin", length=1 << 40)(root) if _touch(root, "w.bin") else "",
    "external_negative_offset": lambda root: _external("w.bin", offset=-4)(root) if _touch(root, "w.bin") else "",
    "external_is_folder": lambda root: _external("dir")(root) if os.makedirs(os.path.join(root, "model", "dir")) is None else "",
}


def _touch(root: str, name: str) -> bool:
    os.makedirs(os.path.join(root, "model"), exist_ok=True)
    with open(os.path.join(root, "model", name), "wb") as f:
        f.write(b"\x00" * 64)
    return True


CASES: dict[str, Case] = {
    "empty_file": lambda root: _save(b"", root),
    "not_protobuf_text": lambda root: _save(b"this is not an ONNX model\n", root),
    "not_protobuf_binary": lambda root: _save(bytes(range(256)) * 4, root),
    "truncated": _truncated,
    "truncated_one_byte": lambda root: _save(base_model().SerializeToString()[:-1], root),
    "no_opset_import": _no_opset,
    "custom_domain_opset_only": _custom_domain_only,
    "opset_too_old": _opset(6),
    "opset_from_the_future": _opset(999),
    "dangling_input": _dangling,
    "cycle": _cycle,
    "huge_input_dims": _huge_input,
    "huge_initializer_dims": _huge_initializer,
    "inconsistent_declared_shape": _inconsistent_shape,
    "conv_channels_mismatch": _conv_channels_mismatch,
    "directory_not_file": lambda root: os.path.join(root, "model") if os.makedirs(os.path.join(root, "model")) is None else "",
    **EXTERNAL_CASES,
    "custom_domain_op": _custom_op,
}
ACCEPTED = {"custom_domain_op", "inconsistent_declared_shape"}  # ONNX Runtime runs the latter: stored shapes are hints


def make_case(name: str, root: str) -> str:
    """Build case ``name`` under ``root`` (with the outside file ``root/secret.bin``); returns the model path."""
    with open(os.path.join(root, "secret.bin"), "wb") as f:
        f.write(SECRET)
    return CASES[name](root)
