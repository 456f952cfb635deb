import os


def dist_env():
    return int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
