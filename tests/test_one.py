"""One: a frozen expert per task, also after a resume; prediction derived from forward_task."""

import torch

from retain.engine import fit, runio
from retain.methods import make_method
from retain.methods.one import One
from retain.models import MLP, ContinualModel
from tests.synthetic import blobs


def _model(bench):
    torch.manual_seed(0)
    return ContinualModel(MLP(bench.input_shape, hidden=(16,)), bench.classes_per_task)


def _frozen(expert):
    return not expert.training and not any(p.requires_grad for p in expert.parameters())


def test_experts_are_frozen_after_training_and_after_loading_a_checkpoint(tmp_path):
    bench = blobs(n_tasks=3, per_class=12)
    one = make_method("one")
    fit(_model(bench), bench, one, epochs=1, lr=0.1, batch_size=12, run_dir=tmp_path / "a")
    assert len(one.experts) == 3 and all(_frozen(e) for e in one.experts)
    # a run resumed from its checkpoint rebuilds the experts from their state dicts: frozen too
    # (the bug: they came back trainable, in eval mode only)
    resumed = One()
    resumed.setup(_model(bench), None)
    resumed.load_state_dict(runio.load_torch(tmp_path / "a" / runio.CHECKPOINT)["method"])
    assert len(resumed.experts) == 3 and all(_frozen(e) for e in resumed.experts)
    x = bench[1].x_test
    for t in range(3):
        assert torch.equal(resumed.predict(x, task_id=t), one.predict(x, task_id=t))


def test_prediction_is_every_expert_on_its_own_head():
    bench = blobs(n_tasks=3, per_class=12)
    one = make_method("one")
    fit(_model(bench), bench, one, epochs=1, lr=0.1, batch_size=12)
    x = bench[0].x_test
    own = [one.experts[t](x, task_id=t) for t in range(3)]
    assert torch.equal(one.predict(x, task_id=2), own[2])
    assert torch.equal(one.predict(x, upto=2), torch.cat(own[:2], dim=1))
    aware, agnostic = one.predict_both(x, task_id=1, upto=3)
    assert torch.equal(aware, own[1]) and torch.equal(agnostic, torch.cat(own, dim=1))
    assert one.shared_forward is False
