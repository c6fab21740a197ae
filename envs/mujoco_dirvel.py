"""MAML's MuJoCo locomotion task distributions on gymnasium's v5 HalfCheetah and Ant.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks" (ICML 2017), Section 5.3, define four task distributions:

* ``halfcheetah-dir`` (:class:`HalfCheetahDirEnv`): run forward or backward,
  ``d ~ U{-1, +1}``, reward ``d * v_x - 0.05 ||a||^2``.
* ``halfcheetah-vel`` (:class:`HalfCheetahVelEnv`): run at ``v* ~ U[0, 2]``, reward
  ``-|v_x - v*| - 0.05 ||a||^2``.
* ``ant-dir`` (:class:`AntDirEnv`): run forward or backward, reward
  ``d * v_x - 0.005 ||a||^2 - 0.0005 sum(clip(cfrc_ext, -1, 1)^2) + 0.05``.
* ``ant-vel`` (:class:`AntVelEnv`): run at ``v* ~ U[0, 3]``, reward
  ``-|v_x - v*| + 1 - 0.005 ||a||^2 - 0.0005 sum(clip(cfrc_ext, -1, 1)^2) + 0.05``.

The coefficients are those of the paper's code, cbfinn/maml_rl (rllab):
``rllab/envs/mujoco/half_cheetah_env_rand{,_direc}.py`` and
``rllab/envs/mujoco/ant_env_rand{,_direc}.py``. The dynamics and observations are
gymnasium's v5 envs (official ``mujoco`` bindings), which differ from rllab's in several
ways; every class docstring lists where implementations disagree and what we chose. One
departure from v5 is deliberate: the Ant envs step at rllab's control period, 0.02 s
(``frame_skip=2``, :data:`ANT_FRAME_SKIP`), not v5's 0.05 s, at which MAML's Ant never
adapted.

``v_x`` is the finite difference ``(x_after - x_before) / dt`` of the root body's x
coordinate ``qpos[0]`` across one env step, as in gymnasium, pytorch-maml-rl, PEARL and
varibad (rllab itself used the instantaneous centre-of-mass velocity, see the class
docstrings).

Every class is a plain :class:`gymnasium.Env` that also implements metarl's
task-distribution contract (``sample_tasks(n, rng)``, ``set_task(task)``, ``task``) and
enforces its own time limit (``truncated`` at ``horizon`` steps), because metarl builds the
class directly rather than through ``gymnasium.make``'s ``TimeLimit``. Tasks are plain
dicts, ``{"direction": ±1.0}`` or ``{"velocity": v*}``, so they pickle to
``AsyncVectorEnv`` workers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

__all__ = [
    "ANT_CONTACT_COST",
    "ANT_CTRL_COST",
    "ANT_FRAME_SKIP",
    "ANT_SURVIVE_REWARD",
    "ANT_VEL_OFFSET",
    "HALF_CHEETAH_CTRL_COST",
    "AntDirEnv",
    "AntVelEnv",
    "HalfCheetahDirEnv",
    "HalfCheetahVelEnv",
    "reward_terms",
]

#: rllab half_cheetah_env_rand*.py: ``ctrl_cost = 1e-1 * 0.5 * np.sum(np.square(action))``.
HALF_CHEETAH_CTRL_COST = 0.5 * 1e-1
#: rllab ant_env_rand*.py: ``ctrl_cost = 0.5 * 1e-2 * np.sum(np.square(action / scaling))``.
ANT_CTRL_COST = 0.5 * 1e-2
#: rllab ant_env_rand*.py: ``0.5 * 1e-3 * np.sum(np.square(np.clip(cfrc_ext, -1, 1)))``.
ANT_CONTACT_COST = 0.5 * 1e-3
#: rllab ant_env_rand*.py: ``survive_reward = 0.05``, paid on every step.
ANT_SURVIVE_REWARD = 0.05
#: rllab ant_env_rand.py (velocity task only): ``-np.abs(v - goal) + 1.0``, commented
#: "make it happy, not suicidal": without it the per-step reward is negative and
#: terminating early (falling over) would pay.
ANT_VEL_OFFSET = 1.0

#: MuJoCo steps per Ant env step: 2 x v5's 0.01 s timestep = rllab's ``dt = 0.02`` (its
#: ant.xml: ``timestep=0.02``, no frame skip), not v5's ``frame_skip=5`` (0.05 s). At 0.05 s
#: the MAML initialisation jumps the torso above the healthy height within ~50 steps (96 of
#: 100 episodes) and an 800-iteration AntVel run never adapted; at 0.02 s both Ant tasks
#: adapt within 100 iterations (experiments/RESULTS.md, "Ant at rllab's control period").
ANT_FRAME_SKIP = 2

#: Ant health: torso height in this closed range and a finite state (rllab and v5 agree).
_ANT_HEALTHY_Z = (0.2, 1.0)
#: Contact forces are clipped to this range in the cost (rllab and v5 agree).
_CONTACT_FORCE_RANGE = (-1.0, 1.0)


def reward_terms(
    task: Mapping[str, float],
    x_velocity: float,
    action: np.ndarray,
    *,
    ctrl_cost_weight: float,
    action_scale: float | np.ndarray = 1.0,
    contact_forces: np.ndarray | None = None,
    contact_cost_weight: float = 0.0,
    survive_reward: float = 0.0,
    velocity_offset: float = 0.0,
) -> dict[str, float]:
    """The reward of one step, split into its terms (the envs call this; tests check it).

    Args:
        task: ``{"direction": d}`` (forward term ``d * x_velocity``) or
            ``{"velocity": v}`` (forward term ``-|x_velocity - v| + velocity_offset``).
        x_velocity: Forward velocity of the robot over the step.
        action: The action as applied, i.e. already clipped to the action space.
        ctrl_cost_weight: ``w`` in ``w * sum((action / action_scale)^2)``.
        action_scale: Half-width of the action box. rllab divides by it so that the Ant's
            cost is on normalised actions whatever the actuators' ``ctrlrange``.
        contact_forces: Raw ``data.cfrc_ext`` (``[nbody, 6]``), clipped to ``[-1, 1]`` here;
            None for no contact term.
        contact_cost_weight: ``w`` in ``w * sum(clip(contact_forces, -1, 1)^2)``.
        survive_reward: Constant added every step.
        velocity_offset: Added to the forward term of velocity tasks only (rllab's Ant
            velocity task uses 1.0).

    Returns:
        ``reward_forward``, ``reward_ctrl`` and ``reward_contact`` (both <= 0),
        ``reward_survive`` and their sum ``reward``, all Python floats.
    """
    task = _as_task(task)
    if "direction" in task:
        forward = task["direction"] * float(x_velocity)
    else:
        forward = -abs(float(x_velocity) - task["velocity"]) + velocity_offset
    scaled = np.asarray(action, dtype=np.float64) / action_scale
    # 0.0 - x rather than -x so that a zero cost reads 0.0, not -0.0, in logs.
    ctrl = 0.0 - ctrl_cost_weight * float(np.sum(np.square(scaled)))
    contact = 0.0
    if contact_forces is not None:
        clipped = np.clip(np.asarray(contact_forces, dtype=np.float64), *_CONTACT_FORCE_RANGE)
        contact = 0.0 - contact_cost_weight * float(np.sum(np.square(clipped)))
    survive = float(survive_reward)
    return {
        "reward_forward": forward,
        "reward_ctrl": ctrl,
        "reward_contact": contact,
        "reward_survive": survive,
        "reward": forward + ctrl + contact + survive,
    }


def _as_task(task: Any) -> dict[str, float]:
    """Validates a task and returns it as a fresh ``{"direction"|"velocity": float}`` dict."""
    if not isinstance(task, Mapping) or len(task) != 1:
        raise ValueError(f"a task is {{'direction': ±1.0}} or {{'velocity': v}}, got {task!r}")
    ((key, value),) = task.items()
    if key not in ("direction", "velocity"):
        raise ValueError(f"unknown task key {key!r}; expected 'direction' or 'velocity'")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"task {key} must be finite, got {value}")
    if key == "direction" and value not in (-1.0, 1.0):
        raise ValueError(f"task direction must be -1.0 or +1.0, got {value}")
    return {key: value}


def _check_horizon(horizon: Any) -> int:
    # bool is an int subclass; --set env.horizon=true must not mean a horizon of 1.
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    return int(horizon)


def _check_nonneg(name: str, value: Any) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_range(low: Any, high: Any) -> tuple[float, float]:
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"need finite velocity_low <= velocity_high, got [{low}, {high}]")
    return low, high


def _sample_directions(n: int, rng: np.random.Generator) -> list[dict[str, float]]:
    # A fair coin, like maml_rl's U[0, 2) (cheetah) or U[0, 3) (ant) threshold at the middle.
    signs = rng.integers(0, 2, size=int(n)) * 2 - 1
    return [{"direction": float(s)} for s in signs]


def _sample_velocities(
    n: int, rng: np.random.Generator, low: float, high: float
) -> list[dict[str, float]]:
    return [{"velocity": float(v)} for v in rng.uniform(low, high, size=int(n))]


class _TaskEnvMixin:
    """Task storage, the time limit and pickling shared by the four envs.

    Listed before the gymnasium env in the bases so that its ``reset`` and pickling hooks
    wrap the v5 env's.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: Gradient-based meta-learners (MAML) adapt across single-episode trials.
    default_episodes: ClassVar[int] = 1
    #: The paper's (and maml_rl's ``max_path_length``) horizon.
    horizon: int = 200

    #: The task dict's only key, "direction" or "velocity".
    _task_key: ClassVar[str]

    task: dict[str, float]
    max_episode_steps: int
    elapsed_steps: int

    def _init_task_env(self, horizon: int, ctor_kwargs: dict[str, Any]) -> None:
        self.horizon = horizon
        self.max_episode_steps = horizon
        self.elapsed_steps = 0
        # The v5 env's EzPickle saved the v5 constructor's arguments; pickling must rebuild
        # *this* class from *its* arguments instead.
        utils.EzPickle.__init__(self, **ctor_kwargs)
        # Same default as metarl's BatchedEnvView: the first task of a seed-0 stream.
        self.set_task(self.sample_tasks(1, np.random.default_rng(0))[0])

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        raise NotImplementedError

    def set_task(self, task: Mapping[str, float]) -> None:
        """Sets the task; takes effect from the next step. Keeps a validated copy."""
        task = _as_task(task)
        if next(iter(task)) != self._task_key:
            raise ValueError(f"{type(self).__name__} takes {{'{self._task_key}': …}}, got {task}")
        self.task = task

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.elapsed_steps = 0
        obs, info = super().reset(seed=seed, options=options)
        return obs, {**info, **self.task}

    def _tick(self, terminated: bool) -> bool:
        """Counts a step; returns ``truncated``.

        A terminal step is not also truncated, the convention of metarl's TensorTaskEnv.
        """
        self.elapsed_steps += 1
        return self.elapsed_steps >= self.horizon and not terminated

    def _clip_action(self, action: Any) -> np.ndarray:
        # rllab clipped actions before both simulation and cost (rllab's normalize()
        # wrapper clips; half_cheetah_env_rand clips again). MuJoCo would clamp ctrl
        # anyway, so clipping here only keeps the cost honest for out-of-range actions.
        space = self.action_space
        return np.clip(np.asarray(action, dtype=np.float64), space.low, space.high)

    def __getstate__(self) -> dict[str, Any]:
        # Pickle = constructor arguments (EzPickle) + the task. The physics state is not
        # kept: an unpickled env must be reset, as with every gymnasium MuJoCo env.
        state = utils.EzPickle.__getstate__(self)
        state["metarl_task"] = dict(self.task)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        task = state.pop("metarl_task", None)
        utils.EzPickle.__setstate__(self, state)
        if task is not None:
            self.set_task(task)


class _HalfCheetahTaskEnv(_TaskEnvMixin, HalfCheetahEnv):
    """HalfCheetah-v5 with MAML's reward; subclasses choose the task distribution."""

    def __init__(
        self,
        horizon: int,
        render_mode: str | None,
        ctrl_cost_weight: float,
        reset_noise_scale: float,
        frame_skip: int,
        ctor_kwargs: dict[str, Any],
    ):
        horizon = _check_horizon(horizon)
        self.ctrl_cost_weight = _check_nonneg("ctrl_cost_weight", ctrl_cost_weight)
        if isinstance(frame_skip, bool) or int(frame_skip) != frame_skip or frame_skip < 1:
            raise ValueError(f"frame_skip must be an integer >= 1, got {frame_skip!r}")
        super().__init__(
            frame_skip=int(frame_skip),
            # The v5 reward is never used; passing our weight keeps v5's control_cost()
            # consistent with ours for anyone who calls it.
            ctrl_cost_weight=self.ctrl_cost_weight,
            reset_noise_scale=_check_nonneg("reset_noise_scale", reset_noise_scale),
            render_mode=render_mode,
        )
        self._init_task_env(horizon, ctor_kwargs)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        # v5's half_cheetah.xml sets the total mass with the compiler attribute
        # ``settotalmass``, which MuJoCo >= 3.3 deprecates: every env construction printed
        # a warning and appended it to MUJOCO_LOG.TXT in the working directory (80+ per
        # training run). Compiling without the attribute and applying the call MuJoCo
        # recommends gives a bit-identical model (tested), without the warning.
        with open(self.fullpath) as f:
            xml = f.read()
        found = re.search(r'\s+settotalmass="([^"]+)"', xml)
        if found is None:
            return super()._initialize_simulation()
        model = mujoco.MjModel.from_xml_string(xml.replace(found.group(0), "", 1))
        data = mujoco.MjData(model)
        mujoco.mj_setTotalmass(model, float(found.group(1)))
        mujoco.mj_setConst(model, data)
        # As MujocoEnv: grow the offscreen framebuffer to the render size.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, data

    def step(self, action):
        action = self._clip_action(action)
        # qpos[0] is the rootx slider, i.e. the torso's x; same velocity as v5's info.
        x_before = float(self.data.qpos[0])
        self.do_simulation(action, self.frame_skip)
        x_after = float(self.data.qpos[0])
        x_velocity = (x_after - x_before) / self.dt
        terms = reward_terms(self.task, x_velocity, action, ctrl_cost_weight=self.ctrl_cost_weight)
        reward = terms.pop("reward")
        del terms["reward_contact"], terms["reward_survive"]  # no such terms for HalfCheetah
        terminated = False  # rllab: done = False; no failure state (a flipped cheetah runs on)
        truncated = self._tick(terminated)
        info = {"x_position": x_after, "x_velocity": x_velocity, **terms, **self.task}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, terminated, truncated, info


class HalfCheetahDirEnv(_HalfCheetahTaskEnv):
    """``halfcheetah-dir``: HalfCheetah-v5 rewarded for running in direction ``d = ±1``.

    Task ``{"direction": d}``, ``d`` uniform on ``{-1, +1}``. Per-step reward
    ``d * v_x - ctrl_cost_weight * ||clip(a)||^2`` with ``ctrl_cost_weight = 0.05``;
    ``v_x = (qpos_x' - qpos_x) / dt``. Never terminates; truncated at ``horizon``.

    Where implementations disagree (choice here in brackets):

    * Task sampling: maml_rl draws ``U[0, 2)`` and sets ``d = -1`` below 1, else ``+1``;
      pytorch-maml-rl draws ``2 * Bernoulli(0.5) - 1``. Same distribution. [fair coin]
    * Velocity: maml_rl (rllab) uses ``get_body_comvel("torso")[0]``, the instantaneous
      centre-of-mass velocity of the torso subtree (the whole cheetah) after the step;
      pytorch-maml-rl, PEARL, varibad and v5 use the finite difference of ``qpos[0]``
      (the torso frame). Leg swing makes the two differ within a stride.
      [finite difference of ``qpos[0]``, equal to v5's ``info["x_velocity"]``]
    * Control cost: rllab ``0.5 * 1e-1 * ||a||^2`` on the clipped action; pytorch-maml-rl,
      PEARL and varibad the same 0.05 on the unclipped action; HalfCheetah-v5's own
      default is ``ctrl_cost_weight=0.1``. [0.05 on the action clipped to ``[-1, 1]``]
    * Time step: rllab's half_cheetah.xml has ``timestep=0.01`` and no frame skip, so
      ``dt = 0.01`` (200 steps = 2 s); gym/gymnasium use 0.01 x ``frame_skip=5``,
      ``dt = 0.05`` (200 steps = 10 s).
      [v5's ``frame_skip=5``; ``frame_skip=1`` approximates rllab's ``dt``]
    * Horizon: the paper and maml_rl (``max_path_length = 200``) use 200;
      pytorch-maml-rl's configs ``max_episode_steps: 100`` (its gym registration says
      200); varibad's HalfCheetahVel defaults to 100. [200]
    * Observations: rllab ``qpos[1:]`` (8) + ``qvel`` (9) + torso-subtree COM (3) = 20;
      pytorch-maml-rl the same 20 with the torso body position instead of the COM,
      cast to float32; v5 ``qpos[1:]`` + ``qvel`` = 17 (float64). [v5: 17, float64]
    * Reset noise: rllab ``qpos + N(0, 0.01^2)``, ``qvel + N(0, 0.1^2)``; v5
      ``qpos + U(-0.1, 0.1)``, ``qvel + N(0, 0.1^2)``. [v5, ``reset_noise_scale``]
    * Termination: none anywhere. [never terminates]

    Args:
        horizon: Steps per episode; ``truncated`` is True at this step.
        render_mode: gymnasium render mode (``"human"``, ``"rgb_array"``, …) or None.
        ctrl_cost_weight: Weight of ``||a||^2`` (rllab: 0.05).
        reset_noise_scale: v5's reset noise scale.
        frame_skip: MuJoCo steps per env step (v5: 5, ``dt = 0.05``).
    """

    name = "halfcheetah-dir"
    description = "HalfCheetah runs forward or backward (hidden d = ±1), reward d·v_x − 0.05‖a‖²"
    _task_key = "direction"

    def __init__(
        self,
        horizon: int = 200,
        render_mode: str | None = None,
        ctrl_cost_weight: float = HALF_CHEETAH_CTRL_COST,
        reset_noise_scale: float = 0.1,
        frame_skip: int = 5,
    ):
        super().__init__(
            horizon,
            render_mode,
            ctrl_cost_weight,
            reset_noise_scale,
            frame_skip,
            ctor_kwargs={
                "horizon": horizon,
                "render_mode": render_mode,
                "ctrl_cost_weight": ctrl_cost_weight,
                "reset_noise_scale": reset_noise_scale,
                "frame_skip": frame_skip,
            },
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """``n`` tasks ``{"direction": ±1.0}``, each side with probability 1/2, from ``rng``."""
        return _sample_directions(n, rng)


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    """``halfcheetah-vel``: HalfCheetah-v5 rewarded for running at a goal velocity.

    Task ``{"velocity": v*}``, ``v* ~ U[velocity_low, velocity_high] = U[0, 2]``. Per-step
    reward ``-|v_x - v*| - ctrl_cost_weight * ||clip(a)||^2`` with
    ``ctrl_cost_weight = 0.05``; ``v_x = (qpos_x' - qpos_x) / dt``. Never terminates;
    truncated at ``horizon``.

    Where implementations disagree (choice here in brackets):

    * Velocity range: the paper, maml_rl's ``sample_goals`` and pytorch-maml-rl use
      ``U[0, 2]`` (an early maml_rl fallback used ``U[0.1, 0.8]``); PEARL's cheetah-vel
      draws ``U[0, 3]`` (a fixed task set, seed 1337); varibad ``U[lb, lb + 1]``.
      [``U[0, 2]``, configurable]
    * Velocity: maml_rl (rllab) uses ``get_body_comvel("torso")[0]``, the instantaneous
      centre-of-mass velocity of the torso subtree (the whole cheetah) after the step;
      pytorch-maml-rl, PEARL, varibad and v5 use the finite difference of ``qpos[0]``.
      [finite difference of ``qpos[0]``, equal to v5's ``info["x_velocity"]``]
    * Control cost: rllab ``0.5 * 1e-1 * ||a||^2`` on the clipped action; pytorch-maml-rl,
      PEARL and varibad the same 0.05 on the unclipped action; HalfCheetah-v5's own
      default is 0.1. [0.05 on the action clipped to ``[-1, 1]``]
    * Time step: rllab ``dt = 0.01`` (timestep 0.01, no frame skip: 200 steps = 2 s);
      gym/gymnasium ``dt = 0.05`` (``frame_skip=5``: 200 steps = 10 s). The velocity
      targets are in m/s either way, but a 2 s rllab episode is mostly acceleration.
      [v5's ``frame_skip=5``; ``frame_skip=1`` approximates rllab]
    * Horizon: paper and maml_rl 200; pytorch-maml-rl's configs 100; varibad's class
      default 100. [200]
    * Observations: rllab 20 dims (``qpos[1:]``, ``qvel``, torso-subtree COM);
      pytorch-maml-rl 20 (torso body position, float32); v5 17 (float64). [v5: 17]
    * Reset noise: rllab ``qpos + N(0, 0.01^2)``; v5 ``qpos + U(-0.1, 0.1)``; both
      ``qvel + N(0, 0.1^2)``. [v5, ``reset_noise_scale``]
    * Termination: none anywhere. [never terminates]

    Args:
        horizon: Steps per episode; ``truncated`` is True at this step.
        render_mode: gymnasium render mode or None.
        ctrl_cost_weight: Weight of ``||a||^2`` (rllab: 0.05).
        reset_noise_scale: v5's reset noise scale.
        frame_skip: MuJoCo steps per env step (v5: 5, ``dt = 0.05``).
        velocity_low: Lower bound of the goal velocity.
        velocity_high: Upper bound of the goal velocity.
    """

    name = "halfcheetah-vel"
    description = "HalfCheetah runs at a hidden velocity v* ~ U[0,2], reward −|v_x − v*| − 0.05‖a‖²"
    _task_key = "velocity"

    def __init__(
        self,
        horizon: int = 200,
        render_mode: str | None = None,
        ctrl_cost_weight: float = HALF_CHEETAH_CTRL_COST,
        reset_noise_scale: float = 0.1,
        frame_skip: int = 5,
        velocity_low: float = 0.0,
        velocity_high: float = 2.0,
    ):
        self.velocity_low, self.velocity_high = _check_range(velocity_low, velocity_high)
        super().__init__(
            horizon,
            render_mode,
            ctrl_cost_weight,
            reset_noise_scale,
            frame_skip,
            ctor_kwargs={
                "horizon": horizon,
                "render_mode": render_mode,
                "ctrl_cost_weight": ctrl_cost_weight,
                "reset_noise_scale": reset_noise_scale,
                "frame_skip": frame_skip,
                "velocity_low": velocity_low,
                "velocity_high": velocity_high,
            },
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """``n`` tasks ``{"velocity": v*}``, ``v* ~ U[velocity_low, velocity_high]``."""
        return _sample_velocities(n, rng, self.velocity_low, self.velocity_high)


class _AntTaskEnv(_TaskEnvMixin, AntEnv):
    """Ant-v5 with MAML's reward; subclasses choose the task distribution."""

    #: Added to the forward term of velocity tasks (0 for direction tasks).
    velocity_offset: float = 0.0

    def __init__(
        self,
        horizon: int,
        render_mode: str | None,
        ctrl_cost_weight: float,
        contact_cost_weight: float,
        survive_reward: float,
        include_cfrc_ext_in_observation: bool,
        terminate_when_unhealthy: bool,
        reset_noise_scale: float,
        frame_skip: int,
        ctor_kwargs: dict[str, Any],
    ):
        horizon = _check_horizon(horizon)
        self.ctrl_cost_weight = _check_nonneg("ctrl_cost_weight", ctrl_cost_weight)
        self.contact_cost_weight = _check_nonneg("contact_cost_weight", contact_cost_weight)
        self.survive_reward = float(survive_reward)
        if isinstance(frame_skip, bool) or int(frame_skip) != frame_skip or frame_skip < 1:
            raise ValueError(f"frame_skip must be an integer >= 1, got {frame_skip!r}")
        super().__init__(
            frame_skip=int(frame_skip),
            # Only used by v5's own reward, which we replace; kept consistent for callers of
            # v5's helpers (contact_forces, is_healthy use the ranges below).
            ctrl_cost_weight=self.ctrl_cost_weight,
            contact_cost_weight=self.contact_cost_weight,
            healthy_reward=self.survive_reward,
            terminate_when_unhealthy=bool(terminate_when_unhealthy),
            healthy_z_range=_ANT_HEALTHY_Z,
            contact_force_range=_CONTACT_FORCE_RANGE,
            reset_noise_scale=_check_nonneg("reset_noise_scale", reset_noise_scale),
            include_cfrc_ext_in_observation=bool(include_cfrc_ext_in_observation),
            render_mode=render_mode,
        )
        # rllab divides actions by the half-width of the ctrlrange (150 in rllab's
        # ant.xml, 1 in v5's, whose gear of 150 moved the scale into the actuator).
        self._action_scale = (self.action_space.high - self.action_space.low).astype(np.float64) / 2
        self._init_task_env(horizon, ctor_kwargs)

    def step(self, action):
        action = self._clip_action(action)
        # qpos[0] is the free joint's x, i.e. the torso frame's x, current after mj_step.
        # (v5's reward uses data.body("torso").xpos, which mj_step computes before its
        # last integration substep and so lags qpos by one substep.)
        x_before = float(self.data.qpos[0])
        self.do_simulation(action, self.frame_skip)
        x_after = float(self.data.qpos[0])
        x_velocity = (x_after - x_before) / self.dt
        terms = reward_terms(
            self.task,
            x_velocity,
            action,
            ctrl_cost_weight=self.ctrl_cost_weight,
            action_scale=self._action_scale,
            # v5's _step_mujoco_simulation calls mj_rnePostConstraint, so cfrc_ext holds
            # this step's contact forces (with MuJoCo >= 2 it otherwise stays zero).
            contact_forces=self.data.cfrc_ext,
            contact_cost_weight=self.contact_cost_weight,
            # rllab pays the survive reward on every step, also the terminal one (v5 pays
            # its healthy_reward only while healthy).
            survive_reward=self.survive_reward,
            velocity_offset=self.velocity_offset,
        )
        reward = terms.pop("reward")
        terminated = bool(self._terminate_when_unhealthy and not self.is_healthy)
        truncated = self._tick(terminated)
        info = {
            "x_position": x_after,
            "y_position": float(self.data.qpos[1]),
            "x_velocity": x_velocity,
            **terms,
            **self.task,
        }
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, terminated, truncated, info


class AntDirEnv(_AntTaskEnv):
    """``ant-dir``: Ant-v5 rewarded for running forward or backward along x.

    Task ``{"direction": d}``, ``d`` uniform on ``{-1, +1}``. Per-step reward
    ``d * v_x - 0.005 ||clip(a)||^2 - 0.0005 sum(clip(cfrc_ext, -1, 1)^2) + 0.05`` with
    ``v_x = (qpos_x' - qpos_x) / dt``. Terminates when the ant is unhealthy (non-finite
    state or torso height outside ``[0.2, 1.0]``); truncated at ``horizon``.

    Where implementations disagree (choice here in brackets):

    * Task sampling: maml_rl draws ``U[0, 3)`` and sets ``d = -1`` below 1.5, else ``+1``;
      pytorch-maml-rl ``2 * Bernoulli(0.5) - 1``: both a fair coin. PEARL's ant-dir draws
      a 2D heading angle ``U[0, 2π)`` (``forward_backward=True`` gives ±x); varibad's
      AntDir samples ``d = ±1`` but uses it as an *angle* (reward along
      ``(cos d, sin d)``), i.e. ±57° off the x axis. [fair coin on ±x]
    * No velocity offset: rllab's ``+1.0`` appears in the velocity task only. [none]
    * Velocity: maml_rl (rllab) uses ``get_body_comvel("torso")[0]``, the instantaneous
      centre-of-mass velocity of the torso subtree (the whole ant) after the step;
      pytorch-maml-rl the finite difference of the torso body position (mujoco-py
      ``get_body_com`` = ``xpos``); Ant-v5 the finite difference of
      ``data.body("torso").xpos``, which lags ``qpos`` by one MuJoCo substep.
      [finite difference of ``qpos[0]`` (free-joint x = torso frame), current after the
      step]
    * Actuation and control cost: rllab's ant.xml has ``gear=1``, ``ctrlrange=±150`` and
      divides actions by 150 (``action / scaling``), so its cost ``0.5 * 1e-2 *
      ||a / 150||^2`` is on normalised actions; v5's ant.xml has ``gear=150``,
      ``ctrlrange=±1``, so the same cost is ``0.005 * ||a||^2``. pytorch-maml-rl keeps
      0.005; PEARL and varibad's AntDir use gym's 0.5; Ant-v5's default is 0.5.
      [0.005 on the clipped action divided by the ctrlrange half-width (1 in v5)]
    * Contact cost: ``0.5 * 1e-3 * sum(clip(cfrc_ext, -1, 1)^2)`` in rllab,
      pytorch-maml-rl, PEARL, varibad and Ant-v5 (``5e-4``). rllab's line ends in a stray
      comma (the cost is a 1-tuple), harmless after numpy broadcasting and ``float()``.
      With MuJoCo >= 2.0 through mujoco-py, ``cfrc_ext`` stays zero unless
      ``mj_rnePostConstraint`` is called (openai/gym#1541), so ports run on mujoco-py 2.x
      (pytorch-maml-rl's gym-era setup) saw all-zero contact costs and observations; v5
      calls it after every step. [5e-4, real contact forces]
    * Survive reward: rllab and pytorch-maml-rl 0.05 on every step, the terminal one
      included; PEARL, varibad and Ant-v5 1.0, and v5 pays it only while healthy.
      [0.05 on every step]
    * Time step: rllab's ant.xml ``timestep=0.02`` (RK4), no frame skip, ``dt = 0.02``;
      gym/gymnasium ``timestep=0.01`` x ``frame_skip=5``, ``dt = 0.05``. This matters
      here: at ``dt = 0.05`` the MAML initialisation (Gaussian, std 1) jumps the torso
      above 1.0 within ~50 steps (96 of 100 episodes), at ``dt = 0.02`` it lasts ~146 steps
      (``experiments/ant_episode_lengths.py``), and MAML adapts only at 0.02.
      [``frame_skip=2``, rllab's ``dt``; ``frame_skip=5`` gives v5's]
    * Observations: rllab ``qpos`` (15, x and y included) + ``qvel`` (14) +
      ``clip(cfrc_ext)`` (14 x 6 = 84) + torso rotation matrix (9) + torso COM (3) = 125;
      pytorch-maml-rl the same 125 (older versions drop x, y: 123), float32; Ant-v5
      ``qpos[2:]`` (13) + ``qvel`` (14) + ``clip(cfrc_ext[1:])`` (13 x 6 = 78) = 105,
      float64. [v5: 105, or 27 with ``include_cfrc_ext_in_observation=False``]
    * Initial pose: rllab starts at torso height 0.55 with bent legs (``init_qpos`` in its
      ant.xml), reset noise ``qpos + N(0, 0.01^2)``; v5 at height 0.75 with straight
      joints, ``qpos + U(-0.1, 0.1)``; both ``qvel + N(0, 0.1^2)``. [v5]
    * Termination: everyone ends the episode when the state is non-finite or the torso
      height leaves ``[0.2, 1.0]``. [same, ``terminate_when_unhealthy=True``]
    * Horizon: paper and maml_rl ``max_path_length = 200``; pytorch-maml-rl's configs
      100; varibad's AntDir 200. [200]

    Args:
        horizon: Steps per episode; ``truncated`` is True at this step.
        render_mode: gymnasium render mode or None.
        ctrl_cost_weight: Weight of ``||a / action_scale||^2`` (rllab: 0.005).
        contact_cost_weight: Weight of the clipped contact forces (rllab: 0.0005).
        survive_reward: Paid every step (rllab: 0.05).
        include_cfrc_ext_in_observation: v5 option; keep the 78 contact-force dims.
        terminate_when_unhealthy: End episodes when the ant flips or jumps.
        reset_noise_scale: v5's reset noise scale.
        frame_skip: MuJoCo steps per env step (``dt = 0.01 * frame_skip``; 2 = rllab's
            0.02 s, v5's own default is 5).
    """

    name = "ant-dir"
    description = "Ant runs forward or backward (hidden d = ±1), reward d·v_x − costs + 0.05"
    _task_key = "direction"

    def __init__(
        self,
        horizon: int = 200,
        render_mode: str | None = None,
        ctrl_cost_weight: float = ANT_CTRL_COST,
        contact_cost_weight: float = ANT_CONTACT_COST,
        survive_reward: float = ANT_SURVIVE_REWARD,
        include_cfrc_ext_in_observation: bool = True,
        terminate_when_unhealthy: bool = True,
        reset_noise_scale: float = 0.1,
        frame_skip: int = ANT_FRAME_SKIP,
    ):
        super().__init__(
            horizon,
            render_mode,
            ctrl_cost_weight,
            contact_cost_weight,
            survive_reward,
            include_cfrc_ext_in_observation,
            terminate_when_unhealthy,
            reset_noise_scale,
            frame_skip,
            ctor_kwargs={
                "horizon": horizon,
                "render_mode": render_mode,
                "ctrl_cost_weight": ctrl_cost_weight,
                "contact_cost_weight": contact_cost_weight,
                "survive_reward": survive_reward,
                "include_cfrc_ext_in_observation": include_cfrc_ext_in_observation,
                "terminate_when_unhealthy": terminate_when_unhealthy,
                "reset_noise_scale": reset_noise_scale,
                "frame_skip": frame_skip,
            },
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """``n`` tasks ``{"direction": ±1.0}``, each side with probability 1/2, from ``rng``."""
        return _sample_directions(n, rng)


class AntVelEnv(_AntTaskEnv):
    """``ant-vel``: Ant-v5 rewarded for running along x at a goal velocity.

    Task ``{"velocity": v*}``, ``v* ~ U[velocity_low, velocity_high] = U[0, 3]``.
    Per-step reward ``-|v_x - v*| + 1 - 0.005 ||clip(a)||^2
    - 0.0005 sum(clip(cfrc_ext, -1, 1)^2) + 0.05``. Terminates when the ant is unhealthy;
    truncated at ``horizon``.

    Where implementations disagree (choice here in brackets):

    * Velocity range: maml_rl and pytorch-maml-rl ``U[0, 3]`` (an early maml_rl fallback
      used ``U[0.1, 0.8]``). [``U[0, 3]``, configurable]
    * Velocity offset: rllab adds ``+1.0`` to the forward term ("make it happy, not
      suicidal": the other terms alone are negative, which would reward falling over
      early); pytorch-maml-rl keeps it. [``velocity_offset=1.0``]
    * Velocity: maml_rl (rllab) uses ``get_body_comvel("torso")[0]``, the instantaneous
      centre-of-mass velocity of the torso subtree (the whole ant) after the step;
      pytorch-maml-rl the finite difference of the torso body position (mujoco-py
      ``get_body_com`` = ``xpos``); Ant-v5 the finite difference of
      ``data.body("torso").xpos``, which lags ``qpos`` by one MuJoCo substep.
      [finite difference of ``qpos[0]`` (free-joint x = torso frame), current after the
      step]
    * Actuation and control cost: rllab's ant.xml has ``gear=1``, ``ctrlrange=±150`` and
      divides actions by 150 (``action / scaling``), so its cost ``0.5 * 1e-2 *
      ||a / 150||^2`` is on normalised actions; v5's ant.xml has ``gear=150``,
      ``ctrlrange=±1``, so the same cost is ``0.005 * ||a||^2``. pytorch-maml-rl keeps
      0.005; PEARL and varibad's AntDir use gym's 0.5; Ant-v5's default is 0.5.
      [0.005 on the clipped action divided by the ctrlrange half-width (1 in v5)]
    * Contact cost: ``0.5 * 1e-3 * sum(clip(cfrc_ext, -1, 1)^2)`` in rllab,
      pytorch-maml-rl, PEARL, varibad and Ant-v5 (``5e-4``). rllab's line ends in a stray
      comma (the cost is a 1-tuple), harmless after numpy broadcasting and ``float()``.
      With MuJoCo >= 2.0 through mujoco-py, ``cfrc_ext`` stays zero unless
      ``mj_rnePostConstraint`` is called (openai/gym#1541), so ports run on mujoco-py 2.x
      (pytorch-maml-rl's gym-era setup) saw all-zero contact costs and observations; v5
      calls it after every step. [5e-4, real contact forces]
    * Survive reward: rllab and pytorch-maml-rl 0.05 on every step, the terminal one
      included; PEARL, varibad and Ant-v5 1.0, and v5 pays it only while healthy.
      [0.05 on every step]
    * Time step: rllab's ant.xml ``timestep=0.02`` (RK4), no frame skip, ``dt = 0.02``;
      gym/gymnasium ``timestep=0.01`` x ``frame_skip=5``, ``dt = 0.05``. This matters
      here: at ``dt = 0.05`` the MAML initialisation (Gaussian, std 1) jumps the torso
      above 1.0 within ~50 steps (96 of 100 episodes), at ``dt = 0.02`` it lasts ~146 steps
      (``experiments/ant_episode_lengths.py``), and MAML adapts only at 0.02.
      [``frame_skip=2``, rllab's ``dt``; ``frame_skip=5`` gives v5's]
    * Observations: rllab ``qpos`` (15, x and y included) + ``qvel`` (14) +
      ``clip(cfrc_ext)`` (14 x 6 = 84) + torso rotation matrix (9) + torso COM (3) = 125;
      pytorch-maml-rl the same 125 (older versions drop x, y: 123), float32; Ant-v5
      ``qpos[2:]`` (13) + ``qvel`` (14) + ``clip(cfrc_ext[1:])`` (13 x 6 = 78) = 105,
      float64. [v5: 105, or 27 with ``include_cfrc_ext_in_observation=False``]
    * Initial pose: rllab starts at torso height 0.55 with bent legs (``init_qpos`` in its
      ant.xml), reset noise ``qpos + N(0, 0.01^2)``; v5 at height 0.75 with straight
      joints, ``qpos + U(-0.1, 0.1)``; both ``qvel + N(0, 0.1^2)``. [v5]
    * Termination: everyone ends the episode when the state is non-finite or the torso
      height leaves ``[0.2, 1.0]``. [same, ``terminate_when_unhealthy=True``]
    * Horizon: paper and maml_rl ``max_path_length = 200``; pytorch-maml-rl's configs
      100; varibad's AntDir 200. [200]

    Args:
        horizon: Steps per episode; ``truncated`` is True at this step.
        render_mode: gymnasium render mode or None.
        ctrl_cost_weight: Weight of ``||a / action_scale||^2`` (rllab: 0.005).
        contact_cost_weight: Weight of the clipped contact forces (rllab: 0.0005).
        survive_reward: Paid every step (rllab: 0.05).
        include_cfrc_ext_in_observation: v5 option; keep the 78 contact-force dims.
        terminate_when_unhealthy: End episodes when the ant flips or jumps.
        reset_noise_scale: v5's reset noise scale.
        frame_skip: MuJoCo steps per env step (``dt = 0.01 * frame_skip``; 2 = rllab's
            0.02 s, v5's own default is 5).
        velocity_low: Lower bound of the goal velocity.
        velocity_high: Upper bound of the goal velocity.
        velocity_offset: Constant added to ``-|v_x - v*|`` (rllab: 1.0).
    """

    name = "ant-vel"
    description = "Ant runs at a hidden velocity v* ~ U[0,3], reward −|v_x − v*| + 1 − costs + 0.05"
    _task_key = "velocity"

    def __init__(
        self,
        horizon: int = 200,
        render_mode: str | None = None,
        ctrl_cost_weight: float = ANT_CTRL_COST,
        contact_cost_weight: float = ANT_CONTACT_COST,
        survive_reward: float = ANT_SURVIVE_REWARD,
        include_cfrc_ext_in_observation: bool = True,
        terminate_when_unhealthy: bool = True,
        reset_noise_scale: float = 0.1,
        frame_skip: int = ANT_FRAME_SKIP,
        velocity_low: float = 0.0,
        velocity_high: float = 3.0,
        velocity_offset: float = ANT_VEL_OFFSET,
    ):
        self.velocity_low, self.velocity_high = _check_range(velocity_low, velocity_high)
        self.velocity_offset = float(velocity_offset)
        super().__init__(
            horizon,
            render_mode,
            ctrl_cost_weight,
            contact_cost_weight,
            survive_reward,
            include_cfrc_ext_in_observation,
            terminate_when_unhealthy,
            reset_noise_scale,
            frame_skip,
            ctor_kwargs={
                "horizon": horizon,
                "render_mode": render_mode,
                "ctrl_cost_weight": ctrl_cost_weight,
                "contact_cost_weight": contact_cost_weight,
                "survive_reward": survive_reward,
                "include_cfrc_ext_in_observation": include_cfrc_ext_in_observation,
                "terminate_when_unhealthy": terminate_when_unhealthy,
                "reset_noise_scale": reset_noise_scale,
                "frame_skip": frame_skip,
                "velocity_low": velocity_low,
                "velocity_high": velocity_high,
                "velocity_offset": velocity_offset,
            },
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        """``n`` tasks ``{"velocity": v*}``, ``v* ~ U[velocity_low, velocity_high]``."""
        return _sample_velocities(n, rng, self.velocity_low, self.velocity_high)
