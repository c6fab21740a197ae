"""Visual maze navigation with memory (SNAIL, Mishra et al. 2018, Table 5), rebuilt for speed.

A task is a perfect maze (randomised depth-first search) of ``size × size`` cells with a
goal cell, a start cell and start heading that stay fixed for the task, and a colour id on
every wall block so that places look different. A trial is ``K = 2`` episodes on the same
task: the agent explores the unseen maze in episode 1 and, if it remembers, walks straight
to the goal in episode 2.

Geometry. A maze of ``H × W`` cells is stored as an occupancy grid ``[2H+1, 2W+1]`` of
"blocks" (the Wolfenstein layout): block ``(2r+1, 2c+1)`` is cell ``(r, c)``, the blocks
between two cells are passages or walls, even/even blocks are pillars and the border is
wall. Grid values are 0 for free blocks and a colour id ``1..num_colors`` for walls. The
agent stands in the centre of its cell's block, facing one of four headings
(0 north/up, 1 east/right, 2 south/down, 3 west/left).

Actions (``Discrete(3)``): 0 turn left, 1 turn right, 2 move forward one cell (into a wall:
stay). Reward: +1 on entering the goal cell (the episode terminates), ``-step_penalty``
on every other step, minus ``collision_penalty`` more when bumping into a wall.

Observations (flat float32 ``Box`` in ``[0, 1]``):

* ``view="rays"`` – a first-person, low-resolution view: ``num_rays`` columns spread over
  ``fov_degrees`` (left to right), each cast from the agent's centre until it enters a
  wall block. Per ray, ``[depth, goal_visible, goal_depth, colour one-hot (num_colors)]``;
  depth is the Euclidean distance to the wall's surface divided by the grid diagonal,
  ``goal_visible`` is 1 if the ray passes through the goal cell before the wall and then
  ``goal_depth`` is the distance at which it enters the goal cell (0 otherwise). The layout
  is feature-major, ``obs.view(3 + num_colors, num_rays)[f, r]``, i.e. a 1-D image with
  ``3 + num_colors`` channels (ready for a 1-D convolution over the rays).
* ``view="topdown"`` – an egocentric crop of ``S × S`` blocks, ``S = 4 * topdown_radius + 3``
  (``topdown_radius`` cells around the agent, forward is up), channels-first
  ``[wall, goal, colour / num_colors]``; blocks outside the maze are walls of colour 0.

Speed. Because the pose is discrete (cell × heading), every ray's path through the grid is
known in advance: ``_ray_tables`` runs an exact grid traversal (Amanatides & Woo DDA) once
per (heading, ray), translates it to every cell and stores the block indices each ray
enters and the distance at which it enters them. Rendering a batch is then a gather from
the grids and a first-wall search (``max`` over the march dimension), done densely for the
first ``_FIRST_STAGE`` blocks (97% of rays stop there) and only for the remaining rays
beyond; the goal test is one lookup per ray in a (pose, goal cell) table. No Python loop
over envs or march steps runs per step.

The dynamics are written once, batched in torch (:class:`MazeEnv`); the gymnasium env
:class:`MazeGymEnv` (``metarl/Maze-v0``) is a one-row view of it with an ``rgb_array``
renderer, and :func:`draw_trial_paths` draws a trial's episodes side by side like
SNAIL's Figure 5.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.policy import Policy
from metarl.tasks import TaskBatch
from metarl.vector import BatchedEnvView, TensorTaskEnv

TURN_LEFT, TURN_RIGHT, FORWARD = 0, 1, 2
#: (d_row, d_col) of one step along each heading: north, east, south, west.
HEADING_DELTAS = ((-1, 0), (0, 1), (1, 0), (0, -1))
#: Named maze sizes of the SNAIL paper.
SIZES = {"small": 5, "large": 9}

# Topdown grid markers (wall colours are 1..num_colors <= 253).
_GOAL_MARK = 254
_OUTSIDE_MARK = 255
_MAX_COLORS = 253
#: Blocks every ray marches through densely before the rays still in the open go on.
_FIRST_STAGE = 4


@dataclasses.dataclass(frozen=True)
class MazeTasks(TaskBatch):
    """A batch of mazes.

    Attributes:
        grid: Block occupancy ``[n, 2H+1, 2W+1]`` uint8: 0 free, ``1..C`` wall colour id.
        goal: Goal cell ``[n, 2]`` long, (row, col).
        start: Start cell ``[n, 2]`` long, (row, col); the same in every episode.
        start_heading: Start heading ``[n]`` long (0 north, 1 east, 2 south, 3 west).
    """

    grid: torch.Tensor
    goal: torch.Tensor
    start: torch.Tensor
    start_heading: torch.Tensor

    @property
    def maze_size(self) -> tuple[int, int]:
        """Maze size in cells, ``(H, W)``."""
        return (self.grid.shape[1] - 1) // 2, (self.grid.shape[2] - 1) // 2


# ----------------------------------------------------------------------------- generation
def generate_mazes(n: int, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Perfect mazes by randomised depth-first search (recursive backtracker).

    The ``n`` searches run in lockstep over numpy arrays: every iteration each maze either
    carves into a random unvisited neighbour of the cell on top of its stack or pops it.
    Each maze uses its own pre-drawn uniforms, so a maze depends on ``rng`` only.

    Args:
        n: Number of mazes.
        rows: Cells per column ``H`` (>= 1).
        cols: Cells per row ``W`` (>= 1).
        rng: Source of all randomness.

    Returns:
        Free-block mask ``[n, 2H+1, 2W+1]`` bool (True = free).
    """
    cells = rows * cols
    r, c = np.divmod(np.arange(cells), cols)
    # Neighbour cell per direction, or the sentinel ``cells`` (always "visited") outside.
    nbr = np.full((cells, 4), cells, dtype=np.int64)
    for d, (dr, dc) in enumerate(HEADING_DELTAS):
        inside = (r + dr >= 0) & (r + dr < rows) & (c + dc >= 0) & (c + dc < cols)
        nbr[inside, d] = (r + dr)[inside] * cols + (c + dc)[inside]
    first = rng.integers(cells, size=n)
    # One uniform per (maze, iteration) whether used or not keeps mazes independent of n.
    uniforms = rng.random((n, 2 * cells))
    ar = np.arange(n)
    visited = np.zeros((n, cells + 1), dtype=bool)
    visited[:, cells] = True
    visited[ar, first] = True
    stack = np.zeros((n, cells), dtype=np.int64)
    stack[:, 0] = first
    depth = np.ones(n, dtype=np.int64)
    free = np.zeros((n, 2 * rows + 1, 2 * cols + 1), dtype=bool)
    free[:, 1::2, 1::2] = True
    carved = 0
    for it in range(2 * cells):
        if carved == n * (cells - 1):
            break  # every maze is complete; the remaining iterations would only pop
        active = depth > 0
        cur = stack[ar, np.maximum(depth - 1, 0)]
        cand = ~visited[ar[:, None], nbr[cur]]
        count = cand.sum(axis=1)
        carve = active & (count > 0)
        pick = np.minimum((uniforms[:, it] * count).astype(np.int64), np.maximum(count - 1, 0))
        choice = (np.cumsum(cand, axis=1) > pick[:, None]).argmax(axis=1)
        nxt = nbr[cur, choice]
        m = np.flatnonzero(carve)
        cr, cc = np.divmod(cur[m], cols)
        nr, nc = np.divmod(nxt[m], cols)
        free[m, cr + nr + 1, cc + nc + 1] = True
        visited[m, nxt[m]] = True
        stack[m, depth[m]] = nxt[m]
        depth[m] += 1
        depth[active & (count == 0)] -= 1
        carved += len(m)
    return free


def maze_from_ascii(
    lines: Sequence[str],
    goal: tuple[int, int],
    start: tuple[int, int],
    start_heading: int = 0,
) -> MazeTasks:
    """A one-task :class:`MazeTasks` from a drawing of its block grid.

    Args:
        lines: ``2H+1`` strings of ``2W+1`` characters: ``' '`` or ``'.'`` free, a digit
            ``1-9`` a wall of that colour, any other character a wall of colour 1.
        goal: Goal cell (row, col).
        start: Start cell (row, col).
        start_heading: 0 north, 1 east, 2 south, 3 west.

    Raises:
        ValueError: If the drawing is ragged, has even dimensions or an open border, or
            a cell or heading is out of range.
    """
    width = len(lines[0])
    if any(len(line) != width for line in lines) or len(lines) % 2 == 0 or width % 2 == 0:
        raise ValueError("maze drawing must be a (2H+1) x (2W+1) rectangle")
    grid = np.zeros((len(lines), width), dtype=np.uint8)
    for i, line in enumerate(lines):
        for j, ch in enumerate(line):
            if ch in " .":
                continue
            grid[i, j] = int(ch) if ch.isdigit() and ch != "0" else 1
    if (
        (grid[0] == 0).any()
        or (grid[-1] == 0).any()
        or (grid[:, 0] == 0).any()
        or (grid[:, -1] == 0).any()
    ):
        raise ValueError("the maze border must be wall")
    rows, cols = (grid.shape[0] - 1) // 2, (grid.shape[1] - 1) // 2
    for name, (r, c) in (("goal", goal), ("start", start)):
        if not (0 <= r < rows and 0 <= c < cols):
            raise ValueError(f"{name} {(r, c)} is outside the {rows}x{cols} maze")
    if start_heading not in range(4):
        raise ValueError(f"start_heading must be 0..3, got {start_heading!r}")
    return MazeTasks(
        grid=torch.from_numpy(grid)[None],
        goal=torch.tensor([goal], dtype=torch.long),
        start=torch.tensor([start], dtype=torch.long),
        start_heading=torch.tensor([start_heading], dtype=torch.long),
    )


# ----------------------------------------------------------------------------- maze helpers
def front_open_table(grid: torch.Tensor) -> torch.Tensor:
    """Whether a step forward is possible from each pose.

    Args:
        grid: ``[B, 2H+1, 2W+1]`` block grid.

    Returns:
        ``[B, H*W*4]`` bool indexed by ``pose = cell * 4 + heading``.
    """
    gh, gw = grid.shape[1:]
    rows, cols = (gh - 1) // 2, (gw - 1) // 2
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    dr = torch.tensor([d[0] for d in HEADING_DELTAS])
    dc = torch.tensor([d[1] for d in HEADING_DELTAS])
    block = (2 * r.reshape(-1, 1) + 1 + dr) * gw + (2 * c.reshape(-1, 1) + 1 + dc)
    return grid.reshape(grid.shape[0], -1)[:, block.reshape(-1).to(grid.device)] == 0


def cell_distances(grid: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Shortest-path distances in cells from every cell to the goal (batched BFS).

    A breadth-first wavefront over all mazes at once, in numpy: it runs once per task
    batch, and numpy's serial boolean ops beat small parallel torch kernels on a shared
    CPU.

    Args:
        grid: ``[B, 2H+1, 2W+1]`` block grid.
        goal: ``[B, 2]`` goal cell (row, col).

    Returns:
        ``[B, H, W]`` long on ``grid``'s device; unreachable cells get ``H * W`` (larger
        than any distance).
    """
    g = grid.cpu().numpy()
    b, gh, gw = g.shape
    rows, cols = (gh - 1) // 2, (gw - 1) // 2
    big = rows * cols
    open_e = g[:, 1::2, 2:-1:2] == 0  # [B, H, W-1] passage between (r, c) and (r, c+1)
    open_s = g[:, 2:-1:2, 1::2] == 0  # [B, H-1, W] passage between (r, c) and (r+1, c)
    goal_np = goal.cpu().numpy()
    dist = np.full((b, rows, cols), big, dtype=np.int64)
    frontier = np.zeros((b, rows, cols), dtype=bool)
    frontier[np.arange(b), goal_np[:, 0], goal_np[:, 1]] = True
    dist[frontier] = 0
    d = 0
    while frontier.any():
        d += 1
        nxt = np.zeros_like(frontier)
        nxt[:, :, :-1] |= frontier[:, :, 1:] & open_e
        nxt[:, :, 1:] |= frontier[:, :, :-1] & open_e
        nxt[:, :-1, :] |= frontier[:, 1:, :] & open_s
        nxt[:, 1:, :] |= frontier[:, :-1, :] & open_s
        nxt &= dist == big
        dist[nxt] = d
        frontier = nxt
    return torch.from_numpy(dist).to(grid.device)


def shortest_path_actions(tasks: MazeTasks) -> torch.Tensor:
    """Fewest actions (turns + moves) from the start pose to the goal, ``[n]`` long.

    In a perfect maze the cell path is unique, so the fewest actions are its length plus
    the quarter turns needed to face each of its steps (a U-turn counts two). The walk
    runs in numpy, like :func:`cell_distances`.
    """
    rows, cols = tasks.maze_size
    dist = cell_distances(tasks.grid, tasks.goal)
    n = len(tasks)
    best = best_direction_table(tasks.grid, dist).reshape(n, rows * cols).cpu().numpy()
    ar = np.arange(n)
    start, goal = tasks.start.cpu().numpy(), tasks.goal.cpu().numpy()
    cell = start[:, 0] * cols + start[:, 1]
    heading = tasks.start_heading.cpu().numpy().copy()
    goal_cell = goal[:, 0] * cols + goal[:, 1]
    delta = np.array([-cols, 1, cols, -1])
    total = np.zeros(n, dtype=np.int64)
    for _ in range(rows * cols):
        active = cell != goal_cell
        if not active.any():
            break
        want = best[ar, cell]
        turns = (want - heading) % 4
        total += np.where(active, 1 + np.where(turns == 2, 2, turns != 0), 0)
        cell = np.where(active, cell + delta[want], cell)
        heading = np.where(active, want, heading)
    return torch.from_numpy(total).to(tasks.grid.device)


def best_direction_table(grid: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """The heading that leads one cell closer to the goal, ``[B, H, W]`` long.

    Args:
        grid: ``[B, 2H+1, 2W+1]`` block grid.
        dist: ``[B, H, W]`` cell distances from :func:`cell_distances`.
    """
    b, rows, cols = dist.shape
    big = rows * cols + 1
    padded = torch.nn.functional.pad(dist, (1, 1, 1, 1), value=big)
    opened = front_open_table(grid).reshape(b, rows, cols, 4)
    nd = torch.stack(
        [padded[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols] for dr, dc in HEADING_DELTAS],
        dim=-1,
    )
    return torch.where(opened, nd, big).argmin(dim=-1)


def _cell_delta(cols: int, device: torch.device | str) -> torch.Tensor:
    """Change of the linear cell index for one step along each heading."""
    return torch.tensor([-cols, 1, cols, -1], dtype=torch.long, device=device)


# ----------------------------------------------------------------------------- view tables
def _ray_angles(num_rays: int, fov_degrees: float) -> np.ndarray:
    """Ray angles relative to the heading, left to right (positive = to the right)."""
    return np.deg2rad(fov_degrees * ((np.arange(num_rays) + 0.5) / num_rays - 0.5))


def _dda(dy: float, dx: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks entered by a ray from the centre of block (0, 0), exact grid traversal.

    Returns:
        Block offsets ``[steps, 2]`` (d_row, d_col) in entry order, and the distance
        along the (unit) ray at which each is entered ``[steps]``.
    """
    sy, sx = (1 if dy > 0 else -1), (1 if dx > 0 else -1)
    t_y = 0.5 / abs(dy) if dy != 0 else math.inf
    t_x = 0.5 / abs(dx) if dx != 0 else math.inf
    d_y = 1.0 / abs(dy) if dy != 0 else math.inf
    d_x = 1.0 / abs(dx) if dx != 0 else math.inf
    by = bx = 0
    offsets = np.zeros((steps, 2), dtype=np.int64)
    dist = np.zeros(steps)
    for k in range(steps):
        if t_x < t_y:
            bx += sx
            dist[k] = t_x
            t_x += d_x
        else:
            by += sy
            dist[k] = t_y
            t_y += d_y
        offsets[k] = by, bx
    return offsets, dist


@functools.lru_cache(maxsize=16)
def _ray_tables(
    rows: int, cols: int, num_rays: int, fov_degrees: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precomputed ray casting for every pose of an ``rows × cols`` maze.

    Returns:
        ``block_idx`` ``[H*W*4, R, K]`` int64: linear grid index of the k-th block each
        ray enters from pose ``cell * 4 + heading``. ``K`` is the longest march until a
        ray enters the border; after that the border block is repeated, so the first
        wall along every row of the table is always found within ``K``.
        ``depth`` ``[4, R, K]`` float32: distance at which the k-th block is entered,
        divided by the grid diagonal (the same for every cell, by translation).
        ``goal_k`` ``[H*W*4 * H*W, R]`` int16: the k at which each ray from a pose enters
        cell ``g``'s block (index ``pose * H*W + g``), or ``K`` if it never does.
    """
    gh, gw = 2 * rows + 1, 2 * cols + 1
    cells = rows * cols
    cap = gh + gw  # after gh + gw unit steps a ray has certainly left the grid
    angles = _ray_angles(num_rays, fov_degrees)
    offsets = np.zeros((4, num_rays, cap, 2), dtype=np.int64)
    dist = np.zeros((4, num_rays, cap))
    for h, (hy, hx) in enumerate(HEADING_DELTAS):
        for i, a in enumerate(angles):
            # Rotate the heading by ``a`` clockwise on screen (rows grow downwards). The
            # heading is an exact unit axis, so a = 0 yields an exactly axis-aligned ray.
            dx = hx * math.cos(a) - hy * math.sin(a)
            dy = hx * math.sin(a) + hy * math.cos(a)
            dx = 0.0 if abs(dx) < 1e-12 else dx
            dy = 0.0 if abs(dy) < 1e-12 else dy
            offsets[h, i], dist[h, i] = _dda(dy, dx, cap)
    r, c = np.divmod(np.arange(cells), cols)
    ay = (2 * r + 1)[:, None, None, None] + offsets[None, ..., 0]  # [cells, 4, R, cap]
    ax = (2 * c + 1)[:, None, None, None] + offsets[None, ..., 1]
    border = (ay <= 0) | (ay >= gh - 1) | (ax <= 0) | (ax >= gw - 1)
    first_border = border.argmax(axis=-1)  # a ray enters the border before leaving
    k_max = int(first_border.max()) + 1
    ks = np.arange(k_max)
    clip_k = np.minimum(ks, first_border[..., None])  # repeat the border block afterwards
    ay = np.take_along_axis(ay, clip_k, axis=-1)
    ax = np.take_along_axis(ax, clip_k, axis=-1)
    block_idx = (ay * gw + ax).reshape(cells * 4, num_rays, k_max)
    depth = (dist[..., :k_max] / math.hypot(gh, gw)).astype(np.float32)

    goal_k = np.full((cells * 4, cells, num_rays), k_max, dtype=np.int16)
    ayr, axr = ay.reshape(cells * 4, num_rays, k_max), ax.reshape(cells * 4, num_rays, k_max)
    is_cell = (ayr % 2 == 1) & (axr % 2 == 1) & (ks <= first_border.reshape(-1, num_rays, 1))
    p, i, k = np.nonzero(is_cell)
    g = (ayr[p, i, k] // 2) * cols + axr[p, i, k] // 2
    goal_k[p, g, i] = k  # a ray enters each block at most once
    return block_idx, depth, goal_k.reshape(cells * 4 * cells, num_rays)


@functools.lru_cache(maxsize=16)
def _topdown_table(rows: int, cols: int, radius: int) -> np.ndarray:
    """Crop indices ``[H*W*4, S*S]`` into the grid padded by ``P = 2 * radius + 1``.

    Crop position ``(i, j)`` (row 0 = farthest ahead, column 0 = leftmost) of pose
    ``cell * 4 + heading`` maps to the block ``ahead`` forward and ``side`` right of the
    agent, so the crop is rotated to the heading.
    """
    pad = 2 * radius + 1
    size = 2 * pad + 1
    pw = 2 * cols + 1 + 2 * pad
    r, c = np.divmod(np.arange(rows * cols), cols)
    i, j = np.divmod(np.arange(size * size), size)
    ahead, side = pad - i, j - pad
    table = np.zeros((rows * cols, 4, size * size), dtype=np.int64)
    for h, (fy, fx) in enumerate(HEADING_DELTAS):
        ry, rx = fx, -fy  # the heading turned 90° clockwise: the agent's right
        y = (2 * r + 1 + pad)[:, None] + ahead * fy + side * ry
        x = (2 * c + 1 + pad)[:, None] + ahead * fx + side * rx
        table[:, h] = y * pw + x
    return table.reshape(rows * cols * 4, size * size)


# ----------------------------------------------------------------------------- batched env
class MazeEnv(TensorTaskEnv):
    """``num_envs`` maze agents stepped and rendered in a handful of torch ops.

    Args:
        num_envs: Number of rows ``B``.
        size: Maze size in cells (square, ``size × size``).
        max_steps: Episode time limit (the base class truncates there).
        step_penalty: Reward of every step that does not reach the goal is ``-step_penalty``.
        collision_penalty: Extra penalty for moving forward into a wall.
        view: ``"rays"`` or ``"topdown"`` (see the module docstring).
        num_rays: Columns of the ray view.
        fov_degrees: Horizontal field of view of the ray view.
        num_colors: Number of wall colours.
        topdown_radius: Cells visible on each side in the topdown view.
        device: Where tensors live.
    """

    def __init__(
        self,
        num_envs: int,
        size: int,
        max_steps: int,
        step_penalty: float,
        collision_penalty: float,
        view: str,
        num_rays: int,
        fov_degrees: float,
        num_colors: int,
        topdown_radius: int,
        device: torch.device | str = "cpu",
    ):
        super().__init__(num_envs, max_episode_steps=max_steps, device=device)
        self.size = size
        self.step_penalty = step_penalty
        self.collision_penalty = collision_penalty
        self.view = view
        self.num_rays = num_rays
        self.num_colors = num_colors
        self.single_observation_space = _observation_space(
            view, num_rays, num_colors, topdown_radius
        )
        self.single_action_space = gym.spaces.Discrete(3)
        dev = self.device
        cells = size * size
        self._cells = cells
        self._cell_delta = _cell_delta(size, dev)
        if view == "rays":
            block_idx, depth, goal_k = _ray_tables(size, size, num_rays, float(fov_degrees))
            self._k = block_idx.shape[-1]
            table = torch.from_numpy(block_idx).to(dev)  # [cells * 4, R, K]
            self._k1 = min(self._k, _FIRST_STAGE)
            self._ray_idx1 = table[:, :, : self._k1].reshape(cells * 4, -1).contiguous()
            self._ray_idx2 = table[:, :, self._k1 :].reshape(cells * 4 * num_rays, -1).contiguous()
            self._depth = torch.from_numpy(depth).reshape(-1).to(dev)
            self._goal_k = torch.from_numpy(goal_k).to(dev)
            # Offset of (heading, ray) in the flattened depth table, minus the k.
            self._depth_base = (torch.arange(4 * num_rays, device=dev) * self._k).reshape(4, -1)
            self._colors = torch.arange(1, num_colors + 1, dtype=torch.uint8, device=dev)
        else:
            self._pad = 2 * topdown_radius + 1
            self._crop_idx = torch.from_numpy(_topdown_table(size, size, topdown_radius)).to(dev)
            lut = torch.zeros(256, 3)
            lut[1 : num_colors + 1, 0] = 1.0
            lut[1 : num_colors + 1, 2] = torch.arange(1, num_colors + 1) / num_colors
            lut[_GOAL_MARK, 1] = 1.0
            lut[_OUTSIDE_MARK, 0] = 1.0
            self._lut = lut.to(dev)
        self.cell = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self.heading = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self._obs: torch.Tensor | None = None

    # -- tasks -----------------------------------------------------------------------
    def set_tasks(self, tasks: MazeTasks) -> None:
        expected = (2 * self.size + 1, 2 * self.size + 1)
        if tuple(tasks.grid.shape[1:]) != expected:
            raise ValueError(
                f"maze grids must be [n, {expected[0]}, {expected[1]}], "
                f"got {tuple(tasks.grid.shape)}"
            )
        if int(tasks.grid.max()) > self.num_colors:
            raise ValueError(f"wall colour ids must be <= num_colors={self.num_colors}")
        super().set_tasks(tasks)
        tasks = self.tasks
        grid = tasks.grid.to(torch.uint8)
        self._goal_cell = tasks.goal[:, 0] * self.size + tasks.goal[:, 1]
        self._start_cell = tasks.start[:, 0] * self.size + tasks.start[:, 1]
        self._start_heading = tasks.start_heading
        self._front_open = front_open_table(grid)
        if self.view == "rays":
            self._grid = grid.reshape(self.num_envs, -1).contiguous()
        else:
            padded = torch.nn.functional.pad(grid, (self._pad,) * 4, value=_OUTSIDE_MARK)
            rows = torch.arange(self.num_envs, device=self.device)
            goal_y = 2 * tasks.goal[:, 0] + 1 + self._pad
            goal_x = 2 * tasks.goal[:, 1] + 1 + self._pad
            padded[rows, goal_y, goal_x] = _GOAL_MARK
            self._grid = padded.reshape(self.num_envs, -1).contiguous()
        self._obs = None

    @property
    def agent_cell(self) -> torch.Tensor:
        """Current cell of every row, ``[B, 2]`` long (row, col)."""
        return torch.stack([self.cell // self.size, self.cell % self.size], dim=1)

    # -- dynamics --------------------------------------------------------------------
    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        if self.tasks is None:
            raise RuntimeError("set_tasks() must be called before reset()")
        self.cell = torch.where(mask, self._start_cell, self.cell)
        self.heading = torch.where(mask, self._start_heading, self.heading)
        rows = mask.nonzero().squeeze(1)
        if self._obs is None or 2 * rows.numel() > self.num_envs:
            self._obs = self._observe(self.cell, self.heading, None)
        elif rows.numel() > 0:
            # Re-render only the reset rows; out of place, since callers may keep the
            # previous observation tensor.
            part = self._observe(self.cell[rows], self.heading[rows], rows)
            self._obs = self._obs.index_copy(0, rows, part)
        return self._obs

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.tasks is None:
            raise RuntimeError("set_tasks() must be called before step()")
        action = action.to(device=self.device, dtype=torch.long).reshape(self.num_envs)
        forward = action == FORWARD
        pose = self.cell * 4 + self.heading
        front_open = self._front_open.gather(1, pose[:, None]).squeeze(1)
        move = forward & front_open
        self.cell = self.cell + move * self._cell_delta[self.heading]
        turn = (action == TURN_RIGHT).long() - (action == TURN_LEFT).long()
        self.heading = (self.heading + turn) % 4
        terminated = self.cell == self._goal_cell
        reward = torch.where(terminated, 1.0, -self.step_penalty)
        if self.collision_penalty:
            reward = reward - self.collision_penalty * (forward & ~front_open)
        self._obs = self._observe(self.cell, self.heading, None)
        return self._obs, reward, terminated

    # -- rendering -------------------------------------------------------------------
    def _observe(
        self, cell: torch.Tensor, heading: torch.Tensor, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """Observations of the given rows (all rows if ``rows`` is None)."""
        grid = self._grid if rows is None else self._grid.index_select(0, rows)
        pose = cell * 4 + heading
        if self.view == "topdown":
            vals = grid.gather(1, self._crop_idx.index_select(0, pose))
            obs = torch.nn.functional.embedding(vals.long(), self._lut)  # [b, S*S, 3]
            return obs.transpose(1, 2).reshape(len(pose), -1)
        b, num_rays, k = len(pose), self.num_rays, self._k
        # March in two stages: ~97% of rays hit a wall within the first ``_FIRST_STAGE``
        # blocks, so the dense gather is short and only the remaining rays march on.
        k1 = self._k1
        vals = grid.gather(1, self._ray_idx1.index_select(0, pose)).view(b, num_rays, k1)
        first, hit_any = _first_true(vals != 0)
        color = vals.gather(2, first[..., None]).squeeze(-1)
        if k1 < k:
            miss = (~hit_any).view(-1).nonzero().squeeze(1)
            if miss.numel() > 0:
                row = miss // num_rays
                ray = self._ray_idx2.index_select(0, pose[row] * num_rays + miss % num_rays)
                vals2 = grid[row[:, None], ray]
                first2, _ = _first_true(vals2 != 0)
                color2 = vals2.gather(1, first2[:, None]).squeeze(1)
                first = first.view(-1).index_put((miss,), first2 + k1).view(b, num_rays)
                color = color.view(-1).index_put((miss,), color2).view(b, num_rays)
        base = self._depth_base.index_select(0, heading)  # [b, R]
        goal = self._goal_cell if rows is None else self._goal_cell.index_select(0, rows)
        goal_k = self._goal_k.index_select(0, pose * self._cells + goal).long()
        visible = goal_k < first
        # Feature-major layout [3 + C, R]: each feature is one contiguous block per row.
        obs = torch.empty(b, 3 + self.num_colors, num_rays, device=self.device)
        obs[:, 0] = self._depth.index_select(0, (base + first).view(-1)).view(b, num_rays)
        obs[:, 1] = visible
        goal_depth = self._depth.index_select(0, (base + goal_k.clamp(max=k - 1)).view(-1))
        obs[:, 2] = torch.where(visible, goal_depth.view(b, num_rays), 0.0)
        obs[:, 3:] = color[:, None, :] == self._colors[None, :, None]
        return obs.view(b, -1)


def _first_true(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first True along the last dim (0 if none), and whether there is one.

    ``max``/``argmax`` return the first maximal index. ``max(dim)`` is the faster kernel
    on big tensors but always enters the thread pool, which costs a scheduler slice per
    call on a loaded machine; ``argmax`` stays serial on small ones (the gymnasium view).
    """
    as_int = mask.view(torch.uint8)
    if mask.numel() <= 4096:
        first = as_int.argmax(dim=-1)
        return first, mask.gather(-1, first[..., None]).squeeze(-1)
    values, first = as_int.max(dim=-1)
    return first, values.view(torch.bool)


def _observation_space(
    view: str, num_rays: int, num_colors: int, topdown_radius: int
) -> gym.spaces.Box:
    dim = num_rays * (3 + num_colors) if view == "rays" else 3 * (4 * topdown_radius + 3) ** 2
    return gym.spaces.Box(0.0, 1.0, (dim,), np.float32)


# ----------------------------------------------------------------------------- distribution
def _check_int(key: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"maze {key} must be an integer >= {low}, got {value!r}")
    return int(value)


class MazeDistribution:
    """Perfect mazes with a fixed goal and start per task, seen first-person.

    Args:
        size: Cells per side; ``"small"`` (= 5) and ``"large"`` (= 9) are SNAIL's sizes.
        max_steps: Episode time limit; default 250 for size <= 5, 500 for size 9, and
            ``250 + 62.5 * (size - 5)`` (rounded) for other sizes above 5.
        step_penalty: Cost of every step that does not reach the goal (reward +1 there).
        view: ``"rays"`` (first-person ray casting) or ``"topdown"`` (egocentric crop).
        num_rays: Columns of the ray view.
        fov_degrees: Field of view of the ray view, in (0, 360].
        num_colors: Wall colours (1..253); a random one per wall block.
        collision_penalty: Extra cost of walking into a wall (default 0: only the step
            penalty, which already makes bumping wasteful).
        topdown_radius: Cells visible on each side of the agent in the topdown view.

    Raises:
        ValueError: If a value is out of range.
    """

    name = "maze"
    description = (
        "SNAIL visual maze navigation: explore an unseen perfect maze in episode 1, "
        "go straight to the goal in episode 2 (first-person ray-cast view)"
    )
    default_episodes = 2

    def __init__(
        self,
        size: int | str = 5,
        max_steps: int | None = None,
        step_penalty: float = 0.01,
        view: str = "rays",
        num_rays: int = 32,
        fov_degrees: float = 90.0,
        num_colors: int = 4,
        collision_penalty: float = 0.0,
        topdown_radius: int = 2,
    ):
        if isinstance(size, str):
            if size not in SIZES:
                raise ValueError(
                    f"maze size must be an integer or one of {list(SIZES)}, got {size!r}"
                )
            size = SIZES[size]
        self.size = _check_int("size", size, 2)
        if max_steps is None:
            max_steps = 250 if self.size <= 5 else round(250 + 62.5 * (self.size - 5))
        self.max_steps = _check_int("max_steps", max_steps, 1)
        if view not in ("rays", "topdown"):
            raise ValueError(f"maze view must be 'rays' or 'topdown', got {view!r}")
        self.view = view
        self.num_rays = _check_int("num_rays", num_rays, 1)
        self.fov_degrees = float(fov_degrees)
        if not 0.0 < self.fov_degrees <= 360.0:
            raise ValueError(f"maze fov_degrees must be in (0, 360], got {fov_degrees!r}")
        self.num_colors = _check_int("num_colors", num_colors, 1)
        if self.num_colors > _MAX_COLORS:
            raise ValueError(f"maze num_colors must be <= {_MAX_COLORS}, got {num_colors}")
        self.step_penalty = float(step_penalty)
        self.collision_penalty = float(collision_penalty)
        for key in ("step_penalty", "collision_penalty"):
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"maze {key} must be finite")
        self.topdown_radius = _check_int("topdown_radius", topdown_radius, 0)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> MazeTasks:
        """Draws ``n`` mazes, goals, starts and wall colours using ``rng`` only (CPU)."""
        n = _check_int("n", n, 0)
        cells = self.size * self.size
        free = generate_mazes(n, self.size, self.size, rng)
        colors = rng.integers(1, self.num_colors + 1, size=free.shape, dtype=np.uint8)
        grid = np.where(free, np.uint8(0), colors)
        goal = rng.integers(cells, size=n)
        start = rng.integers(cells - 1, size=n)
        start = start + (start >= goal)  # uniform over the cells other than the goal
        heading = rng.integers(4, size=n)
        return MazeTasks(
            grid=torch.from_numpy(np.ascontiguousarray(grid)),
            goal=torch.from_numpy(np.stack(np.divmod(goal, self.size), axis=1)).long(),
            start=torch.from_numpy(np.stack(np.divmod(start, self.size), axis=1)).long(),
            start_heading=torch.from_numpy(heading).long(),
        )

    def make_batched_env(self, num_envs: int, device: torch.device | str = "cpu") -> MazeEnv:
        """A :class:`MazeEnv` with ``num_envs`` rows on ``device``."""
        return MazeEnv(
            num_envs,
            size=self.size,
            max_steps=self.max_steps,
            step_penalty=self.step_penalty,
            collision_penalty=self.collision_penalty,
            view=self.view,
            num_rays=self.num_rays,
            fov_degrees=self.fov_degrees,
            num_colors=self.num_colors,
            topdown_radius=self.topdown_radius,
            device=device,
        )

    @property
    def observation_space(self) -> gym.spaces.Box:
        """Single-env observation space (flat float32 in [0, 1])."""
        return _observation_space(self.view, self.num_rays, self.num_colors, self.topdown_radius)

    @property
    def action_space(self) -> gym.spaces.Discrete:
        """Single-env action space: 0 turn left, 1 turn right, 2 move forward."""
        return gym.spaces.Discrete(3)

    def optimal_episode_return(self, tasks: MazeTasks) -> torch.Tensor:
        """Return of one episode of the oracle (shortest path in actions), ``[n]``."""
        steps = shortest_path_actions(tasks).float()
        reached = 1.0 - self.step_penalty * (steps - 1)
        return torch.where(steps <= self.max_steps, reached, -self.step_penalty * self.max_steps)

    def trial_images(self, tasks: MazeTasks, batch: Any, count: int = 4) -> list[np.ndarray]:
        """Top-down drawings of the first ``count`` trials of ``batch``, episodes side by side.

        The maze is deterministic given the task, so replaying the recorded actions
        reproduces the visited cells exactly (like the SNAIL paper's Figure 5).
        """
        count = min(count, len(tasks), batch.num_trials)
        sub = tasks[:count]
        env = self.make_batched_env(count, "cpu")
        env.set_tasks(sub)
        env.reset(seed=0)
        episodes = int(batch.episode_index.max()) + 1
        paths = [[[] for _ in range(episodes)] for _ in range(count)]
        start = env.agent_cell.clone()
        for t in range(batch.num_steps):
            for b in range(count):
                if bool(batch.valid[t, b]) and bool(batch.episode_start[t, b]):
                    paths[b][int(batch.episode_index[t, b])].append(tuple(start[b].tolist()))
            out = env.step(batch.action[t, :count].cpu())
            cells = env.agent_cell
            for b in range(count):
                if bool(batch.valid[t, b]):
                    paths[b][int(batch.episode_index[t, b])].append(tuple(cells[b].tolist()))
            done = out.terminated | out.truncated
            if bool(done.any()):
                env.reset(mask=done)
        return [draw_trial_paths(sub[b], paths[b]) for b in range(count)]

    def baselines(self) -> dict[str, Callable[[], Policy]]:
        """Reference policies.

        ``"random"`` is a uniform random walk over the three actions; ``"oracle"`` walks
        the shortest path from its current cell; ``"explore-exploit"`` follows the
        left-hand wall in episode 1 until it finds the goal and then walks the shortest
        path in episode 2 (see :mod:`envs.maze_baselines`).
        """
        from envs.maze_baselines import ExploreExploitPolicy, MazeOracle, RandomWalk

        return {"random": RandomWalk, "oracle": MazeOracle, "explore-exploit": ExploreExploitPolicy}


# ----------------------------------------------------------------------------- drawing
#: RGB of wall colours 1, 2, ... (cycled); 0 is the floor. Muted, so the red path stands out.
PALETTE = np.array(
    [
        [70, 80, 120],
        [125, 110, 85],
        [80, 115, 95],
        [110, 85, 120],
        [60, 110, 125],
        [130, 130, 130],
        [95, 95, 60],
        [55, 55, 55],
    ],
    dtype=np.uint8,
)
_FLOOR = np.array([245, 245, 240], dtype=np.uint8)
_GOAL = np.array([60, 200, 80], dtype=np.uint8)
_START = np.array([150, 200, 250], dtype=np.uint8)
_PATH = np.array([235, 30, 30], dtype=np.uint8)
_AGENT = np.array([20, 20, 20], dtype=np.uint8)


def render_maze(
    grid: np.ndarray | torch.Tensor,
    goal: Sequence[int],
    start: Sequence[int] | None = None,
    path: Sequence[Sequence[int]] | np.ndarray | None = None,
    heading: int | None = None,
    scale: int = 8,
) -> np.ndarray:
    """Draws one maze top-down as an RGB image.

    Args:
        grid: ``[2H+1, 2W+1]`` block grid.
        goal: Goal cell (row, col), drawn green.
        start: Start cell, drawn light blue.
        path: Visited cells ``[T, 2]`` in order, drawn as a red line through cell centres.
        heading: If given, the agent (at the path's last cell) is drawn with a tick
            pointing along its heading.
        scale: Pixels per block (>= 4).

    Returns:
        ``[(2H+1) * scale, (2W+1) * scale, 3]`` uint8.
    """
    grid = np.asarray(grid.cpu() if isinstance(grid, torch.Tensor) else grid)
    img = np.where(
        (grid == 0)[..., None], _FLOOR, PALETTE[(np.maximum(grid, 1) - 1) % len(PALETTE)]
    ).astype(np.uint8)

    def block(cell: Sequence[int]) -> tuple[int, int]:
        return 2 * int(cell[0]) + 1, 2 * int(cell[1]) + 1

    if start is not None:
        img[block(start)] = _START
    img[block(goal)] = _GOAL
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    half, thick = scale // 2, max(1, scale // 4)

    def centre(cell: Sequence[int]) -> tuple[int, int]:
        y, x = block(cell)
        return y * scale + half, x * scale + half

    cells = [] if path is None else [tuple(int(v) for v in p) for p in np.asarray(path)]
    for a, b in itertools.pairwise(cells):
        (y0, x0), (y1, x1) = centre(a), centre(b)
        # Consecutive cells are adjacent, so each segment is axis-aligned; an L covers
        # anything else (a path with gaps).
        img[
            min(y0, y1) - thick // 2 : max(y0, y1) + thick - thick // 2,
            x0 - thick // 2 : x0 + thick - thick // 2,
        ] = _PATH
        img[
            y1 - thick // 2 : y1 + thick - thick // 2,
            min(x0, x1) - thick // 2 : max(x0, x1) + thick - thick // 2,
        ] = _PATH
    if cells:
        y, x = centre(cells[-1])
        r = max(1, scale // 3)
        img[y - r : y + r + 1, x - r : x + r + 1] = _AGENT
        if heading is not None:
            dy, dx = HEADING_DELTAS[int(heading)]
            for s in range(r, scale):
                img[
                    y + dy * s - thick // 2 : y + dy * s + thick - thick // 2 + 1,
                    x + dx * s - thick // 2 : x + dx * s + thick - thick // 2 + 1,
                ] = _AGENT
    return img


def draw_trial_paths(
    task: MazeTasks,
    paths_per_episode: Sequence[Sequence[Sequence[int]] | np.ndarray],
    scale: int = 8,
    gap: int = 2,
) -> np.ndarray:
    """The episodes of one trial side by side, like Figure 5 of the SNAIL paper.

    Args:
        task: A one-task :class:`MazeTasks` (the first task is used if there are more).
        paths_per_episode: Per episode, the cells visited ``[T_e, 2]`` (row, col), from
            the start cell on (e.g. ``MazeEnv.agent_cell`` recorded after each step).
        scale: Pixels per block.
        gap: White blocks between panels.

    Returns:
        ``[(2H+1) * scale, E * (2W+1) * scale + (E - 1) * gap * scale, 3]`` uint8, ready for
        ``matplotlib.pyplot.imsave``.
    """
    grid = task.grid[0].cpu().numpy()
    goal, start = task.goal[0].tolist(), task.start[0].tolist()
    panels = [render_maze(grid, goal, start, path, scale=scale) for path in paths_per_episode]
    if not panels:
        return render_maze(grid, goal, start, scale=scale)
    spacer = np.full((panels[0].shape[0], gap * scale, 3), 255, dtype=np.uint8)
    out = [panels[0]]
    for panel in panels[1:]:
        out += [spacer, panel]
    return np.concatenate(out, axis=1)


# ----------------------------------------------------------------------------- gymnasium
class MazeGymEnv(BatchedEnvView):
    """``metarl/Maze-v0``: one maze as a gymnasium env.

    Takes :class:`MazeDistribution`'s arguments plus ``render_mode`` (None or
    ``"rgb_array"``: the maze top-down with the path walked since the last reset). The
    ``info`` dict carries the agent's ``cell`` (row, col) and ``heading``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}  # noqa: RUF012
    distribution_cls = MazeDistribution

    def __init__(
        self,
        size: int | str = 5,
        max_steps: int | None = None,
        step_penalty: float = 0.01,
        view: str = "rays",
        num_rays: int = 32,
        fov_degrees: float = 90.0,
        num_colors: int = 4,
        collision_penalty: float = 0.0,
        topdown_radius: int = 2,
        render_mode: str | None = None,
    ):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        super().__init__(
            MazeDistribution(
                size=size,
                max_steps=max_steps,
                step_penalty=step_penalty,
                view=view,
                num_rays=num_rays,
                fov_degrees=fov_degrees,
                num_colors=num_colors,
                collision_penalty=collision_penalty,
                topdown_radius=topdown_radius,
            ),
            render_mode=render_mode,
        )
        self._path: list[tuple[int, int]] = []

    def _pose_info(self) -> dict:
        env: MazeEnv = self._env  # type: ignore[assignment]
        cell = tuple(int(v) for v in env.agent_cell[0])
        self._path.append(cell)
        return {"cell": np.array(cell), "heading": int(env.heading[0])}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, _ = super().reset(seed=seed, options=options)
        self._path = []
        return obs, self._pose_info()

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, self._pose_info()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        env: MazeEnv = self._env  # type: ignore[assignment]
        return render_maze(
            self.task.grid[0],
            self.task.goal[0].tolist(),
            self.task.start[0].tolist(),
            self._path or None,
            heading=int(env.heading[0]),
        )
