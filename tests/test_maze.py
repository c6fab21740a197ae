"""Tests of the SNAIL maze task: generation, ray casting, dynamics, baselines, views."""

from __future__ import annotations

import collections
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401 - registers metarl/Maze-v0
from envs.maze import (
    FORWARD,
    HEADING_DELTAS,
    TURN_LEFT,
    TURN_RIGHT,
    MazeDistribution,
    MazeGymEnv,
    MazeTasks,
    _ray_angles,
    draw_trial_paths,
    generate_mazes,
    maze_from_ascii,
    shortest_path_actions,
)
from metarl.policy import StepInput

# A hand-drawn 3×3 perfect maze (8 passages). Digits are wall colours.
#   (0,0)-(0,1)-(0,2)
#     |
#   (1,0)-(1,1)  (1,2)
#           |      |
#   (2,0)-(2,1)-(2,2)
HAND = [
    "1111111",
    "1     2",
    "1 33333",
    "1   4 2",
    "111 1 2",
    "1     2",
    "1111111",
]
DIAG = math.hypot(7, 7)  # depth normaliser of a 3×3 maze
NORTH, EAST, SOUTH, WEST = range(4)


def hand_tasks(goal=(0, 2), start=(0, 0), heading=EAST) -> MazeTasks:
    return maze_from_ascii(HAND, goal=goal, start=start, start_heading=heading)


def make_env(tasks: MazeTasks, **kwargs):
    size = tasks.maze_size[0]
    dist = MazeDistribution(size=size, **kwargs)
    env = dist.make_batched_env(len(tasks))
    env.set_tasks(tasks)
    return dist, env


def place(env, cell, heading):
    """Puts row 0 at ``cell`` facing ``heading`` and returns its observation."""
    env.reset()
    env.cell = torch.tensor([cell[0] * env.size + cell[1]])
    env.heading = torch.tensor([heading])
    return env._observe(env.cell, env.heading, None)[0]


def ray_features(obs: torch.Tensor, num_rays: int, num_colors: int = 4) -> torch.Tensor:
    """[R, 3 + C] per-ray features from the feature-major observation."""
    return obs.view(3 + num_colors, num_rays).T


# ----------------------------------------------------------------------------- generation
def bfs_cells(free: np.ndarray, start: tuple[int, int]) -> dict[tuple[int, int], int]:
    rows, cols = (free.shape[0] - 1) // 2, (free.shape[1] - 1) // 2
    seen = {start: 0}
    queue = collections.deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in HEADING_DELTAS:
            nr, nc = r + dr, c + dc
            inside = 0 <= nr < rows and 0 <= nc < cols
            if inside and free[2 * r + 1 + dr, 2 * c + 1 + dc] and (nr, nc) not in seen:
                seen[(nr, nc)] = seen[(r, c)] + 1
                queue.append((nr, nc))
    return seen


@pytest.mark.parametrize(
    "rows,cols", [(3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9), (1, 6), (3, 7)]
)
def test_generated_mazes_are_perfect(rows, cols):
    for seed in range(4):
        free = generate_mazes(25, rows, cols, np.random.default_rng(seed))
        assert free.shape == (25, 2 * rows + 1, 2 * cols + 1)
        for maze in free:
            assert maze[1::2, 1::2].all(), "every cell block is free"
            assert not maze[::2, ::2].any(), "pillars are walls"
            assert not maze[0].any() and not maze[-1].any()
            assert not maze[:, 0].any() and not maze[:, -1].any()
            passages = int(maze.sum()) - rows * cols
            assert passages == rows * cols - 1  # a spanning tree: acyclic once connected
            assert len(bfs_cells(maze, (0, 0))) == rows * cols


def test_sample_tasks_deterministic_and_valid():
    dist = MazeDistribution(size="small", num_colors=5)
    a = dist.sample_tasks(64, np.random.default_rng(3))
    b = dist.sample_tasks(64, np.random.default_rng(3))
    c = dist.sample_tasks(64, np.random.default_rng(4))
    for name in ("grid", "goal", "start", "start_heading"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.grid, c.grid)
    assert a.grid.shape == (64, 11, 11) and a.grid.dtype == torch.uint8
    assert (a.start != a.goal).any(dim=1).all()
    assert int(a.grid.max()) == 5 and int(a.grid.min()) == 0
    walls = a.grid[:, ::2, ::2]
    assert (walls >= 1).all()
    assert ((a.start_heading >= 0) & (a.start_heading < 4)).all()
    # Free blocks are exactly the generated maze's; colours only on walls.
    assert (a.grid[:, 1::2, 1::2] == 0).all()


def test_distribution_options():
    assert MazeDistribution(size="small").size == 5
    assert MazeDistribution(size="large").size == 9
    assert MazeDistribution(size=5).max_steps == 250
    assert MazeDistribution(size=3).max_steps == 250
    assert MazeDistribution(size=9).max_steps == 500
    assert MazeDistribution(size=7).max_steps == 375
    assert MazeDistribution(size=9, max_steps=42).max_steps == 42
    for bad in (
        {"size": "huge"},
        {"size": 1},
        {"view": "pixels"},
        {"num_rays": 0},
        {"fov_degrees": 0.0},
        {"num_colors": 300},
        {"max_steps": 0},
    ):
        with pytest.raises(ValueError):
            MazeDistribution(**bad)
    dist = MazeDistribution(num_rays=16, num_colors=3)
    assert dist.observation_space.shape == (16 * 6,)
    assert dist.action_space == gym.spaces.Discrete(3)
    assert MazeDistribution(view="topdown", topdown_radius=1).observation_space.shape == (3 * 49,)
    assert set(dist.baselines()) == {"random", "oracle", "explore-exploit"}
    assert MazeDistribution.default_episodes == 2 and MazeDistribution.name == "maze"


# ----------------------------------------------------------------------------- ray casting
def test_rays_hand_computed_single_ray():
    _, env = make_env(hand_tasks(), num_rays=1)
    cases = [
        # cell, heading, depth, colour, goal visible, goal depth
        ((0, 0), EAST, 4.5, 2, True, 3.5),  # along the top corridor to the east wall
        ((0, 0), SOUTH, 2.5, 1, False, 0.0),  # into (1,0), then the wall below it
        ((0, 0), NORTH, 0.5, 1, False, 0.0),
        ((0, 0), WEST, 0.5, 1, False, 0.0),
        ((1, 1), EAST, 0.5, 4, False, 0.0),  # the colour-4 wall between (1,1) and (1,2)
        ((2, 0), EAST, 4.5, 2, False, 0.0),
        ((1, 2), NORTH, 0.5, 3, False, 0.0),  # wall under the goal hides it
        ((2, 2), NORTH, 2.5, 3, False, 0.0),
    ]
    for cell, heading, depth, colour, visible, goal_depth in cases:
        f = ray_features(place(env, cell, heading), 1)[0]
        assert f[0].item() == pytest.approx(depth / DIAG, abs=1e-6), (cell, heading)
        assert f[1].item() == float(visible)
        assert f[2].item() == pytest.approx(goal_depth / DIAG, abs=1e-6)
        onehot = torch.zeros(4)
        onehot[colour - 1] = 1
        assert torch.equal(f[3:], onehot), (cell, heading)


def test_rays_hand_computed_three_rays():
    # fov 90 with 3 rays: columns at -30°, 0°, +30° (left to right).
    _, env = make_env(hand_tasks(goal=(2, 1)), num_rays=3, fov_degrees=90.0)
    f = ray_features(place(env, (1, 1), SOUTH), 3)
    # Facing south from (1,1): the ±30° rays enter the passage block (t = 0.5/cos30) and
    # then the pillars beside it at t = 0.5/sin30 = 1; the centre ray reaches the border.
    assert f[:, 0].tolist() == pytest.approx([1.0 / DIAG, 2.5 / DIAG, 1.0 / DIAG], abs=1e-6)
    assert f[:, 1].tolist() == [0.0, 1.0, 0.0]  # only the centre ray crosses goal (2,1)
    assert f[1, 2].item() == pytest.approx(1.5 / DIAG, abs=1e-6)
    assert f[:, 3].tolist() == [1.0, 1.0, 1.0]  # all three walls have colour 1
    f = ray_features(place(env, (2, 0), EAST), 3)
    # Left (north-east) ray: passage (5,2) at 0.577, then the wall block (4,2) at t = 1.
    assert f[:, 0].tolist() == pytest.approx([1.0 / DIAG, 4.5 / DIAG, 1.0 / DIAG], abs=1e-6)
    assert f[:, 1].tolist() == [0.0, 1.0, 0.0]
    assert f[1, 2].item() == pytest.approx(1.5 / DIAG, abs=1e-6)
    assert torch.equal(f[:, 3:].argmax(dim=1), torch.tensor([0, 1, 0]))


def reference_rays(grid: np.ndarray, goal, cell, heading, num_rays, fov):
    """Independent ray casting by slab intersection of the ray with every block's box."""
    gh, gw = grid.shape
    oy, ox = 2 * cell[0] + 1.5, 2 * cell[1] + 1.5
    hy, hx = HEADING_DELTAS[heading]
    ys, xs = np.mgrid[0:gh, 0:gw]
    out = []
    for a in _ray_angles(num_rays, fov):
        dx = hx * math.cos(a) - hy * math.sin(a)
        dy = hx * math.sin(a) + hy * math.cos(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            ty = np.sort(np.stack([(ys - oy) / dy, (ys + 1 - oy) / dy]), axis=0)
            tx = np.sort(np.stack([(xs - ox) / dx, (xs + 1 - ox) / dx]), axis=0)
        t_in = np.maximum(ty[0], tx[0])
        hits = (t_in <= np.minimum(ty[1], tx[1])) & (t_in > 0)
        wall = hits & (grid > 0)
        t_wall = t_in[wall].min()
        colour = grid[wall][t_in[wall].argmin()]
        gy, gx = 2 * goal[0] + 1, 2 * goal[1] + 1
        visible = bool(hits[gy, gx] and t_in[gy, gx] < t_wall)
        out.append((t_wall, colour, visible, t_in[gy, gx] if visible else 0.0))
    return out


@pytest.mark.parametrize("size,num_rays,fov", [(4, 6, 77.0), (5, 10, 120.0), (6, 4, 359.0)])
def test_rays_match_reference_caster(size, num_rays, fov):
    dist = MazeDistribution(size=size, num_rays=num_rays, fov_degrees=fov, num_colors=7)
    tasks = dist.sample_tasks(3, np.random.default_rng(size))
    env = dist.make_batched_env(3)
    env.set_tasks(tasks)
    env.reset()
    diag = math.hypot(2 * size + 1, 2 * size + 1)
    for cell in range(size * size):
        for heading in range(4):
            env.cell = torch.full((3,), cell)
            env.heading = torch.full((3,), heading)
            obs = env._observe(env.cell, env.heading, None)
            for row in range(3):
                f = ray_features(obs[row], num_rays, 7)
                ref = reference_rays(
                    tasks.grid[row].numpy(),
                    tasks.goal[row].tolist(),
                    divmod(cell, size),
                    heading,
                    num_rays,
                    fov,
                )
                for i, (t_wall, colour, visible, t_goal) in enumerate(ref):
                    assert f[i, 0].item() == pytest.approx(t_wall / diag, abs=1e-5)
                    assert f[i, 3 + colour - 1].item() == 1.0 and f[i, 3:].sum().item() == 1.0
                    assert f[i, 1].item() == float(visible)
                    assert f[i, 2].item() == pytest.approx(t_goal / diag, abs=1e-5)


def test_topdown_view_hand_computed():
    _, env = make_env(hand_tasks(goal=(1, 0)), view="topdown", topdown_radius=1)
    obs = place(env, (0, 0), EAST).view(3, 7, 7)  # channels wall, goal, colour/4
    wall, goal, colour = obs
    # Facing east: crop row 3 - ahead, column 3 + (blocks to the right, i.e. south).
    assert wall[3, 3] == 0 and wall[2, 3] == 0 and wall[0, 3] == 0  # corridor ahead
    assert wall[3, 2] == 1 and colour[3, 2] == 0.25  # the north border, colour 1
    assert wall[3, 4] == 0  # passage south to (1,0)
    assert wall[0, 0] == 1 and colour[0, 0] == 0  # outside the maze
    assert goal[3, 5] == 1 and goal.sum() == 1  # goal (1,0) = two blocks to the right
    obs = place(env, (1, 1), NORTH).view(3, 7, 7)
    assert obs[0, 2, 3] == 1 and obs[2, 2, 3] == 0.75  # colour-3 wall ahead
    assert obs[0, 3, 4] == 1 and obs[2, 3, 4] == 1.0  # colour-4 wall to the right
    assert obs[1, 3, 1] == 1  # goal (1,0) two blocks to the left


# ----------------------------------------------------------------------------- dynamics
def test_goal_termination_reward_and_collisions():
    _, env = make_env(hand_tasks(), step_penalty=0.05, collision_penalty=0.1)
    obs0 = env.reset()
    out = env.step(torch.tensor([TURN_LEFT]))  # now facing north, into the border
    assert out.reward.item() == pytest.approx(-0.05) and not out.terminated.item()
    assert env.heading.item() == NORTH
    out = env.step(torch.tensor([FORWARD]))  # bump: stay, extra penalty
    assert out.reward.item() == pytest.approx(-0.15)
    assert env.agent_cell.tolist() == [[0, 0]]
    out = env.step(torch.tensor([TURN_RIGHT]))
    assert torch.equal(out.obs, obs0)  # back to the start pose, same view
    out = env.step(torch.tensor([FORWARD]))
    assert env.agent_cell.tolist() == [[0, 1]] and out.reward.item() == pytest.approx(-0.05)
    out = env.step(torch.tensor([FORWARD]))
    assert env.agent_cell.tolist() == [[0, 2]]
    assert out.reward.item() == 1.0 and out.terminated.item() and not out.truncated.item()
    assert torch.equal(env.reset(), obs0)


def test_truncation_and_partial_reset():
    dist = MazeDistribution(size=4, max_steps=3)
    tasks = dist.sample_tasks(6, np.random.default_rng(0))
    env = dist.make_batched_env(6)
    env.set_tasks(tasks)
    first = env.reset()
    for _ in range(2):
        out = env.step(torch.full((6,), TURN_RIGHT))
        assert not out.truncated.any()
    out = env.step(torch.full((6,), TURN_RIGHT))
    assert out.truncated.all() and not out.terminated.any()
    moved = out.obs
    mask = torch.tensor([True, False, True, False, False, False])
    obs = env.reset(mask)
    assert torch.equal(obs[mask], first[mask]) and torch.equal(obs[~mask], moved[~mask])
    assert torch.equal(moved, out.obs), "reset must not modify earlier observations"
    assert env.elapsed.tolist() == [0, 3, 0, 3, 3, 3]


@pytest.mark.parametrize("view", ["rays", "topdown"])
def test_batched_step_equals_gym_view(view):
    dist = MazeDistribution(size=5, view=view, max_steps=40)
    tasks = dist.sample_tasks(4, np.random.default_rng(1))
    env = dist.make_batched_env(4)
    env.set_tasks(tasks)
    views = [MazeGymEnv(size=5, view=view, max_steps=40) for _ in range(4)]
    for v, task in zip(views, tasks.unbind()):
        v.set_task(task)
    obs = env.reset()
    for i, v in enumerate(views):
        o, _ = v.reset(seed=i)
        np.testing.assert_array_equal(o, obs[i].numpy())
    actions = torch.randint(3, (120, 4), generator=torch.Generator().manual_seed(0))
    for t in range(120):
        out = env.step(actions[t])
        done = out.terminated | out.truncated
        reset_obs = {}
        for i, v in enumerate(views):
            o, r, term, trunc, info = v.step(int(actions[t, i]))
            np.testing.assert_array_equal(o, out.obs[i].numpy())
            assert r == pytest.approx(out.reward[i].item())
            assert (term, trunc) == (bool(out.terminated[i]), bool(out.truncated[i]))
            assert tuple(info["cell"]) == tuple(env.agent_cell[i].tolist())
            if done[i]:
                reset_obs[i], _ = v.reset()
        if done.any():
            obs = env.reset(done)
            for i, o in reset_obs.items():
                np.testing.assert_array_equal(o, obs[i].numpy())


# ----------------------------------------------------------------------------- baselines
def pose_bfs_actions(task: MazeTasks) -> int:
    """Fewest actions from the start pose to the goal, by BFS over (cell, heading)."""
    grid = task.grid[0].numpy()
    goal = tuple(task.goal[0].tolist())
    start = (*task.start[0].tolist(), int(task.start_heading[0]))
    seen = {start: 0}
    queue = collections.deque([start])
    while queue:
        r, c, h = pose = queue.popleft()
        if (r, c) == goal:
            return seen[pose]
        dr, dc = HEADING_DELTAS[h]
        nexts = [(r, c, (h + 1) % 4), (r, c, (h + 3) % 4)]
        if grid[2 * r + 1 + dr, 2 * c + 1 + dc] == 0:
            nexts.append((r + dr, c + dc, h))
        for nxt in nexts:
            if nxt not in seen:
                seen[nxt] = seen[pose] + 1
                queue.append(nxt)
    raise AssertionError("goal unreachable")


def run_trials(dist, policy, tasks, episodes, seed=0):
    """Collector-like loop: per row, episode lengths, returns and visited cells."""
    rows = len(tasks)
    env = dist.make_batched_env(rows)
    env.set_tasks(tasks)
    if hasattr(policy, "set_tasks"):
        policy.set_tasks(tasks)
    generator = torch.Generator().manual_seed(seed)
    obs = env.reset(seed=seed)
    state = policy.initial_state(rows, env.device)
    prev_action = torch.zeros(rows, dtype=torch.long)
    prev_reward = torch.zeros(rows)
    prev_done = torch.zeros(rows)
    episode = torch.zeros(rows, dtype=torch.long)
    step_in_ep = torch.zeros(rows, dtype=torch.long)
    lengths = [[] for _ in range(rows)]
    returns = [[0.0] for _ in range(rows)]
    paths = [[[tuple(c)]] for c in env.agent_cell.tolist()]
    t = 0
    while bool((episode < episodes).any()):
        inp = StepInput(
            obs,
            prev_action,
            prev_reward,
            prev_done,
            trial_start=torch.full((rows,), t == 0),
            episode_step=step_in_ep.clone(),
        )
        out = policy.step(inp, state, generator)
        state = out.state
        step = env.step(out.action)
        active = episode < episodes
        done = (step.terminated | step.truncated) & active
        cells = env.agent_cell.tolist()
        for i in torch.nonzero(active).flatten().tolist():
            returns[i][-1] += step.reward[i].item()
            paths[i][-1].append(tuple(cells[i]))
        step_in_ep = step_in_ep + 1
        for i in torch.nonzero(done).flatten().tolist():
            lengths[i].append(int(step_in_ep[i]))
            if len(lengths[i]) < episodes:
                returns[i].append(0.0)
                paths[i].append([tuple(tasks.start[i].tolist())])
        episode = episode + done.long()
        obs = env.reset(done) if done.any() else step.obs
        step_in_ep = torch.where(done, 0, step_in_ep)
        prev_action, prev_reward, prev_done = out.action, step.reward, done.float()
        t += 1
    return lengths, returns, paths


@pytest.mark.parametrize("size", [3, 5, 9])
def test_oracle_walks_the_shortest_path(size):
    dist = MazeDistribution(size=size, max_steps=1000)
    tasks = dist.sample_tasks(24, np.random.default_rng(10 + size))
    truth = [pose_bfs_actions(task) for task in tasks.unbind()]
    assert shortest_path_actions(tasks).tolist() == truth
    oracle = dist.baselines()["oracle"]()
    lengths, returns, _ = run_trials(dist, oracle, tasks, episodes=2)
    assert [ep for ep in lengths] == [[n, n] for n in truth]
    expected = dist.optimal_episode_return(tasks)
    assert [r[0] for r in returns] == pytest.approx(expected.tolist(), abs=1e-5)


@pytest.mark.parametrize("size", [5, 9])
def test_explore_exploit_finds_goal_then_is_optimal(size):
    dist = MazeDistribution(size=size)
    tasks = dist.sample_tasks(32, np.random.default_rng(size))
    policy = dist.baselines()["explore-exploit"]()
    lengths, returns, paths = run_trials(dist, policy, tasks, episodes=2)
    truth = [pose_bfs_actions(task) for task in tasks.unbind()]
    for i in range(len(tasks)):
        assert paths[i][0][-1] == tuple(tasks.goal[i].tolist()), "episode 1 reaches the goal"
        assert returns[i][0] > -dist.step_penalty * dist.max_steps
        assert lengths[i][0] >= truth[i]
        assert lengths[i][1] == truth[i]
        # Episode 2 only uses cells seen in episode 1 (any walk to the goal in a tree
        # crosses the whole start-goal path), so it needed no privileged knowledge.
        assert set(paths[i][1]) <= set(paths[i][0])
    # Exploring costs something on average: episode 1 is longer than episode 2.
    assert np.mean([ln[0] for ln in lengths]) > 1.5 * np.mean(truth)


def test_random_walk_baseline():
    dist = MazeDistribution(size=3, max_steps=30)
    tasks = dist.sample_tasks(8, np.random.default_rng(0))
    lengths, _, _ = run_trials(dist, dist.baselines()["random"](), tasks, episodes=2)
    assert all(len(ln) == 2 and all(1 <= n <= 30 for n in ln) for ln in lengths)


# ----------------------------------------------------------------------------- gymnasium
@pytest.mark.parametrize(
    "kwargs", [{}, {"view": "topdown", "size": 4}, {"render_mode": "rgb_array", "size": "small"}]
)
def test_gym_checkers(kwargs):
    env = gym.make("metarl/Maze-v0", **kwargs)
    gym_check_env(env.unwrapped, skip_render_check=False)
    sb3_check_env(MazeGymEnv(**kwargs), warn=True)


def test_render_and_trial_paths():
    env = MazeGymEnv(size=3, render_mode="rgb_array")
    env.set_task(hand_tasks())
    env.reset()
    for action in (FORWARD, FORWARD):
        env.step(action)
    img = env.render()
    assert img.shape == (7 * 8, 7 * 8, 3) and img.dtype == np.uint8
    path_red = (img[..., 0] > 200) & (img[..., 1] < 60)
    assert path_red[1 * 8 + 4, 2 * 8 + 4]  # the path crosses the passage east of (0,0)
    assert not path_red[3 * 8 + 4, 1 * 8 + 4]  # never went south
    panels = draw_trial_paths(hand_tasks(), [[(0, 0), (1, 0), (1, 1)], [(0, 0), (0, 1), (0, 2)]])
    assert panels.shape == (56, 2 * 56 + 16, 3)
    left, right = panels[:, :56], panels[:, 72:]
    red = lambda im: (im[..., 0] > 200) & (im[..., 1] < 60)  # noqa: E731
    assert red(left)[2 * 8 + 4, 1 * 8 + 4] and not red(left)[1 * 8 + 4, 2 * 8 + 4]
    assert red(right)[1 * 8 + 4, 2 * 8 + 4]
    assert (panels[:, 56:72] == 255).all()
