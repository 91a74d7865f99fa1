"""Knowledge of a network for distillation: logits, embedding (classifier input) and feature map.

Intermediate tensors come from ``torchvision.models.feature_extraction.create_feature_extractor``; the model's
``forward`` is never edited. Node names are found automatically by tracing the model with torch.fx:

- ``logits``: the graph's output node, ``(N, K)``;
- ``embedding``: the input of the last ``nn.Linear`` (the classifier), skipping a dropout in front of it,
  ``(N, D)``; a model without a linear head (e.g. squeezenet) uses the input of its last convolution,
  averaged over space;
- ``feature``: walking back from the embedding through flatten / reshape / dropout / indexing nodes, the
  input of the global pooling (or the first node that is none of those): the last feature map ``(N, C, H, W)``
  for CNNs and ``vit_tiny`` (its tokens laid on the patch grid). For ``mlp`` it is the last hidden layer
  ``(N, D)`` (same node as the embedding); for torchvision's ViTs the normalised token sequence ``(N, T, D)``.

Pass ``nodes={"embedding": "...", "feature": "..."}`` (names from ``python -m trainers nodes MODEL``) to
override, or attach them to the model with :func:`set_knowledge_nodes` (what ``[experiment.knowledge]`` does).

Extra arguments of ``forward`` with defaults (``forward(x, is_feat=False, preact=False)``, the pattern of the
CIFAR zoo of CRD) are held at their defaults while tracing. A model that still cannot be traced (control flow
that depends on the data) falls back to forward hooks on named modules, as torchdistill does: the embedding is
then the input of the last ``nn.Linear`` run, the feature the last 4-D module output before it, and node names
are module names (``named_modules``).
"""

from __future__ import annotations

import difflib
import inspect
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import (
    NodePathTracer,
    _set_default_tracer_kwargs,
    create_feature_extractor,
    get_graph_node_names,
)

from spaces import KNOWLEDGE, NODE_KNOWLEDGE

NODES_ATTR = "kdzero_knowledge_nodes"
"""Attribute of a model holding its chosen knowledge nodes (set by :func:`set_knowledge_nodes`)."""


def set_knowledge_nodes(model: nn.Module, nodes: dict[str, str] | None) -> nn.Module:
    """Attach knowledge node names to ``model``; every :class:`KnowledgeExtractor` of it then uses them.

    Args:
        model: The student or teacher (not a ``FrozenTeacher`` wrapper: the inner model).
        nodes: ``{"embedding": node, "feature": node}`` (either may be left out); ``None`` / empty: automatic.

    Returns:
        ``model``.

    Raises:
        ValueError: A key other than ``embedding`` / ``feature``, or a name that is not a string.
    """
    nodes = dict(nodes or {})
    bad = sorted(set(nodes) - set(NODE_KNOWLEDGE))
    if bad:
        raise ValueError(
            f"knowledge nodes: unknown kind(s) {bad}; only 'embedding' and 'feature' can be named"
        )
    for key, name in nodes.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"knowledge node for {key!r} must be a node name, got {name!r}")
    setattr(model, NODES_ATTR, nodes)
    return model


def concrete_args(model: nn.Module) -> dict[str, Any] | None:
    """Arguments of ``model.forward`` after the input that have defaults, held at them while tracing.

    Returns ``None`` when ``forward`` takes only the input (or its signature cannot be read).
    """
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    extra = {
        p.name: p.default
        for p in params[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty
    }
    return extra or None


_PASS_MODULES = (
    nn.AdaptiveAvgPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
_PASS_FUNCTIONS = {
    torch.flatten,
    torch.mean,
    torch.squeeze,
    operator.getitem,
    F.adaptive_avg_pool2d,
    F.avg_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
}
_PASS_METHODS = {"view", "reshape", "flatten", "mean", "squeeze", "contiguous", "amax"}
_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCTIONS = {torch.mean, F.adaptive_avg_pool2d, F.avg_pool2d, F.adaptive_max_pool2d}
_POOL_METHODS = {"mean", "amax"}


class FrozenTeacher(nn.Module):
    """A teacher frozen by construction: eval mode, ``requires_grad=False``, forward under ``torch.no_grad``.

    ``train(mode)`` keeps it in eval mode, so a caller's ``.train()`` cannot switch BatchNorm or dropout on.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode whatever ``mode`` is."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """The teacher's logits, without autograd history."""
        return self.model(x)


def _is_passthrough(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    return False


def _is_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _POOL_MODULES)
    return (node.op == "call_function" and node.target in _POOL_FUNCTIONS) or (
        node.op == "call_method" and node.target in _POOL_METHODS
    )


def find_knowledge_nodes(model: nn.Module) -> dict[str, str]:
    """Node names (``create_feature_extractor`` naming) of the logits, embedding and feature of ``model``.

    Raises:
        ValueError: The model's output is not a single tensor node, or it has no linear or conv classifier.
    """
    tracer = NodePathTracer(**_set_default_tracer_kwargs(None))
    was_training = model.training
    model.eval()
    try:
        graph = tracer.trace(model, concrete_args=concrete_args(model))
    finally:
        model.train(was_training)
    names = tracer.node_to_qualname
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    out = next(n for n in nodes if n.op == "output").args[0]
    if not isinstance(out, fx.Node) or out not in names:
        raise ValueError(
            f"{type(model).__name__}: forward must return one logits tensor; pass nodes= explicitly"
        )
    heads = [n for n in nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Linear)]
    if not heads:
        heads = [n for n in nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)]
    if not heads:
        raise ValueError(
            f"{type(model).__name__}: no nn.Linear / nn.Conv2d classifier found; pass nodes= explicitly"
        )
    emb = heads[-1].args[0]
    while emb.op == "call_module" and isinstance(modules[emb.target], nn.Dropout):
        emb = emb.args[0]
    feat = emb  # walk back to the input of the global pooling, or to the first node that is not a reshape
    while (
        _is_passthrough(feat, modules)
        and isinstance(feat.args[0], fx.Node)
        and feat.args[0].op != "placeholder"
    ):
        pooled = _is_pool(feat, modules)
        feat = feat.args[0]
        if pooled:
            break
    return {"logits": names[out], "embedding": names[emb], "feature": names[feat]}


def _postprocess(out: dict[str, Tensor], nodes: dict[str, str]) -> dict[str, Tensor]:
    res = {k: out[n] for k, n in nodes.items()}
    emb = res["embedding"]
    if emb.ndim == 4:
        res["embedding"] = emb.mean(dim=(2, 3))  # (N, C, H, W) -> (N, C)
    elif emb.ndim > 2:
        res["embedding"] = emb.flatten(1)  # (N, ...) -> (N, D)
    return res


class KnowledgeExtractor(nn.Module):
    """Returns ``{"logits", "embedding", "feature"}`` of one forward pass of ``model``.

    The extractor shares the model's parameters (training through it trains the model). Wrapping a
    :class:`FrozenTeacher` gives a frozen extractor: eval mode and ``torch.no_grad`` always.

    Args:
        model: Any ``nn.Module`` mapping images to logits (or a ``FrozenTeacher``).
        nodes: Optional node names overriding the automatic choice, keyed by knowledge name.
    """

    def __init__(self, model: nn.Module, nodes: dict[str, str] | None = None) -> None:
        super().__init__()
        self.frozen = isinstance(model, FrozenTeacher)
        inner = model.model if self.frozen else model
        wanted = {**getattr(inner, NODES_ATTR, {}), **(nodes or {})}
        unknown = sorted(set(wanted) - set(KNOWLEDGE))
        if unknown:
            raise ValueError(f"nodes: unknown knowledge name(s) {unknown}; valid names are {list(KNOWLEDGE)}")
        try:
            chosen = find_knowledge_nodes(inner)
        except _TRACE_ERRORS:
            self.mode = "hooks"  # FX cannot trace it (data-dependent control flow): forward hooks instead
            self.body: nn.Module = _HookBody(inner, wanted)
            self.nodes = self.body.nodes
        else:
            self.mode = "fx"
            if wanted:
                args = concrete_args(inner)
                available = get_graph_node_names(inner, suppress_diff_warning=True, concrete_args=args)[1]
                for key, name in wanted.items():
                    if name not in available:
                        close = difflib.get_close_matches(name, available, n=5)
                        raise ValueError(
                            f"knowledge node {key!r} = {name!r} is not a node of {type(inner).__name__}; "
                            f"closest: {close} (`python -m trainers nodes MODEL` lists them)"
                        )
                chosen.update(wanted)
            self.nodes = chosen
            unique = list(dict.fromkeys(chosen.values()))
            self.body = create_feature_extractor(
                inner,
                return_nodes={n: n for n in unique},
                suppress_diff_warning=True,
                concrete_args=concrete_args(inner),
            )
        if self.frozen:
            super().train(False)

    def train(self, mode: bool = True) -> KnowledgeExtractor:
        """Set training mode; a frozen extractor stays in eval mode."""
        return super().train(False if self.frozen else mode)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Knowledge of a batch ``x``: logits ``(N, K)``, embedding ``(N, D)``, feature ``(N, C, H, W)``."""
        if self.mode == "hooks":
            if self.frozen:
                with torch.no_grad():
                    return _postprocess(self.body(x), KNOWLEDGE_SELF)
            return _postprocess(self.body(x), KNOWLEDGE_SELF)
        if self.frozen:
            with torch.no_grad():
                return _postprocess(self.body(x), self.nodes)
        return _postprocess(self.body(x), self.nodes)

    def shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the three tensors for inputs ``(C, H, W)``.

        No real computation runs for a traced model: parameters and buffers are swapped for meta tensors with
        ``torch.func.functional_call``. A hooked model (its control flow may read values) runs one zero input.
        """
        was_training = self.body.training
        self.body.eval()
        try:
            with torch.no_grad():
                if self.mode == "hooks":
                    device = next((p.device for p in self.body.parameters()), torch.device("cpu"))
                    out = self.body(torch.zeros((1, *input_shape), device=device))
                else:
                    params = {n: torch.empty_like(t, device="meta") for n, t in self.body.named_parameters()}
                    buffers = {n: torch.empty_like(t, device="meta") for n, t in self.body.named_buffers()}
                    x = torch.empty((1, *input_shape), device="meta")
                    out = torch.func.functional_call(self.body, {**params, **buffers}, (x,))
        finally:
            self.body.train(was_training)
        names = KNOWLEDGE_SELF if self.mode == "hooks" else self.nodes
        return {k: tuple(v.shape[1:]) for k, v in _postprocess(out, names).items()}


KNOWLEDGE_SELF = {k: k for k in KNOWLEDGE}
_TRACE_ERRORS = (fx.proxy.TraceError, TypeError, NotImplementedError, RuntimeError, AttributeError)


class _HookBody(nn.Module):
    """Knowledge by forward hooks on named modules, for models FX cannot trace.

    The modules are found on the first forward pass (a meta-device pass from ``shapes`` is enough): the
    embedding is the input of the last ``nn.Linear`` run (or of the last ``nn.Conv2d`` when there is none),
    the feature the output of the last module run before it whose output is 4-D (else the embedding). A node
    named by the user is a module name; its output is taken. Hooks live only during this body's forward, so
    several extractors of one model never leave hooks behind.
    """

    def __init__(self, model: nn.Module, wanted: dict[str, str]) -> None:
        super().__init__()
        self.model = model
        names = dict(model.named_modules())
        for key, name in wanted.items():
            if key == "logits" or name not in names or not name:
                close = difflib.get_close_matches(str(name), [n for n in names if n], n=5)
                raise ValueError(
                    f"knowledge node {key!r} = {name!r} is not a module of {type(model).__name__} (it is "
                    f"read with forward hooks, so nodes are module names); closest: {close}"
                )
        self.wanted = dict(wanted)
        self.nodes: dict[str, str] = {"logits": "output"}
        self._taps: dict[str, tuple[str, str]] | None = None  # kind -> (module name, "in" / "out")

    def _discover(self, x: Tensor) -> None:
        order: list[tuple[str, nn.Module, Tensor | None, Tensor | None]] = []
        handles = []
        for name, module in self.model.named_modules():
            if not name or list(module.children()):
                continue

            def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                first = args[0] if args and isinstance(args[0], Tensor) else None
                order.append((name, mod, first, out if isinstance(out, Tensor) else None))

            handles.append(module.register_forward_hook(hook))
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        heads = [i for i, (_, m, _, _) in enumerate(order) if isinstance(m, nn.Linear)]
        heads = heads or [i for i, (_, m, _, _) in enumerate(order) if isinstance(m, nn.Conv2d)]
        if not heads:
            raise ValueError(
                f"{type(self.model).__name__}: no nn.Linear / nn.Conv2d classifier found; name the "
                "embedding and feature modules in [experiment.knowledge]"
            )
        head = heads[-1]
        taps = {"embedding": (order[head][0], "in")}
        maps = [i for i in range(head) if order[i][3] is not None and order[i][3].ndim == 4]
        taps["feature"] = (order[maps[-1]][0], "out") if maps else taps["embedding"]
        for key, name in self.wanted.items():
            taps[key] = (name, "out")
        for key, (name, where) in taps.items():
            self.nodes[key] = f"{name}:{'input' if where == 'in' else 'output'}"
        self._taps = taps

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``{"logits", "embedding", "feature"}`` of one forward pass of the model."""
        if self._taps is None:
            self._discover(x)
        assert self._taps is not None
        seen: dict[str, Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = []
        for key, (name, where) in self._taps.items():
            if where == "in":
                handles.append(
                    modules[name].register_forward_pre_hook(
                        lambda _m, args, key=key: seen.__setitem__(key, args[0])
                    )
                )
            else:
                handles.append(
                    modules[name].register_forward_hook(
                        lambda _m, _a, out, key=key: seen.__setitem__(key, out)
                    )
                )
        try:
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        if not isinstance(out, Tensor):
            raise ValueError(f"{type(self.model).__name__}: forward must return one logits tensor")
        return {"logits": out, **seen}


def list_nodes(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """Candidate knowledge nodes of ``model`` with their per-sample output shapes, in graph order.

    Traceable models list FX node names (``[experiment.knowledge]`` accepts them); others list module names
    (read with forward hooks). Shapes come from one meta-device pass (a zero input for untraceable models).

    Args:
        model: The model.
        input_shape: ``(C, H, W)`` of one input.

    Returns:
        ``[(name, shape)]`` for every node or module whose output is a tensor.
    """
    x = torch.empty((1, *input_shape), device="meta")
    was = model.training
    model.eval()
    try:
        try:
            args = concrete_args(model)
            names = get_graph_node_names(model, suppress_diff_warning=True, concrete_args=args)[1]
            body = create_feature_extractor(
                model,
                return_nodes={n: n for n in names if n != "x"},
                suppress_diff_warning=True,
                concrete_args=args,
            )
        except _TRACE_ERRORS:
            shapes: list[tuple[str, tuple[int, ...]]] = []
            handles = [
                m.register_forward_hook(
                    lambda _m, _a, out, name=name: (
                        shapes.append((name, tuple(out.shape[1:]))) if isinstance(out, Tensor) else None
                    )
                )
                for name, m in model.named_modules()
                if name
            ]
            try:
                with torch.no_grad():  # real zeros: the control flow of an untraceable model may read values
                    device = next((p.device for p in model.parameters()), torch.device("cpu"))
                    model(torch.zeros((1, *input_shape), device=device))
            finally:
                for h in handles:
                    h.remove()
            return shapes
        meta_params = {n: torch.empty_like(t, device="meta") for n, t in body.named_parameters()}
        meta_buffers = {n: torch.empty_like(t, device="meta") for n, t in body.named_buffers()}
        with torch.no_grad():
            out = torch.func.functional_call(body, {**meta_params, **meta_buffers}, (x,))
    finally:
        model.train(was)
    return [(n, tuple(v.shape[1:])) for n, v in out.items() if isinstance(v, Tensor)]
