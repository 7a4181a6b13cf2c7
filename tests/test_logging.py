"""Logging: every module logs into the one `aar_ray` tree, no broad `except` swallows an error
without a trace, and the commands show the tree's warnings one line each."""

import ast
import logging
from pathlib import Path

import pytest

from aar_ray.cli import configure_logging, main

PACKAGE = Path(__file__).resolve().parents[1] / "aar_ray"
# aar_ray/tracking/ is being reworked under issue #15; it joins these checks when that lands.
NOT_YET = {PACKAGE / "tracking"}
REPORTING_CALLS = {"debug", "info", "warning", "error", "exception", "critical", "write"}


def sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        if not any(path.is_relative_to(folder) for folder in NOT_YET):
            yield path, ast.parse(path.read_text(), str(path))


def is_broad(handler: ast.ExceptHandler) -> bool:
    return handler.type is None or (isinstance(handler.type, ast.Name)
                                    and handler.type.id in ("Exception", "BaseException"))


def reports(handler: ast.ExceptHandler) -> bool:
    """It raises, logs, or writes the error out (a forked child has no logging)."""
    for node in ast.walk(handler):
        if isinstance(node, ast.Raise):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in REPORTING_CALLS:
            return True
    return False


def silent_broad_handlers(tree: ast.Module) -> list[int]:
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.ExceptHandler) and is_broad(node) and not reports(node)]


def test_no_broad_except_swallows_an_error_without_a_trace():
    silent = {str(path.relative_to(PACKAGE.parent)): lines for path, tree in sources()
              if (lines := silent_broad_handlers(tree))}
    assert silent == {}, "log the error (logging.getLogger(__name__)) or re-raise it"


def test_every_logger_hangs_under_aar_ray():
    names = {}
    for path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger":
                names[str(path.relative_to(PACKAGE.parent))] = ast.unparse(node.args[0]) if node.args else "root"
    stray = {path: name for path, name in names.items()
             if name != "__name__" and not name.strip("'\"").startswith("aar_ray")}
    assert names and stray == {}


def test_the_checks_catch_a_silent_handler():
    silent = ast.parse("try:\n    f()\nexcept Exception:\n    pass\n")
    logged = ast.parse("try:\n    f()\nexcept Exception:\n    log.warning('f failed', exc_info=True)\n")
    narrow = ast.parse("try:\n    f()\nexcept KeyError:\n    pass\n")
    assert silent_broad_handlers(silent) == [3]
    assert silent_broad_handlers(logged) == silent_broad_handlers(narrow) == []


@pytest.fixture
def aar_tree():
    tree = logging.getLogger("aar_ray")
    handlers, level = list(tree.handlers), tree.level
    yield tree
    tree.handlers[:] = handlers
    tree.setLevel(level)


def test_commands_show_the_trees_warnings_one_line_each(aar_tree, capsys):
    configure_logging()
    logging.getLogger("aar_ray.scoring.scorer").warning("shortcut check failed")
    logging.getLogger("aar_ray.scoring.scorer").info("not shown by default")
    assert capsys.readouterr().err == "aar_ray.scoring.scorer: WARNING: shortcut check failed\n"
    configure_logging("info")  # as AAR_LOG_LEVEL=info does
    logging.getLogger("aar_ray.agents").info("now shown")
    assert capsys.readouterr().err == "aar_ray.agents: INFO: now shown\n"


def test_a_wrong_log_level_names_the_variable_and_the_allowed_levels(aar_tree, monkeypatch, capsys):
    monkeypatch.setenv("AAR_LOG_LEVEL", "loud")
    assert main(["methods"]) == 2
    assert "AAR_LOG_LEVEL='loud'; allowed: DEBUG, INFO, WARNING, ERROR, CRITICAL" in capsys.readouterr().err
