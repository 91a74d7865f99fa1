"""trainers: data sets, model zoo, knowledge extraction, teacher cache, one training loop, metrics."""

from . import metrics
from .callbacks import DivergenceGuard, ProgressBar
from .config import DataConfig, ExperimentConfig, ProxyConfig, TrainConfig, config_hash
from .data import DATASETS, DataNotFoundError, DataSplits, TensorSplit, load_dataset
from .distill import distill
from .knowledge import KNOWLEDGE, FrozenTeacher, KnowledgeExtractor
from .loop import StopTraining, Trainer, TrainResult, TrainState
from .models import count_parameters, create_model, list_models, register_model
from .output_cache import TeacherOutputCache
from .proxy import Fitness, ProxyEvaluator
from .rejection import REASONS, Rejected, RejectionRules
from .runtime import resolve_device
from .teacher import TeacherCheckpointError, default_cache_dir, get_teacher, load_teacher

__all__ = [
    "DATASETS",
    "KNOWLEDGE",
    "REASONS",
    "DataConfig",
    "DataNotFoundError",
    "DataSplits",
    "DivergenceGuard",
    "ExperimentConfig",
    "Fitness",
    "FrozenTeacher",
    "KnowledgeExtractor",
    "ProgressBar",
    "ProxyConfig",
    "ProxyEvaluator",
    "Rejected",
    "RejectionRules",
    "StopTraining",
    "TeacherCheckpointError",
    "TeacherOutputCache",
    "TensorSplit",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Trainer",
    "config_hash",
    "count_parameters",
    "create_model",
    "default_cache_dir",
    "distill",
    "get_teacher",
    "list_models",
    "load_dataset",
    "load_teacher",
    "metrics",
    "register_model",
    "resolve_device",
]
