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

Pass ``nodes={"embedding": "...", "feature": "..."}`` (names from ``get_graph_node_names``) to override.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import (
    NodePathTracer,
    _set_default_tracer_kwargs,
    create_feature_extractor,
    get_graph_node_names,
)

KNOWLEDGE = ("logits", "embedding", "feature")

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
        graph = tracer.trace(model)
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
        chosen = find_knowledge_nodes(inner)
        if nodes:
            unknown = sorted(set(nodes) - set(KNOWLEDGE))
            if unknown:
                raise ValueError(
                    f"nodes: unknown knowledge name(s) {unknown}; valid names are {list(KNOWLEDGE)}"
                )
            available = get_graph_node_names(inner, suppress_diff_warning=True)[1]
            for key, name in nodes.items():
                if name not in available:
                    close = difflib.get_close_matches(name, available, n=5)
                    raise ValueError(
                        f"nodes[{key!r}] = {name!r} is not a node of {type(inner).__name__}; "
                        f"closest: {close} (see torchvision get_graph_node_names)"
                    )
            chosen.update(nodes)
        self.nodes = chosen
        unique = list(dict.fromkeys(chosen.values()))
        self.body = create_feature_extractor(
            inner, return_nodes={n: n for n in unique}, suppress_diff_warning=True
        )
        if self.frozen:
            super().train(False)

    def train(self, mode: bool = True) -> KnowledgeExtractor:
        """Set training mode; a frozen extractor stays in eval mode."""
        return super().train(False if self.frozen else mode)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Knowledge of a batch ``x``: logits ``(N, K)``, embedding ``(N, D)``, feature ``(N, C, H, W)``."""
        if self.frozen:
            with torch.no_grad():
                return _postprocess(self.body(x), self.nodes)
        return _postprocess(self.body(x), self.nodes)

    def shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the three tensors for inputs ``(C, H, W)``, computed on the meta device.

        No real computation runs: parameters and buffers are swapped for meta tensors with
        ``torch.func.functional_call``.
        """
        params = {n: torch.empty_like(t, device="meta") for n, t in self.body.named_parameters()}
        buffers = {n: torch.empty_like(t, device="meta") for n, t in self.body.named_buffers()}
        x = torch.empty((1, *input_shape), device="meta")
        was_training = self.body.training
        self.body.eval()
        try:
            with torch.no_grad():
                out = torch.func.functional_call(self.body, {**params, **buffers}, (x,))
        finally:
            self.body.train(was_training)
        return {k: tuple(v.shape[1:]) for k, v in _postprocess(out, self.nodes).items()}
