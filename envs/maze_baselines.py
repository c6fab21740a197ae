"""Reference policies for the maze task (:mod:`envs.maze`).

* :class:`RandomWalk` – uniform random actions.
* :class:`MazeOracle` – knows the maze and the goal and walks the shortest path from its
  current cell; an episode takes exactly :func:`envs.maze.shortest_path_actions` steps.
* :class:`ExploreExploitPolicy` – what a perfect learner of the two-episode trial could
  do: follow the left-hand wall in episode 1 until it stumbles onto the goal, then walk the
  shortest path in every later episode of the trial.

The oracle and explore-exploit policies are task-aware (``set_tasks``). They do not read
the agent's position from the observation: they dead-reckon it from the task's start
pose, the true walls and their own actions (the dynamics are deterministic), and restart
from the start pose whenever ``episode_step == 0``.

Explore-exploit reads two pieces of privileged information, on purpose: in episode 1 it
senses whether the blocks left of and ahead of it are walls (an agent can see the wall
ahead and learn the one to its left by turning), and in episode 2 it takes the shortest
path through the *true* maze. The wall follower in a perfect maze walks along the single
wall structure and has passed through every cell it needs by the time it reaches the
goal, so the shortest path uses only corridors it has seen; computing that path from its
own map would give the same route.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from envs.maze import (
    FORWARD,
    TURN_LEFT,
    TURN_RIGHT,
    MazeTasks,
    _cell_delta,
    best_direction_table,
    cell_distances,
    front_open_table,
)
from metarl.policy import PolicyStep, StepInput


class RandomWalk:
    """Uniform random actions (turn left, turn right, forward), for every row."""

    def initial_state(self, num_rows: int, device: torch.device) -> None:
        return None

    def step(self, inp: StepInput, state: None, generator: torch.Generator) -> PolicyStep:
        rows, device = inp.obs.shape[0], inp.obs.device
        action = torch.randint(3, (rows,), generator=generator, device=device)
        log_prob = torch.full((rows,), -math.log(3.0), device=device)
        return PolicyStep(action, log_prob, torch.zeros(rows, device=device), None)


@dataclasses.dataclass(frozen=True)
class NavigatorState:
    """Per-row state of the task-aware maze policies.

    Attributes:
        cell: Dead-reckoned cell after the last action, ``[B]`` long (``row * W + col``).
        heading: Dead-reckoned heading after the last action, ``[B]`` long.
        found: The goal has been reached in this trial, ``[B]`` bool.
        pending_forward: The wall follower just turned left and must now step, ``[B]``.
    """

    cell: torch.Tensor
    heading: torch.Tensor
    found: torch.Tensor
    pending_forward: torch.Tensor


class _MazeNavigator:
    """Shared machinery: true-maze tables, pose tracking and the shortest-path step."""

    def __init__(self) -> None:
        self._tasks: MazeTasks | None = None

    def set_tasks(self, tasks: MazeTasks) -> None:
        """Precomputes, per row, the walls and the BFS direction towards the goal."""
        rows, cols = tasks.maze_size
        self._tasks = tasks
        self._cols = cols
        self._front_open = front_open_table(tasks.grid)  # [B, H*W*4]
        dist = cell_distances(tasks.grid, tasks.goal)
        self._best = best_direction_table(tasks.grid, dist).reshape(len(tasks), rows * cols)
        self._start_cell = tasks.start[:, 0] * cols + tasks.start[:, 1]
        self._delta = _cell_delta(cols, tasks.grid.device)

    def initial_state(self, num_rows: int, device: torch.device) -> NavigatorState:
        zeros = torch.zeros(num_rows, dtype=torch.long, device=device)
        false = torch.zeros(num_rows, dtype=torch.bool, device=device)
        return NavigatorState(zeros, zeros, false, false)

    def _begin(self, inp: StepInput, state: NavigatorState) -> NavigatorState:
        """Moves the tracked pose to the start pose wherever an episode begins."""
        if self._tasks is None:
            raise RuntimeError(f"{type(self).__name__}.set_tasks() must be called before step()")
        rows = inp.obs.shape[0]
        if len(self._tasks) != rows:
            raise ValueError(f"policy knows {len(self._tasks)} tasks, got {rows} rows")
        device = self._front_open.device
        new_episode = inp.episode_step.to(device) == 0
        trial_start = inp.trial_start.to(device)
        # The goal reward (+1) is the only positive reward, so it marks a found goal.
        found = (state.found.to(device) & ~trial_start) | (inp.prev_reward.to(device) > 0.5)
        return NavigatorState(
            cell=torch.where(new_episode, self._start_cell, state.cell.to(device)),
            heading=torch.where(new_episode, self._tasks.start_heading, state.heading.to(device)),
            found=found & ~trial_start,
            pending_forward=state.pending_forward.to(device) & ~new_episode,
        )

    def _open(self, state: NavigatorState, heading: torch.Tensor) -> torch.Tensor:
        return self._front_open.gather(1, (state.cell * 4 + heading)[:, None]).squeeze(1)

    def _shortest_path_action(self, state: NavigatorState) -> torch.Tensor:
        """Forward if facing the BFS direction, else the shorter turn towards it."""
        want = self._best.gather(1, state.cell[:, None]).squeeze(1)
        turns = (want - state.heading) % 4
        action = torch.full_like(want, TURN_RIGHT)  # also for a U-turn (two right turns)
        action = torch.where(turns == 0, FORWARD, action)
        return torch.where(turns == 3, TURN_LEFT, action)

    def _finish(
        self, inp: StepInput, state: NavigatorState, action: torch.Tensor, pending: torch.Tensor
    ) -> PolicyStep:
        """Applies ``action`` to the tracked pose, exactly like the env does."""
        move = (action == FORWARD) & self._open(state, state.heading)
        cell = state.cell + move * self._delta[state.heading]
        turn = (action == TURN_RIGHT).long() - (action == TURN_LEFT).long()
        heading = (state.heading + turn) % 4
        new_state = NavigatorState(cell, heading, state.found, pending)
        out_device = inp.obs.device
        zeros = torch.zeros(len(action), device=out_device)
        return PolicyStep(action.to(out_device), zeros, zeros, new_state)


class MazeOracle(_MazeNavigator):
    """Walks the shortest path from its current cell to the goal (knows the maze)."""

    def step(self, inp: StepInput, state: NavigatorState, generator: torch.Generator) -> PolicyStep:
        state = self._begin(inp, state)
        action = self._shortest_path_action(state)
        return self._finish(inp, state, action, state.pending_forward)


class ExploreExploitPolicy(_MazeNavigator):
    """Left-hand wall following until the goal is found, then the shortest path.

    See the module docstring for the information it is given.
    """

    def step(self, inp: StepInput, state: NavigatorState, generator: torch.Generator) -> PolicyStep:
        state = self._begin(inp, state)
        left_open = self._open(state, (state.heading + 3) % 4)
        front_open = self._open(state, state.heading)
        # Left-hand rule: turn left (then step) whenever the left is open, else go
        # forward, else turn right and look again.
        follow = torch.where(front_open, FORWARD, TURN_RIGHT)
        follow = torch.where(left_open, TURN_LEFT, follow)
        follow = torch.where(state.pending_forward, FORWARD, follow)
        exploit = self._shortest_path_action(state)
        action = torch.where(state.found, exploit, follow)
        pending = ~state.found & ~state.pending_forward & left_open
        return self._finish(inp, state, action, pending)
