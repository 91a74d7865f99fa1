"""The KD-Zero distiller search space: transforms, distances, calibrations, specs, and the distiller builder.

Knows torch only (Optuna appears only as the ``trial`` argument of :func:`suggest_spec`). A distiller is the
paper's Eq. 1: ``loss = tau^2 * W * mean_n(cal_n * D(T3(T2(T1(f_s/tau))), T3(T2(T1(f_t/tau))))_n)``.
"""

from ._builder import Distiller, build_distiller, make_aligner, plan_chain
from ._calibrations import CALIBRATIONS, calibrate
from ._distances import DISTANCES, Layout
from ._files import MAX_DATA_DEPTH, MAX_DATA_FILE_BYTES, parse_data_text, read_data_file, short_repr
from ._known import KNOWN_DISTILLERS
from ._registry import Registry
from ._spec import KNOWLEDGE, NODE_KNOWLEDGE, TEMPERATURES, WEIGHTS, DistillerSpec
from ._suggest import GENES, distinct_chains, space_size, spec_from_params, spec_to_params, suggest_spec
from ._transforms import TRANSFORMS, Transform

__all__ = [
    "CALIBRATIONS",
    "DISTANCES",
    "GENES",
    "KNOWLEDGE",
    "NODE_KNOWLEDGE",
    "KNOWN_DISTILLERS",
    "MAX_DATA_DEPTH",
    "MAX_DATA_FILE_BYTES",
    "TEMPERATURES",
    "TRANSFORMS",
    "WEIGHTS",
    "Distiller",
    "DistillerSpec",
    "Layout",
    "Registry",
    "Transform",
    "build_distiller",
    "calibrate",
    "distinct_chains",
    "make_aligner",
    "parse_data_text",
    "plan_chain",
    "read_data_file",
    "short_repr",
    "space_size",
    "spec_from_params",
    "spec_to_params",
    "suggest_spec",
]
