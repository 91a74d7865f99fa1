"""trainers: data sets, model zoo, knowledge extraction, teacher cache, one training loop, metrics."""

from .config import DataConfig, ExperimentConfig, ProxyConfig, TrainConfig, config_hash
from .data import DATASETS, DataNotFoundError, DataSplits, TensorSplit, load_dataset
from .knowledge import KNOWLEDGE, FrozenTeacher, KnowledgeExtractor
from .models import count_parameters, create_model, list_models, register_model
from .runtime import resolve_device
from .teacher import TeacherCheckpointError, default_cache_dir, get_teacher, load_teacher

__all__ = [
    "DATASETS",
    "KNOWLEDGE",
    "DataConfig",
    "DataNotFoundError",
    "DataSplits",
    "ExperimentConfig",
    "FrozenTeacher",
    "KnowledgeExtractor",
    "ProxyConfig",
    "TeacherCheckpointError",
    "TensorSplit",
    "TrainConfig",
    "config_hash",
    "count_parameters",
    "create_model",
    "default_cache_dir",
    "get_teacher",
    "list_models",
    "load_dataset",
    "load_teacher",
    "register_model",
    "resolve_device",
]

# ---- loop engineer: exports of loop / metrics / rejection / output_cache / proxy appended below ----
from . import metrics  # noqa: E402
from .callbacks import DivergenceGuard, ProgressBar  # noqa: E402
from .distill import distill  # noqa: E402
from .loop import StopTraining, Trainer, TrainResult, TrainState  # noqa: E402
from .output_cache import TeacherOutputCache  # noqa: E402
from .proxy import Fitness, ProxyEvaluator  # noqa: E402
from .rejection import REASONS, Rejected, RejectionRules  # noqa: E402

__all__ += [
    "REASONS",
    "DivergenceGuard",
    "Fitness",
    "ProgressBar",
    "ProxyEvaluator",
    "Rejected",
    "RejectionRules",
    "StopTraining",
    "TeacherOutputCache",
    "TrainResult",
    "TrainState",
    "Trainer",
    "distill",
    "metrics",
]
