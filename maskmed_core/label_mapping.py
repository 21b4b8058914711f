"""Label mapping files: which label value of the user's label maps stands for which class label value.

Shared by ``maskmed train --label-mapping`` and ``maskmed evaluate --label-mapping`` (and the benchmarks).
"""

from __future__ import annotations

import json
from pathlib import Path

from maskmed_core.io.errors import InputError


def read_label_mapping(path: str | Path) -> dict[int, int]:
    """Source label value -> target value, from {"src": dst, ...}, or the shared AMOS file's
    {"classes": [{"amos_id": a, "totalseg_v2_id": t}, ...]} layout. InputError for a file that is missing,
    not JSON or in neither layout."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict) and "classes" in data:
            return {int(c["totalseg_v2_id"]): int(c["amos_id"]) for c in data["classes"]}
        return {int(k): int(v) for k, v in data.items()}
    except OSError as error:
        raise InputError(f"label mapping {path} cannot be read ({error.strerror or error}): check the path") from None
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise InputError(f"label mapping {path} is not a JSON object of label values ({type(error).__name__}: "
                         f"{str(error)[:120]}): write {{\"source value\": target value, ...}}, e.g. "
                         "{\"1\": 1, \"5\": 6}") from None
