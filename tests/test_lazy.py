"""The wings' lazy re-exports: a name loads its module on first use, an unknown name is an
AttributeError naming the wing, and dir() lists the public API."""

import subprocess
import sys

import pytest

import studyrunner.search as search
from studyrunner.lazy import exports


def test_a_name_is_loaded_from_its_module_on_first_use():
    code = "import sys, studyrunner.search as s; a = 'optuna' in sys.modules; s.run_study; print(a, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_unknown_names_and_dir():
    getattr_, dir_ = exports("studyrunner.search", {"run_study": "driver"})
    with pytest.raises(AttributeError, match="'studyrunner.search' has no attribute 'nope'"):
        getattr_("nope")
    assert dir_() == ["run_study"] and "run_study" in dir(search)
