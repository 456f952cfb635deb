"""fsdp.train: fsdp_train.py, the whole EuroSAT script under torchrun: each rank must hold about 1/N of what a rank
of DDP holds, and train like DDP.

Scenario. Two jobs of N ranks: the learner's files, and the course's DDP twin (the source notebook's
fsdp_train.py and fsdp_parts.py, with DDP swapped in where the script shards and saves: DDP_TWIN
below), a job the learner's code is not in. In each, the rank part calls main(argv) like a torchrun
launch, with --synthetic N and --fc-blocks 7: seven fully connected blocks of 1536 units give a
model of 14.4 M parameters (55 MiB; a rank cannot write a file over 64 MiB, the harness's output
limit) for little compute, so that what sharding saves shows in real memory.
The images and --seed are drawn here from the call's secret and sent to the ranks, which hand them
to load_data in place of eurosat.data.synthetic_tensors. Both jobs get the same inputs.

Memory, read from outside: session.Job polls /proc/<pid>/status of every rank while main() runs
(every 20 ms) and keeps the most RssAnon + RssShmem seen: the memory the process holds itself. The
libraries' code pages (RssFile, ~120 MiB paged in as code paths are first used, the same in both
runs, and shared between processes) are left out. What each rank added is counted from the DDP
twin's value before its run (the same imports, ~365 MiB), not from the learner's own: a script
could fill memory at import and free it when main() starts. A warm-up task first loads, in both
jobs, what the first optimizer step loads once (torch._dynamo, ~35 MiB). Both jobs run with
glibc's allocator told to return every block of 1 MiB or more to the kernel when it is freed
(ALLOCATOR: mmap_threshold, with transparent huge pages so that this costs few page faults). With
glibc's default, freed buffers stay in the heap and its arenas, and FSDP's per-unit all-gather and
reduce-scatter buffers made its resident memory exceed DDP's (measured: 713 vs 666 MiB); with it,
resident memory follows what is alive.

Measured on 2 busy CPU cores: DDP +305 to +311 MiB per rank (weights, gradients, DDP's buckets,
Adam's two moments: 5 x 55, plus ~30 MiB of activations and slack), FSDP +169 to +183 MiB (4 x 55
/ 2 sharded, one or two units gathered, and on rank 0 the gathered state dict it saves): 0.55 to
0.60x; with 3 ranks and reshard_after_forward=False 0.55x. A script that does not shard holds
1.00x. The pass line (course.yaml max_memory_ratio, for 2 ranks) leaves room for what the polling
misses, activations and allocator slack. With N ranks it keeps the same share of the ideal saving:
1 - (1 - line_2) (1 - 1/N) / (1/2). GPUs (NCCL): the memory lives on the device, which /proc does
not show: session.Job polls NVML's figure for each rank's pid (gpumemory.py; the caching
allocator's reserved memory plus the CUDA context), the warm-up creates the context on the rank's
GPU first, and what a rank added is again counted from the twin's value before its run. Both jobs
run with expandable segments (PYTORCH_CUDA_ALLOC_CONF), so that freed all-gather buffers can be
reused rather than fragmenting the cache: the GPU counterpart of ALLOCATOR's glibc setting. Not
measured on a GPU yet: where NVML is missing the memory is not judged (inconclusive).

Training: the losses main() returned (epoch by epoch) and the checkpoint rank 0 wrote (its bytes,
read after the measured run, loaded here with weights_only=True) must match the DDP twin's on the
same data, within ATOL + RTOL (checks/fsdp/__init__.py), but for strays: at most 1% of a tensor's elements
(one at least) may lie beyond it (fsdp.strays: with Adam, an element whose gradient sums to about zero takes a
step of up to lr whose sign the summation order decides). The twin's DDP does not broadcast buffers in
forward (forward_sync_buffers=False), since FSDP2 never does: in both runs each rank's BatchNorm
statistics follow its own batches until the script's given average_batchnorm_statistics averages
them, so the saved statistics match as well. What the optimizer held on each rank (local shard
bytes, DTensors or not, seen by a step hook in the rank) only chooses the hint.

Forgeries this defeats: a DDP script that recognises the comparison run in its own processes (the
old check trained DDP in the learner's processes after the script) and pads that run's optimizer
state finds no comparison run there: it runs in another job, from the course's files, and memory is
read by the kernel, not reported. A script that replaces the rank parts cannot bring the losses
and weights of training on data it never saw.
"""
from __future__ import annotations

from dataclasses import dataclass

from ... import measured
from ...verdict import CheckFailed, Inconclusive
from .. import Check
from . import ATOL, RTOL, excess, explain, is_state_dict, load_saved, one_thread, strays

ALLOCATOR = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576:glibc.malloc.hugetlb=1",
             "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
TWIN_MODULE = "fsdp_ddp_twin.py"
DDP_TWIN = '''"""fsdp_train.py with DDP where it shards and saves: the run the check fsdp.train compares with."""
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import fsdp_train as script


def replicate(model, **fsdp_kwargs):
    """A full copy of the model on every rank, its gradients all-reduced: what DDP holds per rank.

    Buffers are not broadcast in forward, as under FSDP2: each rank's BatchNorm statistics follow its
    own batches until the script averages them (average_batchnorm_statistics)."""
    if torch.cuda.is_available():
        gpu = torch.cuda.current_device()
        return DistributedDataParallel(model.to(torch.device("cuda", gpu)), device_ids=[gpu],
                                       forward_sync_buffers=False)
    return DistributedDataParallel(model, forward_sync_buffers=False)


def save_replica(replica, path):
    """Rank 0 writes the plain model's weights; every rank waits for the file."""
    if dist.get_rank() == 0:
        torch.save(replica.module.state_dict(), path)
    dist.barrier()


script.shard_model, script.save_full_checkpoint = replicate, save_replica
parse_args, load_data, main = script.parse_args, script.load_data, script.main
'''


def _draw(rng, n_images: int) -> dict:
    """The run's secret data: what load_data would get from synthetic_tensors, as exact uint8 images."""
    import torch

    from eurosat.data import synthetic_tensors

    data = {"seed": rng.randrange(2**31)}
    for name, n in (("train", n_images), ("val", max(n_images // 4, 16))):
        with one_thread():
            images, labels = synthetic_tensors(n, seed=rng.randrange(2**32))
        data[name] = [(images * 255).round().to(torch.uint8), labels]   # k / 255 in float32 round-trips exactly
    return data


def _inputs(data: dict, p: dict, ws: int, tag: str) -> list:
    from ...launch import free_port

    argv = ["--synthetic", len(data["train"][1]), "--epochs", p["epochs"], "--batch-size", p["batch_size"],
            "--lr", p["lr"], "--fc-blocks", p["fc_blocks"], "--fc-width", p["fc_width"]]
    if p["reshard_after_forward"] is not None:
        argv.append("--reshard-after-forward" if p["reshard_after_forward"] else "--no-reshard-after-forward")
    return [{**data, "argv": argv, "tag": tag, "port": free_port()}] * ws


@dataclass(frozen=True)
class MemoryThresholds:
    max_memory_ratio: float   # FSDP / DDP memory added per rank at 2 ranks (the line for N ranks: pass_line)


def memory_added(result, baseline, backend: str) -> list[int] | None:
    """Bytes each rank held while the task ran beyond `baseline` (a TaskResult of the DDP twin: what a rank holds
    before main() runs), read from outside; None where it cannot be measured.

    CPU: the most RssAnon + RssShmem seen in /proc minus the twin's value when its inputs were sent.
    Not the rank's own starting value: the learner's code could fill memory at import and free it
    when main() starts. GPUs (NCCL): the same with the device memory NVML reports for each rank's
    process (session.Job polls it like /proc); None without NVML (no figure for any rank).
    """
    if backend == "nccl":
        if not any(result.peak_device) or not any(baseline.start_device):
            return None
        return [max(0, peak - start) for peak, start in zip(result.peak_device, baseline.start_device)]
    return [max(0, peak - start) for peak, start in zip(result.peak_private, baseline.start_private)]


def _source(backend: str) -> str:
    """Where the memory figures come from: every process each rank started counts (meter.MemoryWindow)."""
    return ("NVML, the GPU driver, summed over each rank's processes" if backend == "nccl" else
            "/proc, summed over each rank's process tree")


def pass_line(two_ranks: float, ws: int) -> float:
    """The largest FSDP/DDP memory ratio allowed: the same share of the ideal saving (1 - 1/N) as at 2 ranks."""
    return 1.0 if ws < 2 else round(1 - (1 - two_ranks) * (1 - 1 / ws) * 2, 3)


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def _twin_sources(m) -> tuple[dict, bool]:
    """The DDP twin's files: the course's script when the source notebook is here, else (student pack) the
    learner's own files, as a self-check."""
    sources = m.reference_sources()
    if sources is None:
        folder = m.plan.path.parent
        return {f.name: f.read_text() for f in folder.glob("*.py") if f.name != TWIN_MODULE}, True
    return sources, False


def _runs(m, p: dict) -> tuple[dict, dict, bool]:
    """Run the learner's script, then the DDP twin, on the same secret data; (learner, ddp) results and files."""
    ws = m.world_size
    sources, self_baseline = _twin_sources(m)
    learner = m.learner_job(env=ALLOCATOR)
    data = _draw(m.trial.rng, p["images"])   # while the ranks import torch
    m.ready(learner)
    # The twin starts once the learner's files imported (a file that cannot even be imported costs one launch),
    # and imports torch while the learner's script trains.
    twin = m.reference_job({**sources, TWIN_MODULE: DDP_TWIN}, module=TWIN_MODULE, env=ALLOCATOR)
    runs = {}
    for name, job in (("FSDP", learner), ("DDP", twin)):
        if job is twin:
            m.ready(twin)
        inputs = _inputs(data, p, ws, f"run_{name.lower()}")
        m.run(job, "fsdp.warm_up", [{}] * ws)
        done = m.run(job, "fsdp.train", inputs, measure_memory=True)
        files = m.run(job, "fsdp.saved", [{"tag": inputs[0]["tag"]}] * ws)
        runs[name] = {"result": done, "files": files.results()[0]}
        m.close(job)   # its memory goes before the next run
    return runs["FSDP"], runs["DDP"], self_baseline


def _probe(outcome) -> dict:
    """What the optimizer held on this rank (observations), or {} if the rank sent something else."""
    res = outcome.result if isinstance(outcome.result, dict) else {}
    probe = res.get("optimizer")
    return probe if isinstance(probe, dict) else {}


def _fail(message: str, hint: str, details: dict) -> None:
    raise CheckFailed(message, hint, details)


def _judge_memory(fsdp: dict, ddp: dict, ws: int, m, details: dict) -> str | None:
    got = memory_added(fsdp["result"], ddp["result"], m.plan.profile.backend)
    base = memory_added(ddp["result"], ddp["result"], m.plan.profile.backend)
    if got is None or base is None:
        return None
    line = pass_line(m.trial.thresholds.max_memory_ratio, ws)
    ratios = [g / max(b, 1) for g, b in zip(got, base)]
    source = _source(m.plan.profile.backend)
    details["memory"] = {"ranks": list(range(ws)), "bytes": {"DDP": base, "FSDP": got}, "unit": "MiB",
                         "title": f"memory each rank added while training (read from {source})",
                         "ratio": round(max(ratios), 3), "threshold": line,
                         "before": {"FSDP": fsdp["result"].start_private, "DDP": ddp["result"].start_private},
                         "held": {"FSDP": _probe(fsdp["result"].outcomes[0]).get("held"),
                                  "DDP": _probe(ddp["result"].outcomes[0]).get("held")}}
    if ws > 1 and max(ratios) > line:   # one rank has nothing to shard over: the figure only
        kinds = [_probe(o) for o in fsdp["result"].outcomes]
        dtensors = sum(k.get("dtensors", 0) for k in kinds)
        params = sum(k.get("params", 0) for k in kinds)
        why = ("no parameter is a DTensor (DDP, or no shard_model?)" if not dtensors else
               "some parameters are plain tensors" if dtensors < params else
               "every parameter is a DTensor, yet the ranks hold more: is a full copy kept somewhere?")
        _fail(f"FSDP's ranks held {max(ratios):.2f}x DDP's memory per rank (up to {_mib(max(got))} MiB added "
              f"while training vs {_mib(max(base))} MiB for DDP, read from {source}); with {ws} ranks it must be at "
              f"most {line:.2f}x (ideal 1/{ws})",
              f"The model is not sharded: {why}. Call shard_model(model, ...) from fsdp_parts and create the "
              "optimizer after it.", details)
    return (f"FSDP's ranks held {max(ratios):.2f}x DDP's memory (at most {_mib(max(got))} vs {_mib(max(base))} MiB "
            f"added per rank, read from {source}; pass line {line:.2f}x, {ws} ranks)")


def _judge_training(fsdp: dict, ddp: dict, p: dict, details: dict) -> None:
    first = fsdp["result"].outcomes[0]
    probe = _probe(first)
    if not probe.get("steps"):
        _fail("fsdp_train.py never called optimizer.step()",
              "Keep the given training loop (train_one_epoch) and make sure main() trains for --epochs epochs.",
              details)
    orphaned = probe.get("dtensors") == 0 and probe.get("with_grad") == 0
    before = ("the optimizer's parameters are plain tensors that never get gradients: it was created before "
              "shard_model, so it holds the model's old parameters, which fully_shard replaced")
    hint_before = ("Create the optimizer after shard_model(model): fully_shard swaps every parameter for a "
                   "sharded DTensor, and the optimizer must step those.")
    want = ddp["result"].outcomes[0].result.get("losses")
    if not isinstance(want, list):
        raise measured.ReferenceFailed("the DDP twin returned no losses")
    for o in fsdp["result"].outcomes:
        got = o.result.get("losses") if isinstance(o.result, dict) else None
        if not (isinstance(got, list) and all(isinstance(x, float) for x in got)):
            _fail(f"rank {o.rank}: main() did not return the metrics with each epoch's train_loss",
                  "Keep the given main(argv): it returns the metrics dict.", details)
        if len(got) != len(want) or any(abs(a - b) > ATOL + RTOL * abs(b) for a, b in zip(got, want)):
            _fail(f"rank {o.rank}: the train losses {[round(x, 5) for x in got]} differ from DDP's "
                  f"{[round(x, 5) for x in want]} on the same data" + (f" ({before})" if orphaned else ""),
                  hint_before if orphaned else
                  "Keep the given data pipeline (DistributedSampler with the seed, set_epoch), seeding and loop; "
                  "shard with shard_model and create Adam after sharding, with --lr.", details)
    reference, problem = load_saved(ddp["files"].get("checkpoint") or b"")
    if problem or not is_state_dict(reference):
        raise measured.ReferenceFailed(f"the DDP twin wrote no usable checkpoint ({problem})")
    raw = fsdp["files"].get("checkpoint") if isinstance(fsdp["files"], dict) else None
    if not isinstance(raw, bytes):
        _fail("there is no checkpoint at --checkpoint after main() returned",
              "After training, every rank must call your save_full_checkpoint with the model and args.checkpoint.", details)
    state, problem = load_saved(raw)
    if problem or not is_state_dict(state) or set(state) != set(reference):
        _fail(f"the script's checkpoint is not the plain model's full state dict ({problem or 'other keys'})",
              "Every rank must call your save_full_checkpoint with the model and args.checkpoint (fsdp.checkpoint).",
              details)
    differing = strays(state, reference)
    if differing:
        key, off, numel = differing[0]
        statistics = key.endswith(("running_mean", "running_var"))
        _fail(f"after training, {off} of the {numel} elements of the saved {key} differ from DDP's on the same data "
              f"(by up to {excess(state[key], reference[key]) + ATOL:.2g})",
              "Keep the given average_batchnorm_statistics(model) call after every epoch: FSDP2 never synchronises "
              "BatchNorm's running statistics, so without it the checkpoint holds rank 0's alone." if statistics else
              "Train with the given loop on the sharded model, with Adam(model.parameters(), lr=args.lr) created "
              "after shard_model.", details)


def _measure(m) -> tuple[str, dict]:
    p, ws = m.call.params, m.world_size
    fsdp, ddp, self_baseline = _runs(m, p)
    details = {"seconds": {"FSDP": round(fsdp["result"].seconds, 2), "DDP": round(ddp["result"].seconds, 2)}}
    memory = _judge_memory(fsdp, ddp, ws, m, details)
    _judge_training(fsdp, ddp, p, details)
    trained = (f"trained like DDP on {p['images']} secret images ({p['epochs']} epochs: losses and saved weights "
               f"match)" + (" (self-check: DDP ran your own script)" if self_baseline else ""))
    if memory is None:
        raise Inconclusive(f"fsdp_train.py {trained}; GPU memory per rank could not be read (NVML, the NVIDIA "
                           "driver's library libnvidia-ml.so.1, is not available here)",
                           "Run the check where nvidia-smi works, or on the cpu profile (--profile cpu).", details)
    return f"{memory}; {trained}", details


def _explain(error: dict) -> str | None:
    hint = explain(error)
    if hint is None and "main" in error["message"] and error["type"] in ("AttributeError", "TypeError"):
        return "Keep the given main(argv=None) function: the check calls it with its own arguments."
    return hint


CHECK = Check(id="fsdp.train", functions=("main", "parse_args", "load_data"), measure=_measure, explain=_explain,
              thresholds=MemoryThresholds,
              defaults={"seed": 0, "images": 32, "epochs": 1, "batch_size": 8, "lr": 1e-3, "fc_blocks": 7,
                        "fc_width": 1536, "reshard_after_forward": None})
