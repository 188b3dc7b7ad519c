"""Reliability 6 (fuzz): any mutation of an experiment file expands into trials or raises one of the
project's own errors (HarnessError), with a one-line message; never another exception."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.core.errors import HarnessError
from harness.run import sweep
from tests.reliability_tools import write_experiment

KEYS = ["Trainer.iterations", "Trainer.seed", "Trainer.checkpoint_every", "Trainer.keep_checkpoints",
        "Trainer.validation_views", "Trainer.method", "Trainer.oom_factor", "Trainer.oom_retries", "ToyColour.lr",
        "ToyColour.batch_size", "Sweep.axes", "Sweep.zipped", "Sweep.seeds", "Sweep.scenes", "Sweep.seed_binding",
        "launch.cluster", "launch.parallel", "Evaluation.metrics", "load_scene.format", "Nope.x", "ToyColour.nope"]
scalars = (st.none() | st.booleans() | st.integers(-3, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=5) | st.sampled_from(["@ToyColour", "@Nope", "%m", "lego_100", "tiny", "Trainer.seed",
                                                     "ToyColour.lr", "../x", "a b"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=2), max_leaves=6)


def _literal(value) -> str:
    """A value as Gin source: a Python literal, with '@x'/'%x' strings unquoted (references, macros)."""
    text = repr(value)
    return value if isinstance(value, str) and value[:1] in "@%" else text


binding = st.builds(lambda k, v: f"{k} = {_literal(v)}", st.sampled_from(KEYS), values)
junk = (st.lists(st.sampled_from(["[", "]", "{", "}", "(", ")", "'", '"', "@", "%", "=", ",", ":", "\\", "#", "include",
                                  " ", "\n", "Trainer", ".", "lr", "1", "1e999", "nan", "ToyColour.lr"]), max_size=8)
        .map("".join) | st.text(string.printable, max_size=20))
edits = st.lists(st.tuples(st.sampled_from(["insert", "replace", "delete"]), st.integers(0, 20), binding | junk),
                 min_size=1, max_size=4)


def _apply(lines: list[str], changes) -> str:
    lines = list(lines)
    for action, index, text in changes:
        at = index % (len(lines) + 1)
        if action == "insert" or at == len(lines):
            lines.insert(at, text)
        elif action == "replace":
            lines[at] = text
        else:
            del lines[at]
    return "\n".join(lines) + "\n"


def test_fuzzed_experiment_files_expand_or_raise_harness_errors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "scene").mkdir()  # expansion fingerprints the scene's files (none here), so it must exist
    base = write_experiment(folder, folder / "scene").read_text().splitlines()
    outcomes = {"trials": 0, "error": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None,
              derandomize=True)
    @given(changes=edits)
    def check(changes):
        path = folder / "fuzz.gin"
        path.write_text(_apply(base, changes))
        try:
            trials = sweep.expand(str(path))
        except HarnessError as exc:
            assert str(exc).strip() and "\n" not in str(exc), repr(str(exc))
            outcomes["error"] += 1
            return
        assert trials and len({t.id for t in trials}) == len(trials)
        outcomes["trials"] += 1

    check()
    assert outcomes["trials"] >= 20 and outcomes["error"] >= 50, outcomes  # both paths were exercised
