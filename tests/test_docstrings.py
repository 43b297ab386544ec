"""The Examples sections of skpatch's docstrings run as written (the package's doctests).

One test per skpatch module whose source holds a ``>>>`` example, found from
the files on disk, so collecting this file imports nothing: the modules (and
torch) are imported when their test runs. A module or an example that needs an
optional package that is not installed skips with a reason; any other import
error or a wrong output fails. ``python3 -m pytest`` runs them with the rest of
the suite (the user-guide pages' doctests are in test_docs.py).
"""

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skpatch"
# packages a docstring example may use that the test extra does not guarantee
OPTIONAL_PACKAGES = {"dask", "distributed", "matplotlib", "PIL", "pandas", "tqdm"}
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES_WITH_EXAMPLES = sorted(
    _module_name(path) for path in PACKAGE.rglob("*.py") if ">>>" in path.read_text()
)


def _absent_optional(exc):
    """The optional top-level package whose absence raised ``exc``, or None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name in OPTIONAL_PACKAGES and importlib.util.find_spec(name) is None:
        return name
    return None


class _Runner(doctest.DocTestRunner):
    """Collects failure reports; an example stopped by an absent optional package is a skip."""

    def __init__(self):
        super().__init__(optionflags=OPTIONFLAGS, verbose=False)
        self.reports, self.skipped = [], {}

    def report_failure(self, out, test, example, got):
        if test.name in self.skipped:  # an earlier example of it needed an absent package
            return
        self.reports.append(
            f"{test.name} (line {example.lineno + 1 + (test.lineno or 0)}):\n"
            f"  >>> {example.source.strip()}\n  expected: {example.want.strip()!r}\n"
            f"  got:      {got.strip()!r}"
        )

    def report_unexpected_exception(self, out, test, example, exc_info):
        if test.name in self.skipped:
            return
        missing = _absent_optional(exc_info[1])
        if missing is not None:
            self.skipped[test.name] = f"{test.name} needs the optional package {missing!r}"
            return
        self.reports.append(
            f"{test.name} (line {example.lineno + 1 + (test.lineno or 0)}):\n"
            f"  >>> {example.source.strip()}\n  raised {exc_info[0].__name__}: {exc_info[1]}"
        )


def test_the_package_has_docstring_examples():
    # guards the parametrization below against silently collecting nothing
    assert {"skpatch.extraction", "skpatch.embedding._embedding",
            "skpatch.classifiers._patch_cnn"} <= set(
        MODULES_WITH_EXAMPLES
    )


@pytest.mark.parametrize("module_name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_pass(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = _absent_optional(exc)
        if missing is None:
            raise
        pytest.skip(f"{module_name} needs the optional package {missing!r}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [test for test in finder.find(module, module_name) if test.examples]
    assert tests, f"{module_name} holds '>>>' but no docstring example was found in it"
    runner = _Runner()
    for test in tests:
        runner.run(test, out=lambda text: None)
    assert not runner.reports, (
        f"{len(runner.reports)} docstring example(s) of {module_name} failed:\n"
        + "\n".join(runner.reports)
    )
    if runner.skipped:
        pytest.skip("; ".join(runner.skipped.values()))
    assert runner.summarize(verbose=False).attempted > 0
