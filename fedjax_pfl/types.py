"""Type aliases and the shape-letter glossary used in docstrings.

Shape letters: ``N`` total clients, ``C`` cohort (clients in one round, padded),
``M`` padded examples per client, ``T`` pooled examples, ``S`` local steps,
``B`` batch, ``P`` flattened parameters. "Stacked" means every leaf of a pytree
has a leading client axis (``N`` or ``C``).
"""

from typing import Any

import jax

PyTree = Any
Params = Any
PRNGKey = jax.Array
Metrics = dict[str, Any]

__all__ = ["PyTree", "Params", "PRNGKey", "Metrics"]
