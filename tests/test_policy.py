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


@pytest.mark.parametrize("gpus, world_size, expected", [(4, 4, "gpu"), (2, 2, "gpu"), (2, 4, "cpu"), (0, 2, "cpu")])
def test_more_ranks_than_gpus_run_on_the_cpu_profile(course, gpus, world_size, expected):
    """tp.two_d's 2 x 2 mesh on a 2-GPU host: on the CPUs (gloo), not two ranks' NCCL on one GPU."""
    gpu = policy.choose_profile(course, "gpu", gpus=gpus, env={})
    assert policy.profile_for_ranks(course, gpu, world_size, gpus=gpus).name == expected
    cpu = policy.choose_profile(course, "cpu", gpus=gpus, env={})
    assert policy.profile_for_ranks(course, cpu, world_size, gpus=gpus) is cpu


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


@pytest.mark.parametrize("gpus_on_host, visible, expected", [
    (0, None, 0),
    (4, None, 4),
    (4, "", 0),          # the cpu profile hides every GPU
    (4, "1,3", 2),
    (2, "0,1,2,3", 2),   # cannot see more than the driver has
])
def test_gpu_count_without_torch(tmp_path, gpus_on_host, visible, expected):
    driver = tmp_path / "gpus"
    driver.mkdir()
    for i in range(gpus_on_host):
        (driver / f"0000:0{i}:00.0").mkdir()
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert policy.visible_gpu_count(env, str(driver)) == expected


def test_no_driver_means_no_gpu(tmp_path):
    assert policy.visible_gpu_count({}, str(tmp_path / "missing")) == 0
