"""tp.layers: ColumnParallelLinear(full) and RowParallelLinear(full), Megatron's layers by hand.

Scenario: one secret nn.Linear (in x out, bias unless `bias=False`), the same on every rank, and a secret input
(batch x tokens x in). The column layer gets the whole input; the row layer gets this rank's contiguous slice of the
input's features. Each output is multiplied by a secret upstream gradient (the column layer's: this rank's slice of
one full upstream gradient; the row layer's: the same full one on every rank, as after a replicated output) and
backpropagated. Evidence, on every rank, against the whole layer in one process:
- column: the output is this rank's slice of the output features; the input's gradient is the whole one (the sum
  of every slice's part: the all-reduce in backward, Megatron's f); the rank holds its rows of the weight and bias
  with their gradients;
- row: the output is the whole layer's, bias once (the all-reduce in forward, Megatron's g); the input slice's
  gradient is that slice of the whole one (g's backward is the identity); the rank holds its columns of the weight
  (and, if it keeps one, the whole bias) with their gradients.
Read, not run: neither layer may reach DTensor or the library's differentiable collectives (`avoid`).
"""
from __future__ import annotations

from ...verdict import CheckFailed, expect
from .. import Check, Run
from ..replies import reads_rank_results
from . import BY_HAND, close, gap, matches, my_slice, secret_tensor, secret_weights, weight_and_bias


def _draw(trial) -> dict:
    """The secret layer and tensors of this call (drawn again for the expected values: they never reach a rank)."""
    import torch
    from torch import nn

    p, g = trial.params, trial.generator(1)
    d_in, d_out, shape = int(p["in_features"]), int(p["out_features"]), (int(p["batch"]), int(p["tokens"]))
    with torch.random.fork_rng(devices=[]):
        state = secret_weights(nn.Linear(d_in, d_out, bias=bool(p["bias"])), g)
    return {"linear": {"in": d_in, "out": d_out, "bias": bool(p["bias"]), "state": state},
            "x_col": secret_tensor(g, *shape, d_in), "up_col": secret_tensor(g, *shape, d_out),
            "x_row": secret_tensor(g, *shape, d_in), "up_row": secret_tensor(g, *shape, d_out)}


def _inputs(trial) -> list:
    d, ws = _draw(trial), trial.world_size
    d_in, d_out = d["linear"]["in"], d["linear"]["out"]
    if d_in % ws or d_out % ws:
        raise ValueError(f"tp.layers: {d_in} input and {d_out} output features do not split over {ws} ranks")
    return [{"column": {"linear": d["linear"], "x": d["x_col"],
                        "upstream": d["up_col"][..., my_slice(d_out, r, ws)].contiguous()},
             "row": {"linear": d["linear"], "x": d["x_row"][..., my_slice(d_in, r, ws)].contiguous(),
                     "upstream": d["up_row"]}}
            for r in range(ws)]


def _expected(trial, inputs) -> dict:
    from . import reference

    d = _draw(trial)
    full = reference.linear(d["linear"])
    column = reference.backward_of(full, d["x_col"], d["up_col"])
    return {"column": column, "row": reference.backward_of(reference.linear(d["linear"]), d["x_row"], d["up_row"])}


def _column(run: Run) -> None:
    ws, want, sent = run.world_size, run.expected["column"], run.inputs[0]["column"]
    d_out, weight, bias = sent["linear"]["out"], sent["linear"]["state"]["weight"], sent["linear"]["state"].get("bias")
    for o in run.ranks:
        got, rows = o.result["column"], my_slice(d_out, o.rank, ws)
        where = f"ColumnParallelLinear, rank {o.rank}"
        out_shape = list(want["out"][..., rows].shape)
        if ws > 1 and got["shape"] == list(want["out"].shape):
            raise CheckFailed(f"{where}: returned all {d_out} output features, not its {d_out // ws}",
                              "A column-parallel layer returns this rank's slice of the output features; the next "
                              "layer (row-parallel) takes exactly that slice. No all-gather.")
        expect(got["shape"] == out_shape, f"{where}: returned shape {got['shape']}, expected {out_shape} (its slice "
               f"of the {d_out} output features)", "Keep rows [r n/N, (r + 1) n/N) of the weight (and of the bias).")
        expect(close(got["out"], want["out"][..., rows]), f"{where}: the output differs from output features "
               f"{rows.start}..{rows.stop - 1} of the whole layer ({gap(got['out'], want['out'][..., rows])})",
               "Rank r keeps the contiguous rows [r n/N, (r + 1) n/N) of the weight and bias, in rank order.")
        expect(got["x_grad"] is not None, f"{where}: the input received no gradient",
               "Keep the layer in autograd's graph: an autograd.Function whose backward returns the input's gradient.")
        if not close(got["x_grad"], want["x_grad"]):
            partial = run.inputs[o.rank]["column"]["upstream"] @ weight[rows]
            named = ws > 1 and close(got["x_grad"], partial)
            raise CheckFailed(f"{where}: the input's gradient " + (
                "is only this rank's part (its slice's contribution to dL/dx): it was not summed over the ranks"
                if named else f"differs from the whole layer's ({gap(got['x_grad'], want['x_grad'])})"),
                "Every rank used the same x, so dL/dx is the sum of every slice's part: all-reduce it in backward "
                "(Megatron's f: identity forward, all-reduce backward).")
        w, b = weight_and_bias(got["params"])
        _held(where, w, weight[rows], want["grads"]["weight"][rows], "rows", ws)
        if bias is not None:
            expect(b is not None and close(b["value"], bias[rows]), f"{where}: no parameter holds rows "
                   f"{rows.start}..{rows.stop - 1} of the bias", "Keep this rank's slice of the bias with the weight.")
            expect(close(b["grad"], want["grads"]["bias"][rows]), f"{where}: the bias's gradient differs "
                   f"({gap(b['grad'], want['grads']['bias'][rows])})", "Let autograd compute it from your output.")


def _held(where: str, entry, value, grad, what: str, ws: int) -> None:
    expect(entry is not None, f"{where}: holds no 2-D parameter (the weight)",
           "Keep the weight's slice as an nn.Parameter of the layer.")
    if ws > 1 and entry["value"].numel() > value.numel():
        raise CheckFailed(f"{where}: holds {entry['value'].numel()} weight elements, the whole layer's, not its "
                          f"{value.numel()}", f"Keep only this rank's {what} of the weight (a copy of the slice).")
    expect(matches(entry["value"], value), f"{where}: the weight it holds is not its {what} of the full weight",
           f"Rank r keeps the contiguous {what} [r n/N, (r + 1) n/N) of the weight, in rank order.")
    expect(matches(entry["grad"], grad), f"{where}: the weight's gradient differs from that slice of the whole "
           f"layer's ({gap(entry['grad'], grad) if entry['grad'] is not None else 'no gradient'})",
           "Let autograd compute it: use the parameter in forward (F.linear(x, self.weight, ...)).")


def _row(run: Run) -> None:
    ws, want, sent = run.world_size, run.expected["row"], run.inputs[0]["row"]
    d_in, state = sent["linear"]["in"], sent["linear"]["state"]
    weight, bias = state["weight"], state.get("bias")
    for o in run.ranks:
        got, columns = o.result["row"], my_slice(d_in, o.rank, ws)
        where = f"RowParallelLinear, rank {o.rank}"
        expect(got["shape"] == list(want["out"].shape), f"{where}: returned shape {got['shape']}, expected "
               f"{list(want['out'].shape)} (the whole output)", "The row-parallel layer returns every output feature.")
        if not close(got["out"], want["out"]):
            x_local = run.inputs[o.rank]["row"]["x"]
            partial = x_local @ weight[:, columns].T
            if ws > 1 and bias is not None and close(got["out"], want["out"] + (ws - 1) * bias):
                raise CheckFailed(f"{where}: the output is the whole layer's plus {ws - 1} x the bias: the bias was "
                                  f"added on every rank before the sum", "Add the bias once: after the all-reduce "
                                  "(or on one rank only before it).")
            if ws > 1 and (close(got["out"], partial) or (bias is not None and close(got["out"], partial + bias))):
                raise CheckFailed(f"{where}: the output is this rank's partial sum (its input features only): it "
                                  f"was not summed over the ranks", "All-reduce the partial outputs in forward "
                                  "(Megatron's g: all-reduce forward, identity backward).")
            raise CheckFailed(f"{where}: the output differs from the whole layer's ({gap(got['out'], want['out'])})",
                              "Rank r keeps columns [r n/N, (r + 1) n/N) of the weight (its input features); sum "
                              "the partial outputs over the ranks, then add the bias once.")
        want_x = want["x_grad"][..., columns]
        expect(got["x_grad"] is not None, f"{where}: the input slice received no gradient",
               "Keep the layer in autograd's graph: an autograd.Function whose backward returns the gradient.")
        if not close(got["x_grad"], want_x):
            named = ws > 1 and close(got["x_grad"], ws * want_x)
            raise CheckFailed(f"{where}: the input slice's gradient " + (
                f"is {ws} x the right one: the backward all-reduced it too" if named
                else f"differs from that slice of the whole layer's ({gap(got['x_grad'], want_x)})"),
                "The output is the same on every rank and so is its gradient: g's backward passes it through "
                "unchanged (identity), each rank to its own slice.")
        w, b = weight_and_bias(got["params"])
        _held(where, w, weight[:, columns], want["grads"]["weight"][:, columns], "columns", ws)
        if b is not None:
            expect(close(b["value"], bias) if bias is not None else False, f"{where}: the 1-D parameter it holds "
                   "is not the layer's bias", "Keep the whole bias (it is not split) and add it once.")
            expect(close(b["grad"], want["grads"]["bias"]), f"{where}: the bias's gradient differs "
                   f"({gap(b['grad'], want['grads']['bias'])})", "Add the bias after the all-reduce, once.")


@reads_rank_results
def _judge(run: Run) -> str:
    _column(run)
    _row(run)
    ws = run.world_size
    return (f"ColumnParallelLinear and RowParallelLinear matched the whole layer on {ws} rank(s): each rank's output "
            f"slice and the whole output, the input's gradient (summed over the ranks for the column layer), and "
            f"each rank's slice of the weight and its gradient")


def _explain(error: dict) -> str | None:
    text = f"{error['type']}: {error['message']}"
    if "mat1 and mat2" in text or "shapes cannot be multiplied" in text:
        return ("A shape mismatch in the matmul: the column layer keeps rows (output features) of the weight, the "
                "row layer keeps columns (input features) and takes only this rank's slice of the input.")
    if "Default process group" in text:
        return "The harness made the process group: use dist.get_rank() and dist.get_world_size(), do not init one."
    return None


CHECK = Check(id="tp.layers", functions=("ColumnParallelLinear", "RowParallelLinear"), inputs=_inputs,
              expected=_expected, judge=_judge, explain=_explain, avoid=BY_HAND,
              defaults={"in_features": 48, "out_features": 72, "batch": 3, "tokens": 5, "bias": True})
