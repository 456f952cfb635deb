"""global_mean does its work in a forked child that holds 300 MB while it runs: memory measured for one pid would
miss it."""
import subprocess
import sys

import torch.distributed as dist

HOLD = "import time; x = bytearray(300 * 2**20); x[::4096] = b'x' * len(x[::4096]); time.sleep(1.5)"


def global_mean(t):
    subprocess.run([sys.executable, "-c", HOLD], check=True)
    total = t.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()
