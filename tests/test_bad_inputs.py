"""Bad input everywhere a user gives us something: one clear line, exit 2, never a traceback.
The cases live in tests/bad_inputs.py, which also prints docs/bad-inputs.md."""

import pytest

from bad_inputs import CASES, last_line, run_case


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py




@pytest.mark.parametrize("what,cli,setup,code,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input(what, cli, setup, code, phrase, tmp_path):
    args = setup(tmp_path)
    r = run_case(cli, args)
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception  # a traceback is a bug
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    if code == 2:
        assert last_line(r.output).startswith(("error:", "Error:")), r.output
        assert phrase in r.output, r.output
        errors = [ln for ln in r.output.splitlines() if ln.startswith(("error:", "Error:"))]
        assert len(errors) == 1
    else:
        assert phrase in r.output
