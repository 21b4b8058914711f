# ruff: noqa: N802, N803, N999  (Slicer code style: camelCase names; the package is "MaskMedSegmentationLib")
"""What the panel offers and allows, decided without Qt: the model list, the recent models, why Segment is off.

The widget keeps the recent models in QSettings (they outlive scenes) as the JSON text these functions read and
write, and shows the lists and reasons they return.
"""

from __future__ import annotations

import json
import os

RECENT_MODELS_KEPT = 10
DEFAULT_MODEL_LABEL = "Default model (bundled)"


def recentModelPaths(stored: str | None) -> list[str]:
    """The model files remembered in ``stored`` (a JSON list, newest first) that still exist. Anything unreadable
    (a settings file edited by hand, an older format) counts as no recent models."""
    try:
        paths = json.loads(stored or "[]")
    except ValueError:
        return []
    if not isinstance(paths, list):
        return []
    return [path for path in paths if isinstance(path, str) and os.path.isfile(path)]


def rememberModelPath(stored: str | None, path: str) -> str:
    """``stored`` with ``path`` first (once), at most RECENT_MODELS_KEPT entries, as JSON to store again."""
    paths = [path] + [p for p in recentModelPaths(stored) if p != path]
    return json.dumps(paths[:RECENT_MODELS_KEPT])


def modelChoices(defaultPath: str | None, recent: list[str], wanted: str | None,
                 label=os.path.basename) -> list[tuple[str, str]]:
    """(label, path) of the model box: the bundled default first, then the recent models, then ``wanted`` (the
    scene's model, which may be on no list yet); each existing file once. ``label(path)`` names the others."""
    paths = [defaultPath] if defaultPath else []
    for path in [*recent, wanted]:
        if path and path not in paths and os.path.isfile(path):
            paths.append(path)
    return [(DEFAULT_MODEL_LABEL if path == defaultPath else label(path), path) for path in paths]


def segmentBlockers(dependenciesMissing: bool, hasInputVolume: bool, modelPath: str | None) -> list[str]:
    """Why Segment cannot start, one sentence each (empty: it can); the button's tooltip shows them."""
    reasons = []
    if dependenciesMissing:
        reasons.append("Install the dependencies first (Dependencies section).")
    if not hasInputVolume:
        reasons.append("Select an input CT volume.")
    if not modelPath:
        reasons.append("Choose a model file (... button next to Model).")
    return reasons
