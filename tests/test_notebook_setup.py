"""The notebooks' setup cell: torchrun demo lines are not run while nbgrader grades, and only then."""
from __future__ import annotations

import pytest

from autograder.notebook import skip_launches_while_grading


@pytest.mark.parametrize("line", [
    "!torchrun --standalone --nproc-per-node {NPROC} hello.py\n",
    "    !torchrun --nproc-per-node 2 train.py --epochs 3\n",
    "!TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone --max-restarts 1 train_ft.py\n",
    "!{sys.executable} -m torch.distributed.run --nproc-per-node 2 x.py\n",
])
def test_launch_lines_become_a_printed_note(line):
    [out] = skip_launches_while_grading([line])
    assert "[not run while grading]" in out and ("torchrun" in out or "torch.distributed.run" in out)
    assert out.strip().startswith("print(") and out.startswith(line[: len(line) - len(line.lstrip())])
    compile(out.strip(), "<cell>", "exec")  # still valid Python


@pytest.mark.parametrize("line", [
    "!ls -la\n", "x = 'torchrun'\n", "# !torchrun in a comment\n", "subprocess.run(['torchrun', 'a.py'])\n",
])
def test_other_lines_are_left_alone(line):
    assert skip_launches_while_grading([line]) == [line]
