"""The one device/backend policy, tested on CPU with the values a GPU host would have."""
from __future__ import annotations

import pytest

from autograder import policy
from autograder.config import ConfigError
from autograder.harness import load_course


@pytest.fixture(scope="module")
def course():
    return load_course()


@pytest.mark.parametrize("gpus, env, expected", [
    (0, {}, "cpu"),
    (1, {}, "cpu"),                          # one GPU cannot show parallelism: cpu profile
    (2, {}, "gpu"),
    (8, {}, "gpu"),
    (8, {"COURSE_PROFILE": "cpu"}, "cpu"),   # environment override
])
def test_profile_choice(course, gpus, env, expected):
    assert policy.choose_profile(course, gpus=gpus, env=env).name == expected


def test_explicit_request_beats_environment(course):
    assert policy.choose_profile(course, "gpu", gpus=0, env={"COURSE_PROFILE": "cpu"}).name == "gpu"


def test_unknown_profile_is_a_config_error(course):
    with pytest.raises(ConfigError, match="unknown profile 'tpu'"):
        policy.choose_profile(course, "tpu", gpus=0, env={})


@pytest.mark.parametrize("gpus, ranks", [(2, 2), (4, 4), (8, 4)])
def test_gpu_profile_uses_one_rank_per_gpu_up_to_four(course, gpus, ranks):
    assert policy.ranks_for(course.profiles["gpu"], gpus=gpus) == ranks


def test_gpu_profile_without_gpus_explains(course):
    with pytest.raises(ConfigError, match="use --profile cpu"):
        policy.ranks_for(course.profiles["gpu"], gpus=0)


def test_cpu_profile_environment(course):
    assert policy.rank_env(course.profiles["cpu"]) == {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    assert policy.rank_env(course.profiles["gpu"]) == {}


@pytest.mark.parametrize("local_rank, cuda, device, backend, device_ids", [
    (0, False, "cpu", "gloo", None),
    (1, False, "cpu", "gloo", None),
    (0, True, "cuda:0", "nccl", [0]),
    (3, True, "cuda:3", "nccl", [3]),        # LOCAL_RANK picks the GPU, never RANK
])
def test_device_backend_and_ddp_device_ids(local_rank, cuda, device, backend, device_ids):
    d = policy.device_name(local_rank, cuda)
    assert (d, policy.backend_for(d), policy.ddp_device_ids(d)) == (device, backend, device_ids)
