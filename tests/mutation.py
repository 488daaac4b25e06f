"""`make mutation`: mutation testing, with cosmic-ray, of the modules where a wrong line trains a
wrong model or writes a wrong dataset.

Each target mutates one module (or only the named functions of it) and runs, for every mutant, only
the fast tests that exercise that module; a mutant is caught ("killed") when they fail or time out.
The operators are cosmic-ray's, one alternative per operator as mutmut picks them (`+` → `-`, `<` →
`<=` and `<` → `>=`, a number ± 1, `and` → `or`, `not` added or dropped, a loop that runs zero
times, ...): replacing `+` by each of the eleven other binary operators mostly repeats what one
replacement shows, at eleven times the cost.

cosmic-ray writes each mutant into the file itself, so everything runs on a copy of the working tree
(`runs/mutation/tree`, refreshed at the start), imported through PYTHONPATH ahead of the editable
install: the checkout is never touched, and other test runs do not see mutants. A fresh Python that
imports torch costs several seconds per mutant, more than most of the tests, so the test command
cosmic-ray runs is a small client of a fork server: one process imports the third-party libraries
once (and runs nothing), and each mutant's pytest runs in a fork of it, which imports the project
(mutant included) from the tree. Not part of CI (each target's time is in BENCHMARKS.md, "Mutation
testing"). Per target it prints one score line and writes `runs/mutation/<target>.survivors.txt`
(line, operator and diff of every mutant that survived); `docs/mutation.md` says why each survivor
is equivalent, or which test catches it now.

    python tests/mutation.py [target ...]          # all targets when none is named
    make mutation MUTATE="lab gan"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "mutation"
TREE = WORK / "tree"
PYTHON = sys.executable
COSMIC_RAY = str(Path(PYTHON).with_name("cosmic-ray"))

# One alternative per operator (cosmic-ray's operator names, without the `core/` prefix).
OPERATORS = re.compile(
    r"core/("
    r"ReplaceBinaryOperator_(Add_Sub|Sub_Add|Mul_Div|Div_Mul|FloorDiv_Div|Mod_FloorDiv|Pow_Mul"
    r"|BitOr_BitAnd|BitAnd_BitOr|BitXor_BitOr|RShift_LShift|LShift_RShift)"
    r"|ReplaceComparisonOperator_(Eq_NotEq|NotEq_Eq|Lt_LtE|LtE_Lt|Gt_GtE|GtE_Gt|Lt_GtE|LtE_Gt|Gt_LtE|GtE_Lt"
    r"|Is_IsNot|IsNot_Is)"
    r"|ReplaceUnaryOperator_(USub_UAdd|Delete_Not|Delete_USub|Delete_Invert)"
    r"|AddNot|ReplaceTrueWithFalse|ReplaceFalseWithTrue|ReplaceAndWithOr|ReplaceOrWithAnd"
    r"|ReplaceBreakWithContinue|ReplaceContinueWithBreak|ExceptionReplacer|NumberReplacer|RemoveDecorator"
    r"|ZeroIterationForLoop"
    r")$"
)


@dataclass(frozen=True)
class Target:
    """One module to mutate, the tests that judge its mutants, and optionally which functions."""

    name: str
    module: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    """Only mutations inside these functions or classes (cosmic-ray's definition name); all when empty."""


TARGETS = (
    Target(
        "gan",
        "launch/training/gan.py",
        (
            "tests/test_gan_steps.py",
            "tests/test_critic_ema.py::test_critic_step_changes_only_d",
            "tests/test_critic_ema.py::test_ds_logged_terms_are_those_of_its_outputs_on_the_real_and_the_fake_half",
            "tests/test_train_parts.py::test_vgg_weights_are_fetched_by_the_main_process_first",
            "tests/test_train_parts.py::test_the_vgg_is_built_exactly_when_a_phase_that_runs_weighs_its_features",
            "tests/test_train_parts.py::test_cuda_settings_apply_only_on_cuda_and_sync_batchnorm_only_across_processes",
            "tests/test_train_parts.py::test_a_cpu_run_of_two_processes_keeps_plain_batchnorm_with_sync_batchnorm_on",
        ),
    ),
    Target(
        "schedule",
        "launch/training/schedule.py",
        (
            "tests/test_train_parts.py::test_phases_and_switch",
            "tests/test_train_parts.py::test_warmup_restarts_each_phase",
            "tests/test_gan_steps.py::test_learning_rates_follow_the_phase",
        ),
    ),
    Target("checkpoint", "launch/training/checkpoint.py", ("tests/test_train_parts.py", "-k", "checkpoint")),
    Target(
        "lab",
        "pipeline/lab.py",
        ("tests/test_lab.py", "tests/test_loader.py::test_uint8_lab_step_matches_reference_and_skimage"),
    ),
    Target(
        "lab_uint8",
        "pipeline/lab_uint8.py",
        (
            "tests/test_loader.py::test_uint8_lab_step_matches_reference_and_skimage",
            "tests/test_loader.py::test_fast_lab_step_matches_reference_on_every_uint8_colour",
        ),
    ),
    # The loaders' views: crop windows, resizing and flips.
    Target(
        "cpu_finish", "pipeline/cpu_finish.py", ("tests/test_loader.py", "-m", "not slow", "-k", "dali_cpu or centre")
    ),
    Target(
        "dali_views",
        "pipeline/dali_pipeline.py",
        ("tests/test_loader.py", "-k", "dali_cpu or centre or graph_is_valid or (one_pass_ends and dali)"),
        functions=("centre_square_roi", "colorization_pipeline"),
    ),
    Target(
        "torch_views",
        "pipeline/torch_loader.py",
        ("tests/test_loader.py::test_torch_views_equal_the_torchvision_transforms_they_replace",),
        functions=("View", "sample_view", "apply_view", "finish_batch"),
    ),
    Target("plan", "shards/plan.py", ("tests/test_shards_build.py",)),
    Target(
        "tar_writer",
        "shards/tar_writer.py",
        (
            "tests/test_shards_build.py",
            "tests/test_shards_writers.py::test_a_build_killed_inside_a_shard_leaves_no_incomplete_file_under_a_final_name",
        ),
    ),
    Target(
        "keys",
        "shards/keys.py",
        ("tests/test_shards_build.py", "tests/test_shards_hostile.py", "-k", "not huge and not strip and not fifo"),
    ),
    Target("colourless", "shards/colourless.py", ("tests/test_shards_colourless.py",)),
    Target(
        "config",
        "configs/__init__.py",
        (
            "tests/test_config.py",
            "tests/test_train_parts.py::test_batch_must_split_over_processes",
            "tests/test_train_parts.py::test_per_process_batch_scales_learning_rates_and_steps_by_the_stated_rule",
        ),
    ),
)


def copy_tree() -> None:
    """A fresh copy of the checkout's files (tracked, and new ones git does not ignore) at TREE."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    shutil.rmtree(TREE, ignore_errors=True)
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (TREE / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, TREE / name)


# Heavy third-party imports the fork server does once; nothing of the project, and no computation
# (a fork after torch has started its OpenMP threads could hang in the child).
PRELOAD = ("numpy", "torch", "torchvision", "PIL.Image", "skimage.color", "yaml", "pytest", "accelerate", "webdataset")


def serve(address: str) -> None:
    """The fork server: for each connection, run pytest with the JSON list of arguments it sends in a
    fork (its own session, so a timeout kills what it started), and answer with pytest's exit code."""
    import importlib
    import json
    import signal
    import socket

    sys.dont_write_bytecode = True  # each mutant is compiled from its source, never from a stale .pyc
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address)
    listener.listen()
    print("ready", flush=True)
    while True:
        connection, _ = listener.accept()
        with connection:
            args = json.loads(connection.makefile().readline())
            child = os.fork()
            if child == 0:
                listener.close()
                connection.close()
                os.setsid()
                os.chdir(TREE)
                with open(WORK / "last-test.log", "w") as log:
                    os.dup2(log.fileno(), 1)
                    os.dup2(log.fileno(), 2)
                import pytest

                os._exit(int(pytest.main(args)))
            connection.setblocking(False)
            while True:
                done, status = os.waitpid(child, os.WNOHANG)
                if done:
                    connection.setblocking(True)
                    # After a timeout the client is gone; the server must live on for the next mutant.
                    with contextlib.suppress(OSError):
                        connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                    break
                try:
                    if connection.recv(1) == b"":  # the client was killed (cosmic-ray's timeout)
                        os.killpg(child, signal.SIGKILL)
                except BlockingIOError:
                    pass
                time.sleep(0.05)


def client(address: str, args: list[str]) -> int:
    """Run pytest `args` in the fork server at `address`; its exit code (1 when it gave none)."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(address)
        connection.sendall((json.dumps(args) + "\n").encode())
        answer = connection.makefile().readline()
    return int(answer) if answer.strip() else 1


def test_command(target: Target, address: str) -> list[str]:
    pytest_args = ["-x", "-q", "-p", "no:cacheprovider", *target.tests]
    return [PYTHON, str(REPO / "tests" / "mutation.py"), "--client", address, "--", *pytest_args]


def run_tests(target: Target, address: str) -> float | None:
    """Run the target's tests once, unmutated; seconds taken, or None when they fail (their output is
    kept in `runs/mutation/<target>.unmutated.log`)."""
    start = time.monotonic()
    if subprocess.run(test_command(target, address)).returncode != 0:
        shutil.copy(WORK / "last-test.log", WORK / f"{target.name}.unmutated.log")
        return None
    return time.monotonic() - start


def signature_annotations(module: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, character column) of every function argument and return annotation."""
    import ast

    source = module.read_text()
    lines = source.splitlines()

    def position(line: int, byte_column: int) -> tuple[int, int]:  # ast counts UTF-8 bytes
        return line, len(lines[line - 1].encode()[:byte_column].decode())

    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            for annotation in [a.annotation for a in arguments] + [node.returns]:
                if annotation is not None:
                    spans.append(
                        (
                            position(annotation.lineno, annotation.col_offset),
                            position(annotation.end_lineno or annotation.lineno, annotation.end_col_offset or 0),
                        )
                    )
    return spans


def skip_unwanted(session: Path, target: Target) -> None:
    """Mark as skipped every mutant of an operator outside OPERATORS, outside `target.functions`, or
    inside a function's signature annotations: every target module has `from __future__ import
    annotations`, so those are strings nothing evaluates (`str | Path` → `str & Path` is equivalent)."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    annotations = signature_annotations(TREE / target.module)

    def wanted(mutation) -> bool:
        start, end = tuple(mutation.start_pos), tuple(mutation.end_pos)
        return bool(
            OPERATORS.match(mutation.operator_name)
            and (not target.functions or (mutation.definition_name or "").split(".")[0] in target.functions)
            and not any(low <= start and end <= high for low, high in annotations)
        )

    with use_db(str(session)) as db:
        for item in list(db.pending_work_items):
            if not all(wanted(m) for m in item.mutations):
                db.set_result(item.job_id, WorkResult(output="not selected", worker_outcome=WorkerOutcome.SKIPPED))


def report(session: Path, target: Target, minutes: float) -> tuple[int, int]:
    """(killed, survived); writes the survivors' list and prints the target's score line."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed, survivors = 0, []
    with use_db(str(session)) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.test_outcome == TestOutcome.SURVIVED:
                survivors.append((item, result))
            else:
                killed += 1
    lines = []
    for item, result in sorted(survivors, key=lambda s: tuple(s[0].mutations[0].start_pos)):
        mutation = item.mutations[0]
        lines.append(
            f"{mutation.module_path}:{mutation.start_pos[0]} {mutation.operator_name} in {mutation.definition_name}"
        )
        diff = [d for d in (result.diff or "").splitlines() if d[:1] in "+-" and d[:3] not in ("+++", "---")]
        lines += [f"    {d}" for d in diff] + [""]
    (WORK / f"{target.name}.survivors.txt").write_text("\n".join(lines))
    total = killed + len(survivors)
    score = 100.0 * killed / total if total else 100.0
    print(
        f"{target.name:<12} {target.module:<32} mutants {total:4d}  killed {killed:4d}  survived {len(survivors):3d}"
        f"  score {score:5.1f} %  ({minutes:.0f} min)",
        flush=True,
    )
    return killed, len(survivors)


def mutate(target: Target, address: str, env: dict[str, str]) -> bool:
    """Mutation-test one target and print its score line; False when its tests fail unmutated."""
    seconds = run_tests(target, address)
    if seconds is None:
        log = WORK / f"{target.name}.unmutated.log"
        print(f"{target.name:<12} {target.module:<32} not measured: its tests fail without any mutant ({log})")
        return False
    config = WORK / f"{target.name}.toml"
    session = WORK / f"{target.name}.sqlite"
    command = " ".join(f"'{part}'" for part in test_command(target, address))
    # A mutant that makes the tests hang counts as caught once it runs well past the clean run.
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{target.module}"\n'
        f"timeout = {max(60.0, 4 * seconds):.0f}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    session.unlink(missing_ok=True)
    start = time.monotonic()
    subprocess.run([COSMIC_RAY, "init", str(config), str(session)], cwd=TREE, env=env, check=True)
    skip_unwanted(session, target)
    subprocess.run([COSMIC_RAY, "exec", str(config), str(session)], cwd=TREE, env=env, check=True)
    report(session, target, (time.monotonic() - start) / 60)
    return True


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:  # the test command cosmic-ray runs: address, "--", pytest arguments
        sys.exit(client(argv[1], argv[3:]))
    if argv[:1] == ["--serve"]:
        serve(argv[1])
        return
    names = [t.name for t in TARGETS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="target", help=f"some of: {' '.join(names)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(names))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from: {' '.join(names)}")
    WORK.mkdir(parents=True, exist_ok=True)
    copy_tree()
    env = {**os.environ, "PYTHONPATH": str(TREE), "PYTHONDONTWRITEBYTECODE": "1"}
    address = str(WORK / "pytest.sock")
    Path(address).unlink(missing_ok=True)
    server = subprocess.Popen([PYTHON, __file__, "--serve", address], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready", (
            "the fork server did not start"
        )
        measured = []
        for target in TARGETS:
            if not args.targets or target.name in args.targets:
                measured.append(mutate(target, address, env))
                # Without the server every test command fails, which cosmic-ray counts as killed.
                if server.poll() is not None:
                    sys.exit(f"the fork server died during {target.name}: its score above is not valid")
    finally:
        server.kill()
        server.wait()
        Path(address).unlink(missing_ok=True)
    if not all(measured):
        sys.exit("some targets were not measured: their tests fail without any mutant")


if __name__ == "__main__":
    main()
