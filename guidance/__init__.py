"""Guidance losses and the networks they use: plain torch, never imports ComfyUI."""
