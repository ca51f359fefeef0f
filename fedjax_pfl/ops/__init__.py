"""FedOBP parameter-decoupling ops (Chen et al., arXiv 2604.16574, Eqs. 7-9, 19).

Importance scores, normalization, the quantile threshold τ, and the masked
merge of local and global parameters. All ops are pure, jittable and
`jax.vmap`-able over a leading client axis.
"""

from fedjax_pfl.ops.importance import SCORE_FNS, ema_scores, fedobp_scores, register_score
from fedjax_pfl.ops.masking import (
    fedobp_decouple,
    keep_local_mask,
    masked_merge,
    personalized_fraction,
)
from fedjax_pfl.ops.threshold import (
    NORMS,
    normalize_scores,
    quantile_threshold,
    threshold_and_normalize,
)

__all__ = [
    "NORMS",
    "SCORE_FNS",
    "ema_scores",
    "fedobp_decouple",
    "fedobp_scores",
    "keep_local_mask",
    "masked_merge",
    "normalize_scores",
    "personalized_fraction",
    "quantile_threshold",
    "register_score",
    "threshold_and_normalize",
]
