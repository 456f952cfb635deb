import os
import subprocess


def dist_env():
    # A child in its own session, told to outlive everything: the harness must still find and kill it.
    subprocess.Popen(["sleep", "600"], start_new_session=True)
    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
