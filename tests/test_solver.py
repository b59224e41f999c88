"""solver.py: epochs -> iterations, every solver type and LR policy, as Caffe reads them."""
from __future__ import annotations

import pytest

from app.caffe import solver

NET = """name: "tiny"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "y" top: "loss" }
"""


def _plan(tmp_path, **params):
    (tmp_path / "net.prototxt").write_text(NET)
    return solver.build(params, net_path=str(tmp_path / "net.prototxt"), snapshot_prefix=str(tmp_path / "snap"),
                        train_count=1000, val_count=250, train_batch=64, val_batch=50)


def test_epochs_to_iterations(tmp_path):
    plan = _plan(tmp_path, train_epochs=3, val_interval=0.5, snapshot_interval=1)
    assert plan.max_iter == 48                 # 3 * ceil(1000 / 64): whole iterations per epoch (DIGITS)
    assert plan.solver.test_interval == 8      # 0.5 * 16
    assert plan.solver.snapshot == 16
    assert list(plan.solver.test_iter) == [5]  # 250 / 50
    assert list(plan.solver.train_state.stage) == ["train"]
    assert list(plan.solver.test_state[0].stage) == ["val"]
    assert _plan(tmp_path, train_epochs=3, max_iter=10).max_iter == 10  # max_iter wins


def test_own_data_needs_max_iter(tmp_path):
    with pytest.raises(solver.SolverError) as err:
        solver.build({}, net_path="n", snapshot_prefix="s", train_count=None, val_count=None,
                     train_batch=None, val_batch=None)
    assert err.value.field == "max_iter"


@pytest.mark.parametrize("solver_type", solver.SOLVER_TYPES)
def test_every_solver_type_loads_in_caffe(tmp_path, solver_type):
    import caffe
    plan = _plan(tmp_path, solver_type=solver_type, max_iter=3)
    (tmp_path / "solver.prototxt").write_text(solver.to_text(plan.solver))
    s = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    assert type(s).__name__.lower().startswith(solver._CAFFE_TYPE[solver_type].lower())
    s.step(3)
    assert s.iter == 3


@pytest.mark.parametrize("policy", solver.LR_POLICIES)
def test_every_lr_policy_runs_and_lr_at_is_sane(tmp_path, policy):
    import caffe
    plan = _plan(tmp_path, lr_policy=policy, max_iter=30, learning_rate=0.1)
    (tmp_path / "solver.prototxt").write_text(solver.to_text(plan.solver))
    s = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    s.step(30)
    lrs = [solver.lr_at(plan.solver, it) for it in range(31)]
    assert lrs[0] == pytest.approx(0.1, rel=0.6)
    if policy in ("step", "multistep", "exp", "inv", "poly"):
        assert lrs[-1] < lrs[0]
    assert all(lr >= 0 for lr in lrs)


def test_multistep_and_step_values(tmp_path):
    plan = _plan(tmp_path, lr_policy="multistep", stepvalues="10, 20", gamma=0.5, max_iter=30, learning_rate=1)
    assert list(plan.solver.stepvalue) == [10, 20]
    assert [solver.lr_at(plan.solver, i) for i in (9, 10, 20)] == [1, 0.5, 0.25]


def test_bad_choices(tmp_path):
    for params, field in (({"solver_type": "LBFGS"}, "solver_type"), ({"lr_policy": "cosine"}, "lr_policy")):
        with pytest.raises(solver.SolverError) as err:
            _plan(tmp_path, max_iter=3, **params)
        assert err.value.field == field


def test_uploaded_solver_never_chooses_paths(tmp_path):
    base = solver.parse_solver('net: "/etc/passwd" snapshot_prefix: "/etc/cron.d/x" base_lr: 0.5 momentum: 0.8')
    (tmp_path / "net.prototxt").write_text(NET)
    plan = solver.build({"max_iter": 5}, net_path=str(tmp_path / "net.prototxt"),
                        snapshot_prefix=str(tmp_path / "snap"), train_count=None, val_count=None,
                        train_batch=None, val_batch=None, base=base)
    assert plan.solver.net == str(tmp_path / "net.prototxt")
    assert plan.solver.snapshot_prefix == str(tmp_path / "snap")
    assert plan.solver.base_lr == 0.5 and plan.solver.momentum == pytest.approx(0.8)
