"""Bad input gets one clear line on stderr (exit 2), never a traceback."""

from tests.conftest import TOY, harness


def _one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_experiment_lists_available(runs_dir):
    line = _one_line_error(harness("sweep", "no_such_exp", "--runs-dir", runs_dir))
    assert "unknown experiment 'no_such_exp'" in line
    assert "plenoxels_tv" in line  # the available ones are listed


def test_binding_to_unknown_parameter_names_file_and_line(tmp_path, runs_dir):
    exp = tmp_path / "bad.gin"
    exp.write_text(TOY.read_text() + "ToyColour.no_such_param = 3\n")
    line = _one_line_error(harness("sweep", exp, "--runs-dir", runs_dir, "--dry-run"))
    assert "doesn't have a parameter named 'no_such_param'" in line
    assert "bad.gin" in line and f"line {len(TOY.read_text().splitlines()) + 1}" in line


def test_unknown_binding_on_command_line(runs_dir):
    line = _one_line_error(harness("sweep", TOY, "--runs-dir", runs_dir, "--dry-run", "--bind", "Nope.x=1"))
    assert "No configurable matching 'Nope'" in line


def test_gin_syntax_error_names_file(tmp_path, runs_dir):
    exp = tmp_path / "syntax.gin"
    exp.write_text(TOY.read_text() + "ToyColour.lr = [1,\n")
    line = _one_line_error(harness("sweep", exp, "--runs-dir", runs_dir, "--dry-run"))
    assert "syntax.gin" in line and "syntax error" in line.lower()


def test_missing_scene_path_names_the_path(tmp_path, runs_dir):
    line = _one_line_error(harness("sweep", TOY, "--runs-dir", runs_dir,
                                   "--bind", "load_scene.path='/nonexistent/lego'"))
    assert "/nonexistent/lego" in line and "does not exist" in line
    assert not (runs_dir / "toy").exists() or not list((runs_dir / "toy").glob("*/metrics.json"))


def test_help_lists_commands():
    proc = harness("--help")
    assert proc.returncode == 0
    for cmd in ("sweep", "report", "status"):
        assert cmd in proc.stdout
    assert "--dry-run" in harness("sweep", "--help").stdout
