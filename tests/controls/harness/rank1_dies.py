import os


def dist_env():
    if os.environ["RANK"] == "1":
        os._exit(3)  # no exception, no result: the process just ends
    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
