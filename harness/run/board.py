"""`harness tensorboard EXP[,EXP...]`: one TensorBoard server over experiments' trials, each run named
by its swept bindings instead of its hash.

The runs are a folder of links, runs/.tensorboard/<experiments>/[<experiment>/]<label> -> the trial's
tb/ folder, rebuilt at each start from the experiments' sweep.json (so a trial shared by two
experiments shows under each with that experiment's label). A trial not launched yet is linked too:
its folder appears when it starts, and TensorBoard picks it up on its next reload.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from harness.core.errors import HarnessError
from harness.core.records import binding_label, read_json
from harness.run import store

log = logging.getLogger(__name__)

BOARD = ".tensorboard"


def _name(label: str) -> str:
    """A label as one path component ('/' would nest folders)."""
    return label.replace("/", "∕") or "default"


def link_runs(runs_dir: Path, experiments: list[str]) -> tuple[Path, int]:
    """(the folder of links TensorBoard is pointed at, how many runs it holds)."""
    runs_dir = Path(runs_dir)
    board = runs_dir / BOARD / "+".join(experiments)
    shutil.rmtree(board, ignore_errors=True)
    n = 0
    for experiment in experiments:
        sweep = read_json(runs_dir / experiment / "sweep.json", default=None)
        if not isinstance(sweep, dict) or not sweep.get("trials"):
            raise HarnessError(f"{runs_dir / experiment / 'sweep.json'}: no trials of '{experiment}' here "
                               f"(run `make sweep EXP={experiment}` first, or pass --runs-dir)")
        parent = board / experiment if len(experiments) > 1 else board
        parent.mkdir(parents=True, exist_ok=True)
        for entry in sweep["trials"]:
            real = _trial_folder(runs_dir, experiment, entry["id"])
            link = parent / _name(binding_label(entry["bindings"]))
            if link.is_symlink():  # two trials with one label (never from one sweep): keep both
                link = link.with_name(f"{link.name} [{entry['id']}]")
            os.symlink(os.path.relpath(real / "tb", parent), link, target_is_directory=True)
            n += 1
    return board, n


def _trial_folder(runs_dir: Path, experiment: str, trial_id: str) -> Path:
    """The trial's real folder (through the experiment's link when it has one)."""
    mine = runs_dir / experiment / trial_id
    return mine.resolve() if mine.exists() else runs_dir / store.STORE / trial_id


def serve(runs_dir: Path, experiments: list[str], port: int = 6006, host: str = "localhost",
          reload_s: int = 10) -> None:
    """Start TensorBoard over the experiments' runs, print its URL and serve until interrupted."""
    from tensorboard import program

    board, n = link_runs(runs_dir, experiments)
    server = program.TensorBoard()
    server.configure(argv=[None, "--logdir", str(board), "--host", host, "--port", str(port),
                           "--reload_interval", str(reload_s)])
    try:
        url = server.launch()
    except program.TensorBoardServerException as exc:
        raise HarnessError(f"TensorBoard could not start on {host}:{port}: {exc.msg} "
                           "(another port: make tensorboard ARGS='--port N')") from None
    print(f"TensorBoard: {url}  ({n} runs of {', '.join(experiments)}; Ctrl-C stops it)", flush=True)
    while True:
        time.sleep(3600)
