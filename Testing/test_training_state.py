"""Training state file and fine-tuning head adaptation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import full_disk_write_bytes, tiny_model

from maskmed_core.classes import AMOS15_CLASSES, SegmentClass
from maskmed_core.model import MaskMed
from maskmed_core.training.finetune import adapt_state_dict, freeze_class_rows, plan_classes
from maskmed_core.training.state import TrainingState, TrainingStateError, load_state, save_state


def _step(model, optimizer, seed):
    torch.manual_seed(seed)
    loss = model(torch.randn(1, 1, 16, 32, 32))["pred_logits"].square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _state(model, optimizer, scheduler, step):
    return TrainingState(step=step, model=model.state_dict(), optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), torch_rng=torch.get_rng_state())


def _optimiser(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))


def test_saved_state_continues_exactly(tmp_path):
    straight = tiny_model()
    optimizer, scheduler = _optimiser(straight)
    for step in range(4):
        _step(straight, optimizer, step)
        scheduler.step()

    first = tiny_model()
    optimizer, scheduler = _optimiser(first)
    for step in range(2):
        _step(first, optimizer, step)
        scheduler.step()
    path = save_state(tmp_path / "state.safetensors", _state(first, optimizer, scheduler, 2))

    state = load_state(path)
    resumed = tiny_model(seed=123)  # different initial weights: everything must come from the file
    optimizer, scheduler = _optimiser(resumed)
    resumed.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    assert state.step == 2
    for step in range(2, 4):
        _step(resumed, optimizer, step)
        scheduler.step()
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_failed_save_keeps_the_previous_state(tmp_path, monkeypatch):
    model = tiny_model()
    optimizer, scheduler = _optimiser(model)
    path = save_state(tmp_path / "state.safetensors", _state(model, optimizer, scheduler, 1))
    before = path.read_bytes()

    monkeypatch.setattr(Path, "write_bytes", full_disk_write_bytes)
    with pytest.raises(OSError, match="No space left"):
        save_state(path, _state(model, optimizer, scheduler, 2))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]
    assert load_state(path).step == 1


def test_plan_classes_matches_by_name_and_extends():
    old = list(AMOS15_CLASSES[:3])  # spleen, right kidney, left kidney
    data = [SegmentClass(1, "Spleen", (1, 1, 1)), SegmentClass(2, "tumour", (2, 2, 2))]
    dropped = plan_classes(old, ["Spleen", "tumour"], data, keep_absent=False)
    assert [c.name for c in dropped.classes] == ["spleen", "tumour"]
    assert dropped.source_index == [0, None] and dropped.frozen == []
    assert dropped.classes[0].terminology == old[0].terminology
    kept = plan_classes(old, ["Spleen", "tumour"], data, keep_absent=True)
    assert [c.name for c in kept.classes] == ["spleen", "tumour", "right kidney", "left kidney"]
    assert kept.source_index == [0, None, 1, 2] and kept.frozen == [2, 3]
    assert len({c.label for c in kept.classes}) == 4


def test_adapted_head_keeps_matched_rows_and_no_object():
    old_model = tiny_model(num_classes=3)
    plan = plan_classes(list(AMOS15_CLASSES[:3]), ["left kidney", "tumour"],
                        [SegmentClass(1, "left kidney", (0, 0, 0)), SegmentClass(2, "tumour", (0, 0, 0))], False)
    config = tiny_model(num_classes=3).config
    config.num_classes = len(plan.classes)
    fresh = MaskMed(config)
    adapted = adapt_state_dict(old_model.state_dict(), fresh, plan)
    fresh.load_state_dict(adapted)
    old_rows = old_model.query_decoder.class_embed.weight
    new_rows = fresh.query_decoder.class_embed.weight
    torch.testing.assert_close(new_rows[0], old_rows[2])  # left kidney
    torch.testing.assert_close(new_rows[-1], old_rows[-1])  # no object
    torch.testing.assert_close(fresh.query_decoder.query_feat.weight, old_model.query_decoder.query_feat.weight)


def test_frozen_class_rows_do_not_move():
    model = tiny_model(num_classes=3)
    freeze_class_rows(model, [1])
    model(torch.randn(1, 1, 16, 32, 32))["pred_logits"].square().sum().backward()
    grad = model.query_decoder.class_embed.weight.grad
    assert torch.all(grad[1] == 0) and torch.any(grad[0] != 0)


def test_averaged_weights_travel_with_the_state_and_a_count_without_them_is_refused(tmp_path):
    model = tiny_model()
    optimizer, scheduler = _optimiser(model)
    averaged = {k: v + 1 for k, v in model.state_dict().items()}
    state = _state(model, optimizer, scheduler, 2)
    state.averaged, state.averaged_count = averaged, 3
    loaded = load_state(save_state(tmp_path / "state.safetensors", state))
    assert loaded.averaged_count == 3 and set(loaded.averaged) == set(averaged)
    assert all(torch.equal(loaded.averaged[k], v) for k, v in averaged.items())
    assert load_state(save_state(tmp_path / "plain.safetensors", _state(model, optimizer, scheduler, 2))).averaged == {}

    state.averaged = {}  # a count whose weights are missing (a file edited by hand)
    with pytest.raises(TrainingStateError, match="averaged weights"):
        load_state(save_state(tmp_path / "edited.safetensors", state))
