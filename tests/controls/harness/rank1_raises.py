import os


def dist_env():
    if os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 fell over")
    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
