"""Dark room with a hidden goal: an example of a metarl task-distribution plug-in.

Two implementations of the same task distribution, one per metarl contract:

* :class:`DarkRoomDistribution` (``dark-room``): batched; all rows step in one torch op.
* :class:`DarkRoomGymEnv` (``dark-room-gym``): a plain ``gymnasium.Env`` with
  ``sample_tasks`` and ``set_task``, the simplest way to plug in an existing env.

Both are registered in ``pyproject.toml`` under the ``metarl.envs`` entry-point group.
"""

from metarl_darkroom.darkroom import (
    DarkRoomDistribution,
    DarkRoomEnv,
    DarkRoomOracle,
    DarkRoomTasks,
)
from metarl_darkroom.gym_env import DarkRoomGymEnv

__all__ = [
    "DarkRoomDistribution",
    "DarkRoomEnv",
    "DarkRoomGymEnv",
    "DarkRoomOracle",
    "DarkRoomTasks",
]
