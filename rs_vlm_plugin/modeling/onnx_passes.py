"""Graph rewrites of the exported image tower that change its speed, never its results.

- :func:`fold_pads_into_convs`: the EfficientNet trunk's TensorFlow SAME padding exports as a
  ``Pad`` before each convolution; onnxruntime neither folds it (its pads come from a chain of
  constant nodes) nor runs it in its blocked NCHWc layout, so every one costs a copy and two
  layout changes. The zero padding goes into the convolution's own ``pads`` instead (exactly the
  same numbers: padding with zeros is what ``pads`` does).
- :func:`gate_object_tier`: the 196 object tokens (object head, knowledge fusion of every cell)
  cost about as much as the whole trunk, and most jobs (search, index, classify, ask) never
  read them. onnxruntime runs every node of a graph whatever outputs are asked for, so the
  object tier moves into the ``then`` branch of an ``If`` on a new boolean input
  (:data:`OBJECTS_GATE`; the manifest names it, so the runtime knows to feed it). With it false, ``objects`` comes back empty ``(N, 0, D)`` and ``routing`` holds the
  global and region tokens' weights only ``(N, 14, E)``.

Both are pure functions of the graph, so an export stays a pure function of the weights.
"""

from __future__ import annotations

import numpy as np

OBJECTS_GATE = "with_objects"
"""Name of the image graph's boolean input that turns the object tier on (default) or off."""


def _constant_value(model, name: str, producers: dict, initializers: dict) -> np.ndarray | None:
    """The value of tensor ``name`` when it depends on constants only (else None)."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    nodes, todo, seen, needed_inits = [], [name], set(), set()
    while todo:
        tensor = todo.pop()
        if tensor in seen or tensor == "":
            continue
        seen.add(tensor)
        if tensor in initializers:
            needed_inits.add(tensor)
            continue
        node = producers.get(tensor)
        if node is None:  # a graph input: not constant
            return None
        nodes.append(node)
        todo.extend(node.input)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    nodes = sorted({id(n): n for n in nodes}.values(), key=lambda n: order[id(n)])
    graph = helper.make_graph(nodes, "constant", [], [helper.make_tensor_value_info(name, 0, None)],
                              [initializers[k] for k in sorted(needed_inits)])
    sub = helper.make_model(graph, opset_imports=model.opset_import)
    return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])


def fold_pads_into_convs(model):
    """``model`` with every zero ``Pad`` that feeds only a ``Conv`` merged into the Conv's ``pads``.

    Returns:
        The number of Pad nodes removed (the model is changed in place).
    """
    from onnx import helper

    producers = {o: n for n in model.graph.node for o in n.output}
    initializers = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    removed = []
    for node in model.graph.node:
        if node.op_type != "Pad" or node.output[0] in outputs:
            continue
        users = consumers.get(node.output[0], [])
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if len(users) != 1 or users[0].op_type != "Conv" or mode != b"constant" or len(node.input) < 2:
            continue
        if len(node.input) > 2 and node.input[2]:
            value = _constant_value(model, node.input[2], producers, initializers)
            if value is None or np.any(value != 0):
                continue
        pads = _constant_value(model, node.input[1], producers, initializers)
        if pads is None or pads.shape != (8,) or np.any(pads[[0, 1, 4, 5]] != 0) or np.any(pads < 0):
            continue
        conv = users[0]
        if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
            continue
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + int(pads[2]), old[1] + int(pads[3]), old[2] + int(pads[6]), old[3] + int(pads[7])]
        for attribute in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(attribute)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = node.input[0]
        removed.append(node)
    for node in removed:
        model.graph.node.remove(node)
    _drop_unused(model)
    return len(removed)


def _ancestors(model, names: set[str], producers: dict) -> set[int]:
    """ids of the nodes that ``names`` depend on."""
    found, todo = set(), list(names)
    while todo:
        node = producers.get(todo.pop())
        if node is None or id(node) in found:
            continue
        found.add(id(node))
        todo.extend(node.input)
    return found


def gate_object_tier(model, keep=("embedding", "regions"), gated=("objects", "routing")) -> int:
    """Move the nodes only the ``gated`` outputs need into an ``If`` on :data:`OBJECTS_GATE`.

    ``routing`` is a Concat of the global, region and object weights; when the gate is off it
    is the Concat of the inputs computed outside the branch (global and region weights).

    Returns:
        The number of nodes moved into the branch (the model is changed in place).
    """
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    shared = _ancestors(model, set(keep), producers)
    exclusive = _ancestors(model, set(gated), producers) - shared
    branch_nodes = [n for n in graph.node if id(n) in exclusive]
    if not branch_nodes:
        return 0
    outputs = {o.name: o for o in graph.output}
    inner = {o for n in branch_nodes for o in n.output}

    def renamed(value_info, suffix: str):
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(value_info)
        copy.name = value_info.name + suffix
        for dim in copy.type.tensor_type.shape.dim:  # branch outputs may differ in size from the graph's
            dim.Clear()
        return copy

    then_nodes = []
    for node in branch_nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        then_nodes.append(copy)
    for name in gated:  # branch outputs get their own names; the If gives back the graph's
        then_nodes.append(helper.make_node("Identity", [name], [name + "__on"], name=f"{name}__on"))
    then_graph = helper.make_graph(then_nodes, "with_objects", [], [renamed(outputs[g], "__on") for g in gated])

    # Nodes of the branch that depend on the object tier (the rest, such as the global token's
    # Unsqueeze before the routing Concat, is recomputed in the else branch when it is needed).
    on_objects = _ancestors(model, {gated[0]}, producers) - shared
    for node in branch_nodes:
        if any(id(producers[i]) in on_objects for i in node.input if i in producers):
            on_objects.add(id(node))
    else_nodes = []
    for name in gated:
        node = producers[name]
        if node.op_type == "Concat":
            outer = [i for i in node.input if i not in producers or id(producers[i]) not in on_objects]
            needed = _ancestors(model, {i for i in outer if i in inner}, producers) & exclusive
            for copied in branch_nodes:
                if id(copied) in needed:
                    else_nodes.append(onnx.NodeProto())
                    else_nodes[-1].CopyFrom(copied)
            axis = next(a.i for a in node.attribute if a.name == "axis")
            else_nodes.append(helper.make_node("Concat", outer, [name + "__off"], axis=axis, name=f"{name}__off"))
        else:  # an empty (N, 0, D) tensor shaped like the embedding (N, D)
            emb = keep[0]
            else_nodes += [
                helper.make_node("Constant", [], [f"{name}__axes"], value=helper.make_tensor(
                    f"{name}__axes", TensorProto.INT64, [1], [1])),
                helper.make_node("Constant", [], [f"{name}__zero"], value=helper.make_tensor(
                    f"{name}__zero", TensorProto.INT64, [1], [0])),
                helper.make_node("Unsqueeze", [emb, f"{name}__axes"], [f"{name}__one"]),
                helper.make_node("Slice", [f"{name}__one", f"{name}__zero", f"{name}__zero", f"{name}__axes"],
                                 [name + "__off"], name=f"{name}__off")]
    else_graph = helper.make_graph(else_nodes, "without_objects", [], [renamed(outputs[g], "__off") for g in gated])

    gate = helper.make_tensor_value_info(OBJECTS_GATE, TensorProto.BOOL, [])
    graph.input.append(gate)
    keep_nodes = [n for n in graph.node if id(n) not in exclusive]
    if_node = helper.make_node("If", [OBJECTS_GATE], list(gated), then_branch=then_graph, else_branch=else_graph,
                               name="object_tier")
    del graph.node[:]
    graph.node.extend(keep_nodes + [if_node])
    for name in gated:  # the size of the token axis now depends on the gate
        dims = outputs[name].type.tensor_type.shape.dim
        if len(dims) > 1:
            dims[1].Clear()
            dims[1].dim_param = f"{name}_tokens"
    onnx.checker.check_model(model)
    return len(branch_nodes)


def _drop_unused(model) -> None:
    """Remove nodes and initializers no graph output depends on."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    used = _ancestors(model, {o.name for o in graph.output}, producers)
    nodes = [n for n in graph.node if id(n) in used]
    del graph.node[:]
    graph.node.extend(nodes)
    needed = {i for n in nodes for i in n.input} | {i.name for i in graph.input}
    needed |= _subgraph_inputs(nodes)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _subgraph_inputs(nodes) -> set[str]:
    """Outer-scope names read by the subgraphs (If branches) of ``nodes``."""
    names = set()
    for node in nodes:
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                names |= {i for n in attribute.g.node for i in n.input} | _subgraph_inputs(attribute.g.node)
    return names


def sort_nodes(graph) -> None:
    """Order ``graph``'s nodes so that each comes after what it reads, including the outer-scope
    names its branches read (onnxruntime's quantiser appends its nodes at the end, after an ``If``
    whose branch reads them; onnx's checker wants them before). Stable: already ordered nodes stay."""
    import heapq

    producers = {o: i for i, n in enumerate(graph.node) for o in n.output}
    needs = [{producers[i] for i in set(n.input) | _subgraph_inputs([n]) if i in producers} - {k}
             for k, n in enumerate(graph.node)]
    users: dict[int, list[int]] = {}
    for k, deps in enumerate(needs):
        for j in deps:
            users.setdefault(j, []).append(k)
    waiting = [len(d) for d in needs]
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:  # Kahn's algorithm, the earliest ready node first
        k = heapq.heappop(ready)
        order.append(graph.node[k])
        for u in users.get(k, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise ValueError("The graph has a cycle; it cannot be ordered.")
    nodes = list(order)
    del graph.node[:]
    graph.node.extend(nodes)


def hoist_branch_constants(model, min_elements: int = 1024) -> int:
    """Move large Constant nodes out of the If branches into the main graph's initializers.

    A branch may read outer-scope names, so the values are unchanged; as initializers they are
    seen by the passes that work on weights (float16 storage, int8), which look at the main
    graph's initializers only. Returns how many were moved.
    """
    from onnx import numpy_helper

    moved = 0
    for node in model.graph.node:
        if node.op_type != "If":
            continue
        for attr in node.attribute:
            branch = attr.g
            keep = []
            for inner in branch.node:
                value = inner.attribute[0].t if inner.op_type == "Constant" and inner.attribute and \
                    inner.attribute[0].name == "value" else None
                if value is not None and int(np.prod(value.dims)) >= min_elements:
                    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value),
                                                                           inner.output[0]))
                    moved += 1
                else:
                    keep.append(inner)
            del branch.node[:]
            branch.node.extend(keep)
    return moved


def optimise_image_graph(path) -> dict:
    """Apply the passes to the image tower's ONNX file in place.

    Returns:
        What was done: ``{"pads_folded": n, "object_tier_nodes": m, "constants_hoisted": k}``.
    """
    import onnx

    model = onnx.load(str(path))
    folded = fold_pads_into_convs(model)
    moved = gate_object_tier(model)
    hoisted = hoist_branch_constants(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"pads_folded": folded, "object_tier_nodes": moved, "constants_hoisted": hoisted}
