"""Writing a TFDS split as array_record without holding it in memory.

The builders of real data (`folder_datasets`, `medmnist`) derive from
`tfds.core.ShardBasedBuilder`: each split is written straight to its
array_record shard in the order its examples are generated. Not
`GeneratorBasedBuilder`: its writer buffers the serialised examples in memory
and, past 1 GB, spills them to disk buckets through `tf.io.gfile`, which needs
TensorFlow (not installed here), so a real dataset could not be prepared.

`ShardWriter` tees the example iterator to count the examples after writing
them, and the tee keeps every `(key, example)` it has yielded until the count;
`one_shard` therefore empties each example dict once the writer asks for the
next one, so the arrays of one example at a time are alive.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

KeyExample = tuple[Any, dict[str, Any]]


def one_shard(examples: Callable[[], Iterator[KeyExample]]
              ) -> list[Callable[[], Iterator[KeyExample]]]:
  """The shard list of a split written as one file, each example released once written.

  Args:
    examples: called once, yields `(key, example dict)` in storage order.

  Returns:
    `[generate]`, what `ShardBasedBuilder._shard_iterators_per_split` maps
    the split's name to.
  """
  def generate() -> Iterator[KeyExample]:
    for key, example in examples():
      yield key, example
      example.clear()  # written: drop its arrays (the writer's tee still holds the dict)
  return [generate]
