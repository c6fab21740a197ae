"""metarl's task distributions.

Importing this package registers every env's single-env view with gymnasium, e.g.
``gymnasium.make("metarl/Bandit-v0", arms=5)``. Without importing it first, use
``gymnasium.make("envs:metarl/Bandit-v0")``, which imports it for you.
"""

from gymnasium.envs.registration import register, registry

_GYM_ENVS = {
    "metarl/Bandit-v0": ("envs.bandit:BanditGymEnv", None),
    "metarl/TabularMDP-v0": ("envs.tabular_mdp:TabularMDPGymEnv", None),
    "metarl/Nav2D-v0": ("envs.nav2d:Nav2DGymEnv", None),
    "metarl/Maze-v0": ("envs.maze:MazeGymEnv", None),
    "metarl/HalfCheetahDir-v0": ("envs.mujoco_dirvel:HalfCheetahDirEnv", None),
    "metarl/HalfCheetahVel-v0": ("envs.mujoco_dirvel:HalfCheetahVelEnv", None),
    "metarl/AntDir-v0": ("envs.mujoco_dirvel:AntDirEnv", None),
    "metarl/AntVel-v0": ("envs.mujoco_dirvel:AntVelEnv", None),
}

for _env_id, (_entry_point, _max_steps) in _GYM_ENVS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, max_episode_steps=_max_steps)
