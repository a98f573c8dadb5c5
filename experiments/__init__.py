"""Launchers (`python -m experiments.<name>`) and their configs."""
import sys

if sys.argv[:1] == ["-m"]:  # `python -m experiments.<launcher>`, before the launcher's imports
  from experiments import host_allocator
  host_allocator.reexec_with_huge_pages()
  # forget it again, so `python -m experiments.host_allocator` runs a fresh copy as __main__
  del sys.modules["experiments.host_allocator"], host_allocator
