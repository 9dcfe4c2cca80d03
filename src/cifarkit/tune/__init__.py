"""Hyperparameter search with Optuna: a TOML search space over any recipe's fields, each trial a run directory.

``space`` reads and checks the TOML file; ``study`` runs, resumes, retrains and loads studies. Needs the ``tune``
extra (``pip install 'cifarkit[tune]'``).
"""

from cifarkit.errors import CifarkitError

try:
    import optuna  # noqa: F401
except ImportError:
    raise CifarkitError("cifarkit tune needs Optuna: pip install 'cifarkit[tune]'") from None

from .space import SearchSpace, load_space, parse_space  # noqa: E402
from .study import (  # noqa: E402
    BEST_CONFIG,
    PRUNERS,
    STUDY_FILE,
    best_trial,
    check_storage,
    check_study_dir,
    load_study,
    retrain_best,
    tune,
)

__all__ = [
    "BEST_CONFIG",
    "PRUNERS",
    "STUDY_FILE",
    "SearchSpace",
    "best_trial",
    "check_storage",
    "check_study_dir",
    "load_space",
    "load_study",
    "parse_space",
    "retrain_best",
    "tune",
]
