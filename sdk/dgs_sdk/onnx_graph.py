"""What a package's ONNX graph must be before any runtime sees it.

A `.dgs` file may come from anywhere, and an ONNX graph can ask its runtime to read weights from external
files: a tensor whose data lives at ``/etc/passwd`` would bring that file's bytes into the model's outputs. So
every tensor of the graph (initializers, attributes of any node, subgraphs, functions, training info) must hold
its own data. The graph's interface must also be the one the manifest promises: one float32 input
``[B, 3, size, size]`` and a float32 output ``[B]``, so a graph cannot take inputs of unbounded size or give
outputs the SDK would misread. And it must be what an exported detector is: a feed-forward network of standard
ONNX operators (no loops or branches, no custom domains or local functions) of bounded size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ModelPackageError
from .limits import MAX_BATCH_BYTES, MAX_GRAPH_NODES

__all__ = ["GraphInterface", "check_onnx_graph"]

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
# Operators that run a subgraph: a detector has none, and a loop's trip count is the graph's to choose.
CONTROL_FLOW = frozenset({"Loop", "Scan", "If", "SequenceMap"})


@dataclass(frozen=True)
class GraphInterface:
    """What the checks learn of a graph beyond its manifest: ``batch``, its fixed batch size, or None when the
    batch axis is dynamic."""

    batch: int | None


def _external_tensors(model) -> Iterator:
    """Every tensor anywhere in ``model`` (walked field by field, whatever its place) with external data."""
    import onnx
    from google.protobuf.message import Message

    stack = [model]
    while stack:
        message = stack.pop()
        if isinstance(message, onnx.TensorProto):
            if message.data_location == onnx.TensorProto.EXTERNAL or len(message.external_data):
                yield message
            continue
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                stack.extend([value] if isinstance(value, Message) else value)  # one message, or repeated ones


def _check_operators(model, where: str) -> None:
    if len(model.functions):
        raise ModelPackageError(f"{where}: the graph defines local functions ({model.functions[0].name!r}, ...); "
                                "a dgs model is made of standard ONNX operators")
    nodes = model.graph.node
    if len(nodes) > MAX_GRAPH_NODES:
        raise ModelPackageError(f"{where}: the graph has {len(nodes):,} nodes (at most {MAX_GRAPH_NODES:,})")
    for node in nodes:
        if node.domain not in STANDARD_DOMAINS:
            raise ModelPackageError(f"{where}: node {node.name!r} uses operator {node.op_type!r} of domain "
                                    f"{node.domain!r}; a dgs model is made of standard ONNX operators")
        if node.op_type in CONTROL_FLOW:
            raise ModelPackageError(f"{where}: node {node.name!r} is a {node.op_type}; a dgs model is a "
                                    "feed-forward network, without loops or branches")


def _dims(value_info) -> list[int | str | None] | None:
    """Declared dimensions: an int, a symbolic name, or None when unnamed; None when no shape is declared."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]


def check_onnx_graph(model_bytes: bytes, input_name: str, output_name: str, size: int, where: str) -> GraphInterface:
    """Parse a graph and check that it holds all its data and has the interface the manifest describes.

    Raises:
        ModelPackageError: not a parseable ONNX model, a tensor with external data, or an interface other than
            one float32 input ``[B, 3, size, size]`` and a float32 output ``[B]``; the message starts with
            ``where``.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelPackageError(f"{where}: is not an ONNX model ({str(e).strip() or type(e).__name__})") from None
    for tensor in _external_tensors(model):
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "?")
        raise ModelPackageError(
            f"{where}: tensor {tensor.name!r} refers to external data ({location!r}); a model package must hold "
            "all of its weights, so the graph is refused before any runtime reads it"
        )
    graph = model.graph
    _check_operators(model, where)
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    float32 = onnx.TensorProto.FLOAT
    expected = f"[B, 3, {size}, {size}] float32"
    if [i.name for i in inputs] != [input_name]:
        raise ModelPackageError(
            f"{where}: the graph's inputs are {[i.name for i in inputs]}, but the manifest describes one input "
            f"{input_name!r} ({expected})"
        )
    (image,) = inputs
    dims = _dims(image)
    if image.type.tensor_type.elem_type != float32 or dims is None or len(dims) != 4 or dims[1:] != [3, size, size]:
        shape = "undeclared" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
        raise ModelPackageError(
            f"{where}: input {input_name!r} has shape {shape} of type "
            f"{onnx.TensorProto.DataType.Name(image.type.tensor_type.elem_type)}, but the manifest's preprocessing "
            f"gives {expected}"
        )
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    if batch is not None and batch * 12 * size * size > MAX_BATCH_BYTES:
        raise ModelPackageError(f"{where}: a fixed batch of {batch} images of {size} x {size} takes more than "
                                f"{MAX_BATCH_BYTES:,} bytes a run")
    outputs = {o.name: o for o in graph.output}
    if output_name not in outputs:
        raise ModelPackageError(f"{where}: the graph has no output {output_name!r} (outputs: {', '.join(outputs)})")
    out_dims = _dims(outputs[output_name])
    # A fixed output length must be the fixed batch; with a dynamic batch it must not be fixed at all.
    fits = out_dims is not None and len(out_dims) == 1 and (not isinstance(out_dims[0], int) or out_dims[0] == batch)
    if outputs[output_name].type.tensor_type.elem_type != float32 or not fits:
        shape = "undeclared" if out_dims is None else str(["?" if d is None else d for d in out_dims])
        raise ModelPackageError(
            f"{where}: output {output_name!r} has shape {shape}, but a dgs model gives one float32 logit per "
            f"image: [B] for an input of [B, 3, {size}, {size}]"
        )
    return GraphInterface(batch)
