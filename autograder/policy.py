"""The one device/backend policy: which profile, how many ranks, which device and backend per rank.

Pure functions of plain values (GPU count, environment), so the CUDA/NCCL path
is tested on CPU machines by passing the values a GPU host would have.
"""
from __future__ import annotations

import os
from typing import Mapping

from .config import ConfigError, Course, Profile
from .rank.device import backend_for, ddp_device_ids, device_name  # noqa: F401  (the one rule, both sides)

PROFILE_ENV = "COURSE_PROFILE"


def visible_gpu_count(env: Mapping[str, str] = os.environ, driver_dir: str = "/proc/driver/nvidia/gpus") -> int:
    """NVIDIA GPUs this process may use, read without importing torch (a notebook cell stays fast).

    The driver lists one folder per GPU; CUDA_VISIBLE_DEVICES narrows that ("" hides all).
    """
    try:
        installed = len(os.listdir(driver_dir))
    except OSError:
        return 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return installed
    return min(installed, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))


def choose_profile(course: Course, requested: str | None = None, *, gpus: int | None = None,
                   env: Mapping[str, str] = os.environ) -> Profile:
    """An explicit request wins, then $COURSE_PROFILE; else gpu with >= 2 GPUs, cpu otherwise."""
    name = requested or env.get(PROFILE_ENV)
    if not name:
        gpus = visible_gpu_count() if gpus is None else gpus
        name = "gpu" if gpus >= 2 and "gpu" in course.profiles else "cpu"
    if name not in course.profiles:
        raise ConfigError(f"unknown profile {name!r}; course.yaml defines: {', '.join(course.profiles)}")
    return course.profiles[name]


def ranks_for(profile: Profile, *, gpus: int | None = None) -> int:
    """Default number of ranks: the profile's fixed count, or one per GPU up to max_ranks."""
    if profile.ranks is not None:
        return profile.ranks
    gpus = visible_gpu_count() if gpus is None else gpus
    if gpus < 1:
        raise ConfigError(f"profile {profile.name!r} needs GPUs, and none is visible; use --profile cpu")
    return min(gpus, profile.max_ranks)


def profile_for_ranks(course: Course, profile: Profile, world_size: int, *, gpus: int | None = None) -> Profile:
    """The profile a call of `world_size` ranks runs under: `profile`, unless it puts one rank on each GPU and
    there are fewer GPUs than ranks (tp.two_d's 2 x 2 mesh on a 2-GPU host); then the course's CPU profile, which
    the verdict names ("[4 ranks, cpu]"), rather than two ranks' NCCL on one device or a rank on none."""
    if profile.backend != "nccl":
        return profile
    gpus = visible_gpu_count() if gpus is None else gpus
    if world_size <= gpus:
        return profile
    fallback = next((p for p in course.profiles.values() if p.backend == "gloo"), None)
    if fallback is None:
        raise ConfigError(f"{world_size} ranks need {world_size} GPUs under profile {profile.name!r} ({gpus} "
                          "visible), and course.yaml defines no CPU (gloo) profile to run them on")
    return fallback


def rank_env(profile: Profile) -> dict[str, str]:
    """Environment every rank of a check runs with under this profile."""
    env = {}
    if profile.threads_per_rank is not None:
        env["OMP_NUM_THREADS"] = str(profile.threads_per_rank)
    if profile.hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env
