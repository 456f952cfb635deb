"""concepts.memory: training_memory_bytes(n_params, optimizer, precision, world_size, shard), bytes per rank."""
from __future__ import annotations

from .. import Check
from . import WORLD_SIZES, inputs, judge_answers

OPTIMIZERS, PRECISIONS, SHARDS = ("adam", "sgd"), ("fp32", "mixed"), ("none", "zero1", "zero2", "zero3")

# The visible table, in teaching order: each part of the state alone first, then sharding.
CASES = [
    (1_000_000, "adam", "fp32", 1, "none"), (1_000_000, "sgd", "fp32", 1, "none"),
    (1_000_000, "adam", "mixed", 1, "none"), (1_000_000, "sgd", "mixed", 1, "none"),
    (0, "adam", "fp32", 1, "none"),
    (1_500_000_000, "adam", "mixed", 8, "none"), (1_500_000_000, "adam", "mixed", 8, "zero1"),
    (1_500_000_000, "adam", "mixed", 8, "zero2"), (1_500_000_000, "adam", "mixed", 8, "zero3"),
    (1_500_000_000, "adam", "fp32", 8, "zero1"), (1_500_000_000, "adam", "fp32", 8, "zero2"),
    (7_000_000_000, "sgd", "fp32", 4, "zero1"), (7_000_000_000, "sgd", "mixed", 4, "zero2"),
    (6_000_000, "sgd", "fp32", 3, "zero3"), (1_000_000, "adam", "fp32", 1, "zero3"),
    (1_000_000, "sgd", "mixed", 1, "zero1"),
]
INVALID = [
    ((1_000_000,), {"world_size": 0}, "world_size < 1"),
    ((1_000_000,), {"world_size": 0, "shard": "zero3"}, "world_size < 1"),
    ((-1,), {}, "negative n_params"),
    ((1_000_000,), {"shard": "zero4"}, "unknown shard"),
    ((1_000_000,), {"optimizer": "lion"}, "unknown optimizer"),
    ((1_000_000,), {"precision": "fp8"}, "unknown precision"),
]

_STAGES = ("ZeRO-1 (zero1) shards only the optimizer state; ZeRO-2 (zero2) also the gradients; ZeRO-3 (zero3, "
           "FSDP) also the weights. Divide just the sharded parts by world_size.")
HINTS = {
    "weights only": "Training keeps much more than the weights: add the gradients (one per parameter) and the "
                    "optimizer state (Adam: two moments).",
    "optimizer state forgotten": "Count the optimizer state too: Adam keeps two fp32 moments per parameter "
                                 "(exp_avg, exp_avg_sq: 8 B), SGD with momentum one fp32 buffer (4 B); mixed "
                                 "precision adds the 4 B fp32 master copy.",
    "gradients forgotten": "Count the gradients: backward() fills a .grad as large as each parameter (4 B in fp32, "
                           "2 B in mixed precision).",
    "Adam counted with one moment": "Adam keeps two fp32 moments per parameter (exp_avg and exp_avg_sq): 8 B, not 4 B.",
    "SGD counted like Adam": "SGD with momentum keeps one fp32 buffer per parameter (4 B), Adam two (8 B).",
    "mixed precision counted as 2 B for everything": "Mixed precision computes with 2-byte weights and gradients, but "
        "the optimizer still works in fp32: it keeps a 4 B fp32 master copy of the weights plus fp32 moments "
        "(Adam: 4 + 8 = 12 B).",
    "fp32 master copy of the weights forgotten": "In mixed precision the optimizer updates an fp32 master copy of the "
        "weights (4 B per parameter, part of the optimizer state) and copies it into the 2-byte weights.",
    "mixed precision split as in fp32": "The total per parameter is the same in mixed precision and fp32 (Adam: 16 B), "
        "but it splits differently: mixed keeps 2 B weights, 2 B gradients and 12 B optimizer state (fp32 master + "
        "moments). ZeRO shards the parts separately, so the split matters.",
    "mixed precision with fp32 weights and gradients": "In mixed precision the weights and gradients used in forward "
        "and backward are 2-byte (bf16/fp16); the fp32 copy lives in the optimizer state.",
    "shard='none' divided by the world size": "shard='none' is plain data parallelism (DDP): every rank keeps a full "
        "copy of weights, gradients and optimizer state, whatever the world size.",
    "nothing sharded": "With ZeRO each rank keeps only 1/world_size of the sharded parts. " + _STAGES,
    "zero1 also shards the gradients": "Sharding the wrong parts: ZeRO-1 keeps full gradients on every rank. " + _STAGES,
    "zero2 also shards the weights": "Sharding the wrong parts: ZeRO-2 keeps full weights on every rank. " + _STAGES,
    "zero2 does not shard the gradients": "Sharding the wrong parts: ZeRO-2 also divides the gradients by world_size. "
        + _STAGES,
    "zero3 does not shard the weights": "Sharding the wrong parts: ZeRO-3 also divides the weights by world_size. "
        + _STAGES,
    "everything sharded": "Sharding the wrong parts: only ZeRO-3 divides everything by world_size. " + _STAGES,
    "total over all ranks instead of per rank": "Return the bytes on ONE rank, not the sum over all ranks.",
    "bytes per parameter, not for the model": "Multiply the bytes per parameter by n_params.",
    **{f"not in bytes (in {unit})": "Return bytes: no conversion to bits, MB or GB."
       for unit in ("bits", "MB", "MiB", "GB", "GiB")},
}
SIGNATURE = ("Keep the signature from the exercise: training_memory_bytes(n_params, optimizer='adam', "
             "precision='fp32', world_size=1, shard='none'); the check passes the last four by name.")
GENERIC = ("Bytes per parameter: weights + gradients + optimizer state (fp32 Adam 4 + 4 + 8, mixed Adam 2 + 2 + 12, "
           "fp32 SGD 4 + 4 + 4, mixed SGD 2 + 2 + 8), times n_params; " + _STAGES)


def _cases(trial) -> list[tuple]:
    rng = trial.rng
    cases = list(CASES)
    for _ in range(int(trial.params["cases"])):
        ws = rng.choice(WORLD_SIZES)
        cases.append((ws * rng.randint(1, 10**9), rng.choice(OPTIMIZERS), rng.choice(PRECISIONS), ws,
                      rng.choice(SHARDS)))
    return cases


def _inputs(trial) -> list:
    calls = [((n,), dict(optimizer=o, precision=p, world_size=ws, shard=s)) for n, o, p, ws, s in _cases(trial)]
    return inputs("training_memory_bytes", calls, INVALID)


def _expected(trial, sent) -> dict:
    from . import reference

    calls = [(a, k) for a, k in sent[0]["calls"]]
    return {"cases": reference.predictions(reference.memory, reference.MEMORY_MISTAKES, calls),
            "invalid": [why for _, _, why in INVALID]}


def _judge(run) -> str:
    judge_answers(run, hints=HINTS, generic_hint=GENERIC, signature_hint=SIGNATURE,
                  invalid_hint="n_params >= 0, world_size >= 1, optimizer in ('adam', 'sgd'), precision in "
                               "('fp32', 'mixed'), shard in ('none', 'zero1', 'zero2', 'zero3').")
    calls = run.inputs[0]["calls"]
    return (f"training_memory_bytes() matched the reference on {len(calls)} cases (Adam/SGD, fp32/mixed, "
            f"none/zero1/zero2/zero3, 1 to {max(k['world_size'] for _, k in calls)} ranks) and rejected "
            f"{len(INVALID)} invalid calls")


CHECK = Check(id="concepts.memory", functions=("training_memory_bytes",), inputs=_inputs, expected=_expected,
              judge=_judge, part="concepts.calls", group="none", local=True, defaults={"seed": 0, "cases": 24})
