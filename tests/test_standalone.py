"""The repository stands alone: no tracked file refers to files outside it."""
import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a folder named `shared` beside or above the checkout, spelt with its slash (a path into it)
OUTSIDE = re.compile(r"(?<![\w-])" + "shared" + r"/")


def _tracked_files():
  listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode()
  return [name for name in listing.split("\0") if name]


def test_no_tracked_file_refers_to_a_shared_folder_outside_the_repository():
  files = _tracked_files()
  assert "README.md" in files and "medjax/__init__.py" in files
  found = []
  for name in files:
    path = os.path.join(REPO, name)
    if os.path.islink(path) or not os.path.isfile(path):
      continue
    with open(path, "rb") as f:
      text = f.read().decode("utf-8", errors="replace")
    found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
              if OUTSIDE.search(line)]
  assert not found, "refers to files outside the repository:\n" + "\n".join(found)
