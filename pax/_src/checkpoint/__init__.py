"""Checkpoints and weights from elsewhere: one package, one file per purpose.

- `save_load`: `pax.save` / `pax.load`, the entry points.
- `io`: atomic writes and the one-descriptor reader of ``.npz`` files.
- `codec`: one leaf to and from its stored array (raw bits, PRNG keys, weak types).
- `check`: the metadata of a checkpoint, and against ``like``.
- `sharded` / `assemble`: writing and reading multi-process checkpoints.
- `state_dict`: `pax.state_dict` / `pax.load_state_dict`, flat ``{name: array}`` mappings.
- `manager`: `pax.CheckpointManager`, numbered checkpoints in a directory, rotated, async.
- `matching`: the one name-matching routine of every loader (also `pax.haiku.load_haiku_params`).
"""

from pax._src.checkpoint.manager import CheckpointManager as CheckpointManager
from pax._src.checkpoint.matching import LoadReport as LoadReport
from pax._src.checkpoint.save_load import load as load
from pax._src.checkpoint.save_load import save as save
