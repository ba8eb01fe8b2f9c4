"""Simulated environments used to make demonstrations and evaluate policies."""

import os

# MuJoCo picks its OpenGL backend when it is first imported: without a display, EGL is the only headless
# backend that works here, so choose it before any env here (or a LeRobot env made through ours) imports mujoco.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"
