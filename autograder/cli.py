"""The `course` command: check, release, grade, slurm-script, data, bench. Thin: each verb calls one module."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import ConfigError, Refused

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _check(args) -> int:
    from .harness import run_check

    overrides = {"module": args.module, "world_size": args.world_size, "profile": args.profile,
                 "time_limit": args.time_limit, "nnodes": args.nnodes}
    for item in args.param or []:
        key, _, value = item.partition("=")
        overrides[key] = _parse_value(value)
    verdict = run_check(args.exercise, **{k: v for k, v in overrides.items() if v is not None})
    print(verdict.to_json() if args.json else verdict.to_text(verbose=args.verbose))
    if verdict.status == "error":
        return EXIT_USAGE
    return EXIT_PASS if verdict.passed else EXIT_FAIL


def _check_all(args) -> int:
    """Every exercise whose file exists in its assignment's folder under `folder` (release/ by default)."""
    from .course import load_course
    from .harness import VerdictCache, run_check

    root, cache, failed, ran = Path(args.folder), VerdictCache(), 0, 0
    for a in load_course().assignments:
        for e in a.exercises:
            if (root / a.id / e.module).is_file():
                verdict = run_check(e.id, cwd=root / a.id, cache=cache)
                print(verdict.headline if verdict.passed else verdict.to_text())
                ran, failed = ran + 1, failed + (not verdict.passed)
    print(f"{ran - failed} of {ran} exercise(s) pass" if ran else f"no exercise file found under {root}")
    return EXIT_FAIL if failed or not ran else EXIT_PASS


def _student_pack(args) -> int:
    from .studentpack import make

    make(args.dest)
    return EXIT_PASS


def _parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _release(args) -> int:
    from .nbglue import release

    release(args.assignment or None)
    return EXIT_PASS


def _grade(args) -> int:
    from .grading import grade
    from .slurm import SlurmOptions

    options = SlurmOptions(partition=args.partition, gres=args.gres, max_parallel=args.max_parallel,
                           cpus_per_task=args.cpus_per_task, extra=tuple(args.sbatch_option or ())) \
        if args.slurm else None
    grade(args.submissions, out=args.out, assignments=args.assignment or None, jobs=args.jobs,
          unsafe_no_sandbox=args.unsafe_no_sandbox, slurm_options=options)
    return EXIT_PASS


def _slurm_script_parser() -> argparse.ArgumentParser:
    s = argparse.ArgumentParser(prog="course slurm-script", description="Write an sbatch script that runs SCRIPT "
                                "with torchrun on several nodes: options and SCRIPT in any order, the script's own "
                                "arguments after --, e.g. course slurm-script train.py --nodes 2 -- --epochs 3")
    s.add_argument("script", help="the Python script, e.g. whoami.py")
    s.add_argument("--nodes", type=int, default=2, help="nodes (default 2)")
    s.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node: one process each (default 0: CPU)")
    s.add_argument("--procs-per-node", type=int, help="processes per node (default: --gpus-per-node, or 1)")
    s.add_argument("--cpus-per-node", type=int, help="cores to ask for per node (default: one per process)")
    s.add_argument("--time", default="00:30:00", help="time limit, HH:MM:SS (default 00:30:00)")
    s.add_argument("--partition", help="the partition to submit to")
    s.add_argument("--max-restarts", type=int, default=3, help="torchrun restarts after a failure (default 3)")
    s.add_argument("--out", help="write the script to this file (default: print it)")
    return s


def _slurm_script(argv: list[str]) -> int:
    from .slurm import sbatch_script

    own, script_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = _slurm_script_parser().parse_args(own)
    text = sbatch_script(args.script, script_args, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                         procs_per_node=args.procs_per_node, cpus_per_node=args.cpus_per_node, time=args.time,
                         partition=args.partition, max_restarts=args.max_restarts, workdir=str(Path.cwd()))
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: submit it with `sbatch {args.out}`")
    else:
        print(text, end="")
    return EXIT_PASS


def _verify_install(args) -> int:
    from . import install

    if args.record:
        print(f"recorded the grader's files in {install.record()}")
        return EXIT_PASS
    changed = install.changes()
    if changed:
        print("changed since installation: " + ", ".join(changed))
        return EXIT_FAIL
    print("the grader's files are as installed")
    return EXIT_PASS


def _data(args) -> int:
    from eurosat.data import DataError
    from eurosat.prepare import prepare

    try:
        prepare(source=args.source, archive=args.archive, images_per_class=args.images_per_class,
                seed=args.seed, force=args.force)
    except (DataError, ValueError, OSError) as exc:
        print(f"course data: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_PASS


def _gpu_proof(args) -> int:
    from .gpuproof import one_screen, run

    summary = run(args.out, gpus=args.gpus, profile=args.profile, quick=args.quick, dry_run=args.dry_run)
    print(one_screen(summary))
    print(f"everything is in {args.out}/ (summary.json, logs/, notebooks/)")
    return EXIT_PASS if summary["passed"] else EXIT_FAIL


def _bench(args) -> int:
    from .bench import main as bench

    return bench(args.names)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="course", description="Data and Model Parallelism in PyTorch: course tools")
    sub = p.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("check", help="run one exercise's check (exit 0 pass, 1 fail, 2 usage/environment error)")
    c.add_argument("exercise", help="exercise id, e.g. ddp.wrap")
    c.add_argument("--module", help="the learner's file (default: the exercise's file in this folder)")
    c.add_argument("--world-size", type=int, help="number of ranks (default: the profile's)")
    c.add_argument("--nnodes", type=int, help="simulate this many nodes (torchrun agents) on this machine")
    c.add_argument("--profile", choices=["cpu", "gpu"], help="hardware profile (default: auto, or $COURSE_PROFILE)")
    c.add_argument("--time-limit", type=float, help="seconds before the ranks are stopped")
    c.add_argument("--param", action="append", metavar="KEY=VALUE", help="scenario parameter, e.g. seed=3")
    c.add_argument("--json", action="store_true", help="print the verdict as JSON")
    c.add_argument("-v", "--verbose", action="store_true", help="show the ranks' output on a pass too")
    c.set_defaults(run=_check)

    a = sub.add_parser("check-all", help="self-check every exercise whose file exists (exit 0 when all pass)")
    a.add_argument("folder", nargs="?", default="release", help="the folder of the assignment folders (release/)")
    a.set_defaults(run=_check_all)

    p_ = sub.add_parser("student-pack", help="write the students' copy: no solutions, hidden tests or references")
    p_.add_argument("dest", help="a new folder")
    p_.set_defaults(run=_student_pack)

    r = sub.add_parser("release", help="regenerate release/ from source/ through nbgrader")
    r.add_argument("assignment", nargs="*", help="assignment ids (default: all in course.yaml)")
    r.set_defaults(run=_release)

    g = sub.add_parser("grade", help="autograde submissions; write feedback and a grades CSV (resumable)")
    g.add_argument("submissions", help="folder STUDENT/ASSIGNMENT/NOTEBOOK.ipynb, or an LMS zip "
                                       "(files named STUDENT_..._NOTEBOOK.ipynb)")
    g.add_argument("--jobs", type=int, default=1, help="grade this many submissions at once, each on its own cores")
    g.add_argument("--out", default="grading", help="output folder (gradebook, feedback, grades.csv)")
    g.add_argument("--assignment", action="append", help="only these assignments")
    g.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="grade even where no sandbox can be made (student code then runs with your rights; "
                        "every row of grades.csv says so)")
    g.add_argument("--slurm", action="store_true", help="grade on a Slurm cluster: one array task per submission "
                                                        "(run this on a login node; the folders must be shared)")
    g.add_argument("--partition", help="--slurm: the partition to submit to")
    g.add_argument("--gres", help="--slurm: each task's generic resources, e.g. gpu:2")
    g.add_argument("--max-parallel", type=int, help="--slurm: at most this many tasks at once")
    g.add_argument("--cpus-per-task", type=int, default=2,
                   help="--slurm: cores per submission when no speed is measured (default 2; assignments that time "
                        "a speed-up get a whole node each)")
    g.add_argument("--sbatch-option", action="append", metavar="OPTION",
                   help="--slurm: one more sbatch option, e.g. --sbatch-option=--account=cs101 (repeatable)")
    g.set_defaults(run=_grade)

    sub.add_parser("slurm-script", help="write an sbatch script that runs a script with torchrun on several nodes "
                                        "(c10d rendezvous on the first node); course slurm-script -h for its options",
                   add_help=False)

    v = sub.add_parser("verify-install", help="compare the grader's files with the install record (course grade "
                                              "does this before and during grading)")
    v.add_argument("--record", action="store_true", help="record the current files as the installed state")
    v.set_defaults(run=_verify_install)

    d = sub.add_parser("data", help="prepare EuroSAT: download, --archive, or the offline synthetic stand-in")
    d.add_argument("--source", choices=["auto", "synthetic"], default="auto",
                   help="auto: real EuroSAT if it can be had, else synthetic (default)")
    d.add_argument("--archive", help="path to the EuroSAT RGB zip (EuroSAT.zip), for machines without internet")
    d.add_argument("--images-per-class", type=int, default=300, help="synthetic set size per class (default 300)")
    d.add_argument("--seed", type=int, default=0, help="synthetic set seed (default 0)")
    d.add_argument("--force", action="store_true", help="rebuild even if a dataset is already prepared")
    d.set_defaults(run=_data)

    b = sub.add_parser("bench", help="reference speed-ups, each check's cost over a bare torchrun, and grading "
                                     "cost, on this machine")
    b.add_argument("names", nargs="*", help="benchmarks to run: floor, ddp, pipeline, fsdp, scratch (the default: all five), "
                                            "grading, throughput (long: only when named)")
    b.set_defaults(run=_bench)

    gp = sub.add_parser("gpu-proof", help="prove the course on this (GPU) host: solutions pass, mistakes fail, "
                                          "measured figures, every notebook; everything written to one folder")
    gp.add_argument("--out", default="gpu-proof", help="the folder for summary.json, logs and executed notebooks")
    gp.add_argument("--gpus", type=int, help="GPUs to use (default: all that are visible)")
    gp.add_argument("--profile", choices=["cpu", "gpu"], help="default: gpu when a GPU is visible, else cpu")
    gp.add_argument("--quick", action="store_true", help="a short subset (the first graded assignment, one notebook)")
    gp.add_argument("--dry-run", action="store_true", help="plan every step and check the plan; run nothing")
    gp.set_defaults(run=_gpu_proof)
    return p


def _stop_like_ctrl_c(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    # `kill` and a closed terminal stop a command the way Ctrl-C does: its jobs are stopped and its temporary
    # folders (the reference's sources among them) removed on the way out.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _stop_like_ctrl_c)
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["slurm-script"]:   # its own parser: the script's arguments follow `--`, as in torchrun
        try:
            return _slurm_script(argv[1:])
        except SystemExit as exc:
            return int(exc.code or 0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"course: {exc}" if isinstance(exc, Refused) else f"course: configuration error: {exc}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("course: interrupted; every rank was stopped.", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:   # the student copy has no instructor tools
        if exc.name and exc.name.startswith("autograder."):
            print(f"course {args.verb}: not part of this copy of the course (the instructor's repository has it)",
                  file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
