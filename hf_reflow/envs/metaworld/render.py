"""Offscreen MuJoCo rendering: a small fast renderer, closed before EGL at exit, and the obstacle drawn in."""

from __future__ import annotations

import sys

# `hf_reflow.envs` (imported first) chooses MuJoCo's headless OpenGL backend; one imported before it keeps its own.
# The package imports this module before any other of its modules, so nothing of ours has imported mujoco yet.
_MUJOCO_IMPORTED_EARLY = "mujoco" in sys.modules

import atexit  # noqa: E402
import os  # noqa: E402
import weakref  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

# Renderers left open at interpreter exit make EGL print errors from `__del__` once mujoco's own
# atexit hook has terminated the EGL display. atexit runs hooks last-registered-first, so a hook
# registered after each renderer is made (after mujoco's) closes them while EGL still works.
_OPEN_RENDERERS: weakref.WeakSet[mujoco.Renderer] = weakref.WeakSet()


def _close_open_renderers() -> None:
    """Close every renderer still open (the atexit hook)."""
    for renderer in list(_OPEN_RENDERERS):
        _OPEN_RENDERERS.discard(renderer)
        renderer.close()


def make_renderer(model: mujoco.MjModel, size: int) -> mujoco.Renderer:
    """Small, fast offscreen renderer: no multisampling, shadows or reflections (~7 ms per 96 px frame).

    Args:
        model: the simulator's model; its offscreen multisampling is switched off.
        size: the square image side in pixels.

    Returns:
        The renderer, closed at interpreter exit unless `close_renderer` closes it first.
    """
    model.vis.quality.offsamples = 0  # must be set before the GL context is made
    try:
        renderer = mujoco.Renderer(model, height=size, width=size)
    except Exception as exc:  # the GL backends raise assorted error types
        early = (
            " mujoco was imported before hf_reflow.envs.metaworld with MUJOCO_GL unset, so it chose a "
            "display backend: set MUJOCO_GL=egl in the environment (or before any mujoco import)."
            if _MUJOCO_IMPORTED_EARLY
            else ""
        )
        raise RuntimeError(
            f"Could not open an offscreen MuJoCo renderer (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): "
            f"{exc}.{early} On a headless machine install EGL (e.g. libegl1) and set MUJOCO_GL=egl before "
            "mujoco is imported, or record without images (images=False)."
        ) from exc
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    _OPEN_RENDERERS.add(renderer)
    atexit.unregister(_close_open_renderers)
    atexit.register(_close_open_renderers)
    return renderer


def close_renderer(renderer: mujoco.Renderer) -> None:
    """Close a renderer from `make_renderer` now (the exit hook then leaves it alone)."""
    _OPEN_RENDERERS.discard(renderer)
    renderer.close()


def add_cylinder(scene: mujoco.MjvScene, centre_xy: np.ndarray, radius: float) -> None:
    """Draw the virtual obstacle so image-based policies can see it (it has no physics)."""
    if scene.ngeom >= scene.maxgeom:
        return
    half_height = 0.15
    mujoco.mjv_initGeom(
        scene.geoms[scene.ngeom],
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=np.array([radius, half_height, 0.0]),  # mjv_initGeom takes model-style (radius, half-length)
        pos=np.array([centre_xy[0], centre_xy[1], half_height]),
        mat=np.eye(3).flatten(),
        rgba=np.array([0.15, 0.35, 0.95, 1.0], dtype=np.float32),
    )
    scene.ngeom += 1
