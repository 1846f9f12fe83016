"""The mutation check (tests/mutants.py) as a slow test: every listed fault must be caught."""

import pytest

from .mutants import MUTANTS, _apply, run_mutant, scratch_copy


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    # No unmutated run first: CI's default stage has just run these tests green on the same tree
    # (`python tests/mutants.py` does check it, for runs outside CI).
    return scratch_copy(tmp_path_factory.mktemp("mutants") / "repo")


def test_every_mutant_still_applies():
    """A mutant whose line moved would silently test nothing: each must match its file."""
    from .mutants import REPO

    for m in MUTANTS:
        _apply((REPO / m.path).read_text(), m)
        for test in m.tests:  # a renamed test would make the run an error, not a catch
            path, _, name = test.partition("::")
            assert (REPO / path).is_file(), f"{m.name}: no test file {path}"
            if name:
                assert f"def {name.split('[')[0]}(" in (REPO / path).read_text(), f"{m.name}: no test {test}"
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.slow  # one pytest run of a few tests per mutant, each forked from a server that imported torch once
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_caught(mutant, scratch):
    outcome = run_mutant(mutant, scratch)
    assert outcome.status == "caught", f"{mutant.name} ({mutant.why}) {outcome.status}: {outcome.caught_by or 'every listed test passed'}"
