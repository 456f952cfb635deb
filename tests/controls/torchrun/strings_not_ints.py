import os


def dist_env():
    return os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]
