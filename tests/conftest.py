"""Shared fixtures: a tiny synthetic recipe that trains in seconds on a CPU."""

import os

import pytest

from rpn_jax import cli
from tests.tiny_config import get_config as tiny_config


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
  """Generated data goes to a per-session folder, never the user's cache."""
  os.environ["RPN_JAX_CACHE"] = str(tmp_path_factory.mktemp("rpn_jax_cache"))
  cli.enable_compilation_cache()


@pytest.fixture
def tiny():
  return tiny_config()


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """A workdir (config.json + checkpoint) of the tiny recipe trained its two
  short epochs, shared by the tests of what comes after training; read-only."""
  from rpn_jax import train_lib

  workdir = str(tmp_path_factory.mktemp("tiny_workdir"))
  train_lib.train_and_evaluate(tiny_config(), workdir)
  return workdir
