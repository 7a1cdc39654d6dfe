"""The MLflow registry's names every part agrees on: the model and its two aliases.

``champion`` is what the stable track serves, ``challenger`` the canary, if any.
"""

from __future__ import annotations

REGISTERED_MODEL_NAME = "digitloop-mnist"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
