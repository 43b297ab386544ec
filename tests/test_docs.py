"""The docs' snippets run as written: every user-guide doctest and the README example."""

import doctest
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "user_guide"
# pages whose doctests another test runs already, with an estimator fitted for them
TESTED_ELSEWHERE = {"inspection.rst": "tests/test_inspection.py"}
DOCTEST_PAGES = sorted(
    p.name for p in GUIDE.glob("*.rst")
    if ">>>" in p.read_text() and p.name not in TESTED_ELSEWHERE
)


def test_the_guide_has_doctests():
    # guards the parametrization below against silently collecting nothing
    assert {"data_contract.rst", "extraction.rst", "bounds.rst"} <= set(DOCTEST_PAGES)


def _assert_doctests_pass(path):
    result = doctest.testfile(
        str(path),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
        verbose=False,
    )
    assert result.attempted > 0
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {path.name} failed"
    )


@pytest.mark.parametrize("page", DOCTEST_PAGES)
def test_user_guide_doctests_pass(page):
    _assert_doctests_pass(GUIDE / page)


def test_readme_data_contract_example_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    search = namespace["search"]
    # a real fit: every patch size cross-validated, the best one refitted
    assert len(search.cv_results_["params"]) == 3
    assert search.best_score_ > 0.8
    assert str(search.best_params_) in capsys.readouterr().out


@pytest.mark.parametrize("page", ["getting_started.rst"])
def test_getting_started_doctests_pass(page, tmp_path, monkeypatch):
    # the first page a new user runs: install, a pipeline, a grid search, save and load
    monkeypatch.chdir(tmp_path)  # the page saves a model file in the working folder
    _assert_doctests_pass(ROOT / "docs" / page)
