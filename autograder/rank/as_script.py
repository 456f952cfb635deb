"""Run a training script in a rank forked from torchrun, as `python SCRIPT ARGS` would run it (the smoke
configuration's `!torchrun` launches, notebook.fork_launches):

    torchrun --run-path --start-method=fork .../autograder/rank/as_script.py SCRIPT [ARGS ...]

The script's folder comes first on sys.path (its sibling modules import), sys.argv is its own and it runs as
__main__. A forked rank ends with os._exit after flushing its output (multiprocessing's way), so it never runs
the interpreter's shutdown.
"""
import os
import runpy
import sys

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
