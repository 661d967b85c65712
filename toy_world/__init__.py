"""The toy world: a miniature of the paper's experiments, trained by the project, that runs offline on a CPU.

data.py draws the scenes, diffusion.py configures ComfyUI's own VAE and UNet for them, networks.py holds the
guidance networks and their held-out evaluators, evaluation.py scores samples, and train.py trains all of it
into weights/.
"""
