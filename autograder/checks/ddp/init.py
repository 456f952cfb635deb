"""ddp.init: setup_distributed() -> torch.device. Create the process group from torchrun's environment
(env://) with the backend that fits the device (NCCL for GPUs, gloo for CPUs); return cuda:LOCAL_RANK on
a GPU host, else cpu (the rule in autograder/rank/device.py).

Scenario, in every rank:
1. A simulated GPU host: torch.cuda reports GPUs, the environment is a made-up one drawn from
   the secret (RANK, LOCAL_RANK and WORLD_SIZE all differ, LOCAL_RANK is not 0), and
   init_process_group only records its arguments. The rank reports what the learner's code did
   (its behaviour under these inputs): it must pick cuda:LOCAL_RANK and NCCL.
2. For real, under torchrun's environment (no group exists before). Arguments that would hang
   or crash (a hard-coded rank, NCCL without GPUs) are refused in the rank, after every rank
   voted (files in the job's scratch), so that either all ranks or none call the real init.
3. The proof that the group is real: each rank all-reduces a secret value sent to it alone;
   the sum needs every rank. No tolerance: the values are integers, exact in float64.
"""
from __future__ import annotations

from ...rank.device import backend_for
from ...rank.groupwatch import init_problem
from ...verdict import CheckFailed, expect
from .. import Check, Run
from . import expected_devices, reads_rank_results


def _inputs(trial) -> list:
    rng = trial.rng
    gpus = rng.choice((4, 8))
    inputs = []
    for _ in range(trial.world_size):
        node, local = rng.randrange(1, 6), rng.randrange(1, gpus)       # local rank never 0, rank never local
        env = {"RANK": str(node * gpus + local), "LOCAL_RANK": str(local), "WORLD_SIZE": str((node + 1) * gpus),
               "LOCAL_WORLD_SIZE": str(gpus), "GROUP_RANK": str(node)}
        inputs.append({"simulated_env": env, "gpus": gpus, "value": float(rng.randrange(1, 10**9))})
    nonce = f"{rng.getrandbits(64):016x}"
    return [{**x, "nonce": nonce} for x in inputs]


def _expected(trial, inputs) -> dict:
    devices = expected_devices(trial)
    return {"devices": devices, "backend": backend_for(devices[0]), "sum": sum(x["value"] for x in inputs)}


def _fail_init_args(message: str, args: dict, *, gpu: bool) -> None:
    if "rank=" in message:
        raise CheckFailed(message, "Do not hard-code rank=0 (or any rank): every process would claim that rank and "
                                   "the group would never form. Leave rank and world_size out: env:// reads them "
                                   "from RANK and WORLD_SIZE, which torchrun sets for each process.")
    if "world_size=" in message:
        raise CheckFailed(message, "Leave world_size out: torchrun sets WORLD_SIZE for every process.")
    if "init_method" in message:
        raise CheckFailed(message, "torchrun exports MASTER_ADDR and MASTER_PORT: use the default init_method "
                                   "(env://) instead of an address of your own.")
    if args["backend"] is None:
        raise CheckFailed(message, "Pass the backend explicitly: 'nccl' when CUDA is available, else 'gloo'.")
    if gpu:
        raise CheckFailed(message, "With GPUs use NCCL (backend='nccl'): gloo would move every gradient through "
                                   "the CPU.")
    raise CheckFailed(message, "NCCL only drives GPUs: always-NCCL fails on a CPU machine. Choose the backend "
                               "from the device: 'nccl' if torch.cuda.is_available() else 'gloo'.")


def _judge_simulated(rank: int, sim: dict, env: dict) -> None:
    local, global_rank = env["LOCAL_RANK"], env["RANK"]
    where = (f"on a simulated GPU host (CUDA available, RANK={global_rank}, LOCAL_RANK={local}, "
             f"WORLD_SIZE={env['WORLD_SIZE']})")
    expect("error" not in sim, f"rank {rank}: setup_distributed() raised {sim.get('error')} {where}",
           "On a GPU host setup_distributed() should only pick the device, set it, and create the group; "
           "this part of the check pretends CUDA exists (nothing can run on that GPU).")
    expect(sim["init"] is not None, f"rank {rank}: setup_distributed() never called dist.init_process_group {where}",
           "Create the process group in every case: dist.init_process_group(backend=...).")
    problem = init_problem(sim["init"], env, "cuda", "nccl")
    if problem:
        _fail_init_args(f"rank {rank} {where}: {problem}", sim["init"], gpu=True)
    device, want = sim["device"], f"cuda:{local}"
    expect(device != "cuda:0", f"rank {rank}: returned cuda:0 {where}; expected {want}",
           "Every process on a node would use GPU 0: pick the GPU by LOCAL_RANK, "
           "torch.device('cuda', int(os.environ['LOCAL_RANK'])).")
    expect(device != f"cuda:{global_rank}", f"rank {rank}: returned cuda:{global_rank} {where}; expected {want}",
           "RANK counts processes across all nodes; a node has only LOCAL_WORLD_SIZE GPUs: "
           "use LOCAL_RANK to pick the GPU.")
    expect(device == want, f"rank {rank}: returned {device} {where}; expected {want}",
           "When torch.cuda.is_available(), return torch.device('cuda', LOCAL_RANK).")


@reads_rank_results
def _judge(run: Run) -> str:
    ws, want = run.world_size, run.expected
    for o, sent in zip(run.ranks, run.inputs):
        _judge_simulated(o.rank, o.result["simulated"], sent["simulated_env"])
    refused = [o for o in run.ranks if "refused" in o.result]
    if refused:
        _fail_init_args(f"rank {refused[0].rank}: {refused[0].result['refused']}", refused[0].result["init"],
                        gpu=False)
    for o in run.ranks:
        r, res = o.rank, o.result
        expect("peer_refused" not in res, f"{res.get('peer_refused')}",
               "Every rank must create the process group: call dist.init_process_group in setup_distributed().")
        expect(res["device"] == want["devices"][r],
               f"rank {r}: returned {res['device']}; expected {want['devices'][r]} on this machine",
               "Return torch.device('cpu') when torch.cuda.is_available() is False, else "
               "torch.device('cuda', LOCAL_RANK); a torch.device, not a str.")
        expect(res["initialized"], f"rank {r}: no process group after setup_distributed()",
               "Call dist.init_process_group(...) and do not destroy the group before returning.")
        # The sum decides: each rank held only its own secret value.
        if res.get("sum") != want["sum"]:
            said = f" (the group says rank {res.get('rank')} of {res.get('world_size')})"
            raise CheckFailed(f"rank {r}: an all_reduce over the new group gave {res.get('sum')}, not the sum of "
                              f"the {ws} ranks' values{said}",
                              "Let init_process_group read RANK and WORLD_SIZE from the environment (do not pass "
                              "them): the group must contain every rank that torchrun started.")
    return (f"setup_distributed() created a {want['backend']} group of all {ws} ranks (an all_reduce of each "
            f"rank's secret value gave their sum), returned {want['devices'][0]}, and picks cuda:LOCAL_RANK "
            f"with NCCL on a GPU host")


def _explain(error: dict) -> str | None:
    text = error["message"]
    if "trying to initialize the default process group twice" in text:
        return "setup_distributed() must create the group once; do not call it twice or init twice inside it."
    if error["type"] == "KeyError":
        return "Read LOCAL_RANK (and nothing else) from os.environ; torchrun sets it for every process."
    return None


CHECK = Check(id="ddp.init", functions=("setup_distributed",), inputs=_inputs, expected=_expected, judge=_judge,
              group="learner", explain=_explain)
