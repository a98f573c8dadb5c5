"""`experiments.host_allocator`: launchers re-execute once with glibc's huge-page tunable."""
import os
import subprocess
import sys

import pytest

from experiments import host_allocator as ha

GLIBC = (2, 36)


HEAP_ON = {"MEDJAX_HOST_HEAP": "1"}


def test_tuned_environment_adds_the_tunable():
  assert ha.tuned_environment({}, GLIBC, "madvise")["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  env = ha.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"}, GLIBC,
                             "always")
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "X": "1"}


def test_tuned_environment_leaves_alone():
  assert ha.tuned_environment(HEAP_ON, GLIBC, "madvise") is None  # medjax.host_memory's heap
  assert ha.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC,
                              "madvise") is None
  assert ha.tuned_environment({"MEDJAX_HUGEPAGES": "0"}, GLIBC, "madvise") is None
  assert ha.tuned_environment({}, None, "madvise") is None  # not glibc
  assert ha.tuned_environment({}, (2, 31), "madvise") is None  # no tunable before 2.35
  assert ha.tuned_environment({}, GLIBC, "never") is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert ha.thp_mode(str(path)) == "madvise"
  assert ha.thp_mode(str(tmp_path / "missing")) == ""


def _launcher_tunables(**env):
  child_env = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", "MEDJAX_HUGEPAGES", "MEDJAX_HOST_HEAP")}
  child_env.update(env)
  return subprocess.run([sys.executable, "-m", "experiments.host_allocator"], env=child_env,
                        capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.e2e
def test_a_launcher_runs_with_the_tunable_on_this_machine():
  clean = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "MEDJAX_HUGEPAGES", "MEDJAX_HOST_HEAP")}
  expected = ha.tuned_environment(clean, ha.glibc_version(), ha.thp_mode())
  assert _launcher_tunables() == ("" if expected is None else expected["GLIBC_TUNABLES"])
  assert _launcher_tunables(MEDJAX_HUGEPAGES="0") == ""
  assert _launcher_tunables(**HEAP_ON) == ""  # medjax.host_memory's heap instead
  assert _launcher_tunables(GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"
