"""Solver generation: form/REST fields -> SolverParameter (epochs -> iterations)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from google.protobuf import text_format
from google.protobuf.message import Message

from app.caffe.proto import caffe_pb2

SOLVER_TYPES = ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")
LR_POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid")
# Caffe's solver "type" strings for our upper-case names.
_CAFFE_TYPE = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
               "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


class SolverError(ValueError):
    """A solver field is wrong; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@dataclass
class Plan:
    """The solver and the numbers the runner reports progress with."""

    solver: Message
    max_iter: int
    iters_per_epoch: float | None


def parse_solver(text: str) -> Message:
    """Parse an uploaded solver prototxt."""
    sp = caffe_pb2().SolverParameter()
    try:
        text_format.Parse(text, sp)
    except text_format.ParseError as exc:
        raise SolverError("solver", f"The solver prototxt could not be parsed: {exc}") from None
    return sp


def build(params: dict, *, net_path: str, snapshot_prefix: str,
          train_count: int | None, val_count: int | None,
          train_batch: int | None, val_batch: int | None,
          base: Message | None = None) -> Plan:
    """Make the SolverParameter for a job from its params (see API.md)."""
    sp = caffe_pb2().SolverParameter()
    if base is not None:
        sp.CopyFrom(base)
    # Paths are always ours: an uploaded solver never chooses files.
    for f in ("net", "train_net", "test_net", "net_param", "train_net_param", "test_net_param"):
        sp.ClearField(f)
    sp.net = net_path
    sp.snapshot_prefix = snapshot_prefix

    # Batch accumulation (DIGITS's batch_accumulation): Caffe adds the
    # gradients of iter_size batches per iteration, so an epoch is counted in
    # effective batches of train_batch * iter_size images.
    if params.get("iter_size"):
        sp.iter_size = int(params["iter_size"])
    effective = train_batch * max(1, sp.iter_size) if train_batch else None
    # Whole iterations per epoch, rounded up as DIGITS does: snapshots and
    # validations at N epochs then fall on exact epoch numbers.
    per_epoch = math.ceil(train_count / effective) if train_count and effective else None
    if params.get("max_iter"):
        max_iter = int(params["max_iter"])
    elif per_epoch:
        max_iter = int(math.ceil(float(params.get("train_epochs") or 30) * per_epoch))
    elif sp.max_iter:
        max_iter = sp.max_iter
    else:
        raise SolverError("max_iter", "This network brings its own data: give max_iter (iterations).")
    if max_iter < 1:
        raise SolverError("max_iter", "max_iter must be at least 1.")
    sp.max_iter = max_iter

    def interval(name: str, default_epochs: float) -> int:
        epochs = params.get(name)
        if per_epoch:
            return max(1, int(round(float(epochs or default_epochs) * per_epoch)))
        return max(1, int(round(float(epochs) * max_iter))) if epochs else max_iter

    sp.test_interval = interval("val_interval", 1.0)
    sp.snapshot = interval("snapshot_interval", 1.0)
    sp.test_initialization = False
    sp.display = 0
    sp.ClearField("test_iter")
    sp.test_iter.append(max(1, math.ceil(val_count / val_batch)) if val_count and val_batch else 1)
    sp.ClearField("train_state")
    sp.train_state.stage.append("train")
    sp.ClearField("test_state")
    sp.test_state.add().stage.append("val")

    solver_type = (params.get("solver_type") or sp.type or "SGD").upper()
    if solver_type not in SOLVER_TYPES:
        raise SolverError("solver_type", f"solver_type must be one of {', '.join(SOLVER_TYPES)}.")
    sp.type = _CAFFE_TYPE[solver_type]
    sp.ClearField("solver_type")
    if params.get("learning_rate") is not None or not sp.HasField("base_lr"):
        sp.base_lr = float(params.get("learning_rate") or 0.01)
    _defaults(sp, solver_type)
    _lr_policy(sp, params, max_iter)
    if params.get("random_seed") is not None:
        sp.random_seed = int(params["random_seed"])
    return Plan(sp, max_iter, per_epoch)


def _defaults(sp: Message, solver_type: str) -> None:
    if not sp.HasField("weight_decay"):
        sp.weight_decay = 0.0005
    if solver_type in ("SGD", "NESTEROV", "ADAM") and not sp.HasField("momentum"):
        sp.momentum = 0.9
    if solver_type == "ADADELTA" and not sp.HasField("momentum"):
        sp.momentum = 0.95
    if solver_type == "ADAM" and not sp.HasField("momentum2"):
        sp.momentum2 = 0.999
    if solver_type == "RMSPROP" and not sp.HasField("rms_decay"):
        sp.rms_decay = 0.98
    if solver_type in ("ADAGRAD", "RMSPROP", "ADADELTA", "ADAM") and not sp.HasField("delta"):
        sp.delta = 1e-8 if solver_type != "ADADELTA" else 1e-6


def _lr_policy(sp: Message, params: dict, max_iter: int) -> None:
    policy = (params.get("lr_policy") or sp.lr_policy or "fixed").lower()
    if policy not in LR_POLICIES:
        raise SolverError("lr_policy", f"lr_policy must be one of {', '.join(LR_POLICIES)}.")
    sp.lr_policy = policy
    for name in ("gamma", "power"):
        if params.get(name) is not None:
            setattr(sp, name, float(params[name]))
    if params.get("stepsize") is not None:
        sp.stepsize = int(params["stepsize"])
    elif params.get("stepsize_percent") is not None:   # DIGITS: % of training
        sp.stepsize = max(1, int(round(max_iter * float(params["stepsize_percent"]) / 100)))
    if params.get("stepvalues"):
        sp.ClearField("stepvalue")
        sp.stepvalue.extend(int(v) for v in str(params["stepvalues"]).replace(",", " ").split())
    elif params.get("stepvalues_percent"):
        sp.ClearField("stepvalue")
        sp.stepvalue.extend(max(1, int(round(max_iter * float(v) / 100)))
                            for v in str(params["stepvalues_percent"]).replace(",", " ").split())
    # DIGITS-like defaults so every policy works without extra fields.
    if policy in ("step", "sigmoid") and not sp.stepsize:
        sp.stepsize = max(1, max_iter // 3 if policy == "step" else max_iter // 2)
    if policy in ("step", "multistep", "exp", "inv", "sigmoid") and not sp.HasField("gamma"):
        sp.gamma = {"step": 0.1, "multistep": 0.1, "exp": 0.95, "inv": 0.0001,
                    "sigmoid": -0.001}[policy]
    if policy in ("inv", "poly") and not sp.HasField("power"):
        sp.power = 0.75 if policy == "inv" else 1.0
    if policy == "multistep" and not sp.stepvalue:
        sp.stepvalue.extend([max(1, max_iter // 2), max(1, 3 * max_iter // 4)])


def lr_at(sp: Message, it: int) -> float:
    """The learning rate Caffe's SGDSolver::GetLearningRate gives at ``it``."""
    base, policy, gamma, power = sp.base_lr, sp.lr_policy, sp.gamma, sp.power
    if policy == "fixed":
        return base
    if policy == "step":
        return base * gamma ** (it // sp.stepsize)
    if policy == "exp":
        return base * gamma ** it
    if policy == "inv":
        return base * (1 + gamma * it) ** (-power)
    if policy == "multistep":
        return base * gamma ** sum(1 for v in sp.stepvalue if it >= v)
    if policy == "poly":
        return base * (1 - it / sp.max_iter) ** power
    if policy == "sigmoid":
        return base / (1 + math.exp(-gamma * (it - sp.stepsize)))
    return base


def to_text(sp: Message) -> str:
    """Emit solver prototxt."""
    return text_format.MessageToString(sp)


def snapshot_epoch(iteration: int, *, max_iter: int | None, train_epochs: float | None,
                   iters_per_epoch: float | None) -> float | int | None:
    """The epoch DIGITS names a snapshot by: iteration / (max_iter /
    train_epochs), 3 decimals, a whole number as an int; so a job's last
    snapshot is its epoch count exactly. Without train_epochs, by
    iterations per epoch; None when the job has no epochs at all."""
    if train_epochs and max_iter:
        epoch = round(iteration / (max_iter / float(train_epochs)), 3)
    elif iters_per_epoch:
        epoch = round(iteration / iters_per_epoch, 3)
    else:
        return None
    return int(epoch) if epoch == int(epoch) else epoch
