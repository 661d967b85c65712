"""The universal guidance sampling engine: plain torch, never imports ComfyUI."""
