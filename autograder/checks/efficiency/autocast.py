"""efficiency.autocast: mixed_precision_step(model, optimizer, scaler, inputs, labels, loss_fn, dtype) -> float makes
one step with the forward under torch.autocast(dtype); with a GradScaler (fp16) it scales, steps and updates
through it (an overflowing step is skipped), with scaler=None (bf16) it steps directly; parameters stay fp32.

One plain process (local: no distribution is involved; world_size is ignored). Three cases on a small
EuroSATNet without BatchNorm, weights and data from the call's secret, plain SGD:

- fp16 with a GradScaler (init_scale 2^10, growth_interval 1): the weights after the step equal the
  course's own autocast step (reference.autocast_step) closely, and the fp32 step loosely; the scale
  after it is the reference's (doubled: a good step with growth_interval 1);
- fp16 with a GradScaler whose init_scale (2^40) makes the fp16 gradients overflow: the step must be
  skipped (weights unchanged, exactly) and the scale halved;
- bf16 with scaler=None: as the first case, without a scale.

Tolerances. "Closely": the same kernels on the same CPU thread count give the reference's numbers up
to summation order, so the gap to the reference must stay under CLOSE (a tenth) of the gap between the
reference's autocast step and its fp32 step (what autocast changes: ~1e-4..1e-3 of the weights here); a
step without autocast sits at that whole gap. "Loosely": within LOOSE (10%) of the update's size of the
fp32 step (mixed precision perturbs the update by well under that; a wrong step by all of it). The
parameters' dtypes (observed in the process) only name a failure.
"""
from __future__ import annotations

import math

from ...verdict import CheckFailed, expect
from .. import Check, Run
from ..draws import random_state
from ..replies import field

CLOSE, LOOSE = 0.1, 0.1
SCALE, OVERFLOW_SCALE = 2.0**10, 2.0**40
CASES = (("float16", SCALE, "fp16 with a GradScaler"), ("float16", OVERFLOW_SCALE, "fp16, gradients overflowing"),
         ("bfloat16", None, "bf16 without a scaler"))
AUTOCAST_HINT = ("Run the forward and the loss inside `with torch.autocast(device_type=inputs.device.type, "
                 "dtype=dtype):` (backward and the optimizer step outside it).")


def _spec(p: dict) -> dict:
    return {"kind": "eurosat", "width": p["width"], "blocks": p["blocks"], "norm": False}


def _inputs(trial) -> list:
    import torch

    p = trial.params
    spec = _spec(p)
    state = random_state(trial.generator(0), spec)
    g = trial.generator(1)
    cases = []
    for dtype, scale, _ in CASES:
        x = torch.randn(p["batch"], 3, p["image"], p["image"], generator=g)
        y = torch.randint(0, 10, (p["batch"],), generator=g)
        cases.append({"model": {**spec, "state": state}, "dtype": dtype, "scale": scale, "growth": 1, "x": x,
                      "y": y, "lr": p["lr"]})
    return [{"cases": cases}]


def _expected(trial, inputs) -> list:
    from . import reference

    out = []
    for case in inputs[0]["cases"]:
        spec = {k: v for k, v in case["model"].items() if k != "state"}
        args = dict(lr=case["lr"], growth=case["growth"])
        mixed = reference.autocast_step(spec, case["model"]["state"], case["x"], case["y"], dtype=case["dtype"],
                                        scale=case["scale"], **args)
        plain = reference.autocast_step(spec, case["model"]["state"], case["x"], case["y"], dtype=None, scale=None,
                                        **args)
        out.append({"mixed": mixed, "fp32": plain, "initial": {n: case["model"]["state"][n] for n in mixed["weights"]}})
    return out


def _distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float((a[n].float() - b[n]).double().norm() ** 2) for n in b))


def _weights(o, case: dict) -> dict:
    import torch

    got = field(o, "cases", list)[case]["weights"]
    if not isinstance(got, dict) or not all(isinstance(v, torch.Tensor) for v in got.values()):
        raise CheckFailed("the rank part sent back a malformed result", "")
    return got


def _judge(run: Run):
    o = run.ranks[0]
    results = field(o, "cases", list)
    expect(len(results) == len(CASES), "the rank part sent back a malformed result", "")
    figures = []
    for i, ((dtype, scale, name), want, got) in enumerate(zip(CASES, run.expected, results)):
        loss = got.get("loss")
        expect(isinstance(loss, float) and math.isfinite(loss) or scale == OVERFLOW_SCALE,
               f"{name}: mixed_precision_step returned {loss!r}, not the loss as a float",
               "Return loss.item() (the unscaled loss).")
        dtypes = got.get("dtypes")
        expect(dtypes == ["torch.float32"], f"{name}: after the step the parameters are {dtypes}",
               "Leave the parameters in fp32 (do not call model.half() or .to(dtype)): autocast casts the "
               "inputs of each operation, and the optimizer updates fp32 master weights.")
        weights = _weights(o, i)
        if scale == OVERFLOW_SCALE:
            import torch

            changed = [n for n, w in want["initial"].items() if not torch.equal(weights[n].float(), w)]
            expect(not changed, f"{name}: the step was applied although the scaled gradients overflowed "
                                f"({', '.join(changed[:2])} changed)",
                   "Step through the scaler: scaler.step(optimizer) unscales the gradients and skips the step when "
                   "one is inf or nan; never call optimizer.step() yourself when a scaler is given.")
            expect(got.get("scale") == want["mixed"]["scale"],
                   f"{name}: the scale after the skipped step is {got.get('scale')}, expected "
                   f"{want['mixed']['scale']:g} (halved)",
                   "Call scaler.update() after scaler.step(optimizer): it halves the scale after an overflow "
                   "(and grows it after a run of good steps).")
            figures.append("fp16 overflow skipped, scale halved")
            continue
        gap_mixed = _distance(weights, want["mixed"]["weights"])
        autocast_effect = _distance(want["fp32"]["weights"], want["mixed"]["weights"])
        update = _distance(want["fp32"]["weights"], want["initial"])
        gap_fp32 = _distance(weights, want["fp32"]["weights"])
        expect(gap_fp32 <= LOOSE * update,
               f"{name}: the step moved the weights {gap_fp32 / update:.0%} of an fp32 step's update away from "
               "it (mixed precision stays within a few percent)",
               "One step: zero_grad(), the forward and loss under autocast, backward (of the scaled loss with a "
               "scaler), one optimizer step (through the scaler when there is one).")
        expect(gap_mixed <= CLOSE * autocast_effect,
               f"{name}: the weights after the step are those of an fp32 step, not of a step under autocast "
               f"({gap_mixed:.2g} from the course's {dtype} step, {gap_fp32:.2g} from fp32)", AUTOCAST_HINT)
        expect(abs(loss - want["mixed"]["loss"]) <= 1e-3 * max(1.0, abs(want["mixed"]["loss"])),
               f"{name}: returned loss {loss:.6g}, the step's loss under autocast is {want['mixed']['loss']:.6g}",
               "Return the loss computed under autocast, unscaled: loss.item().")
        if scale is not None:
            expect(got.get("scale") == want["mixed"]["scale"],
                   f"{name}: the scale after a good step is {got.get('scale')}, expected {want['mixed']['scale']:g} "
                   "(grown: growth_interval=1)",
                   "Call scaler.update() after scaler.step(optimizer): it grows the scale after good steps and "
                   "halves it after an overflow.")
        figures.append(f"{name}: {gap_mixed / autocast_effect:.2g} of autocast's effect from the course's step")
    return "; ".join(figures) + "; parameters stay fp32"


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "NotImplementedError" in text:
        return "Write mixed_precision_step: the cell still raises NotImplementedError."
    if "NoneType" in text and ("scale" in text or "step" in text or "update" in text):
        return ("With dtype bfloat16 the scaler is None: step the optimizer directly (loss.backward(); "
                "optimizer.step()).")
    if "unscale FP16 gradients" in text:   # GradScaler refuses fp16 parameters' gradients
        return ("Your parameters are fp16: leave them in fp32 (no model.half() or .to(dtype)); autocast computes "
                "in fp16 and the optimizer updates fp32 weights.")
    if "unscale" in text or "inf checks" in text:
        return "Call scaler.step(optimizer) once per step, after scaler.scale(loss).backward(), then scaler.update()."
    return None


CHECK = Check(id="efficiency.autocast", functions=("mixed_precision_step",), inputs=_inputs, expected=_expected,
              judge=_judge, explain=_explain, group="none", local=True,
              defaults={"seed": 0, "width": 8, "blocks": 2, "image": 32, "batch": 8, "lr": 0.5})
