"""Label mapping files: which label value of the user's label maps stands for which class label value.

Shared by ``maskmed train --label-mapping`` and ``maskmed evaluate --label-mapping`` (and the benchmarks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskmed_core.io.errors import InputError
from maskmed_core.untrusted import check_int, load_json

# The largest label value MaskMed reads (label maps of up to 16-bit integers): in dataset.json, label mappings.
MAX_LABEL_VALUE = 65535


def _key(key: str) -> Any:
    """A JSON object's key as the integer it spells ("12" -> 12), else as given (refused by check_int)."""
    return int(key) if key.strip().lstrip("-").isdigit() else key


def read_label_mapping(path: str | Path) -> dict[int, int]:
    """Source label value -> target value, from {"src": dst, ...}, or the shared AMOS file's
    {"classes": [{"amos_id": a, "totalseg_v2_id": t}, ...]} layout. InputError for a file that is missing,
    not JSON or in neither layout."""
    try:
        data = load_json(Path(path).read_text(encoding="utf-8"), str(path))
        if isinstance(data, dict) and "classes" in data:
            pairs = [(c["totalseg_v2_id"], c["amos_id"]) for c in data["classes"]]
        else:
            pairs = [(_key(k), v) for k, v in data.items()]
        return {check_int(k, "a source label value", 0, MAX_LABEL_VALUE): check_int(v, f"the target of {k}", 0,
                                                                                     MAX_LABEL_VALUE)
                for k, v in pairs}
    except OSError as error:
        raise InputError(f"label mapping {path} cannot be read ({error.strerror or error}): check the path") from None
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise InputError(f"label mapping {path} is not a JSON object of label values ({type(error).__name__}: "
                         f"{str(error)[:120]}): write {{\"source value\": target value, ...}}, e.g. "
                         "{\"1\": 1, \"5\": 6}") from None
